"""Counterfactual swap effects: the model's own answer to "which part tells the target from the reference?".

The file (CSV, UTF-8, a byte-order mark accepted; one row per image, reference class and part)::

    image,target,reference,part,margin,swapped_margin,token_swapped_margin

``image`` is the image's path relative to the data set root, as in index.jsonl; ``target`` and ``reference``
are class names; ``part`` a region name of the masks' labels.json. ``margin`` is ``y_target - y_reference`` on
the original image, ``swapped_margin`` the same margin when only that part is drawn in the reference class's
look (same random draws otherwise), ``token_swapped_margin`` (may be empty) when only the tokens at the CAM's
target layer of the patches that touch the part are taken from the swapped drawing.

The effect of a part is ``(margin - swapped_margin) / margin``: 1 when the swap removes the whole margin,
more when it flips it, about 0 when the part does not matter. Rows whose ``margin`` is not positive (the model
does not prefer the target) have no effect. The decisive part of an (image, reference) is the part with the
largest effect. The toy world computes the file exactly (``python -m finer_cam.toy swaps``); a real data set
could provide it by inpainting.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FinerCamError
from .atomic import atomic_write_bytes
from .userfiles import read_text

HEADER = ("image", "target", "reference", "part", "margin", "swapped_margin", "token_swapped_margin")


@dataclass(frozen=True)
class SwapRow:
    """One row of the file (see the module docstring)."""

    image: str
    target: str
    reference: str
    part: str
    margin: float
    swapped_margin: float
    token_swapped_margin: float | None = None

    @property
    def effect(self) -> float | None:
        """``(margin - swapped_margin) / margin``; None where the margin is not positive."""
        return _effect(self.margin, self.swapped_margin)

    @property
    def token_effect(self) -> float | None:
        """The same for the token swap; None where it was not measured or the margin is not positive."""
        return None if self.token_swapped_margin is None else _effect(self.margin, self.token_swapped_margin)


def _effect(margin: float, swapped: float) -> float | None:
    return (margin - swapped) / margin if margin > 0 else None


Key = tuple[str, str, str]  # image, target, reference


def write_swaps(path: str | Path, rows: list[SwapRow]) -> None:
    """Write ``rows`` as a swap-effects file (atomically)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    for r in rows:
        token = "" if r.token_swapped_margin is None else f"{r.token_swapped_margin:.6g}"
        writer.writerow([r.image, r.target, r.reference, r.part, f"{r.margin:.6g}", f"{r.swapped_margin:.6g}", token])
    atomic_write_bytes(Path(path), lambda f: f.write(buf.getvalue().encode("utf-8")))


def read_swaps(path: str | Path, flag: str = "--swaps") -> dict[Key, dict[str, SwapRow]]:
    """A swap-effects file as (image, target, reference) -> part -> row; a malformed file raises
    :class:`FinerCamError` naming ``flag``, the file and the line."""
    text = read_text(path, f"{flag} {path}")
    lines = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    if not lines or tuple(c.strip() for c in lines[0]) != HEADER:
        raise FinerCamError(f"{flag} {path}: the header must be {','.join(HEADER)}")
    out: dict[Key, dict[str, SwapRow]] = {}
    for number, cells in enumerate(lines[1:], start=2):
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(HEADER):
            raise FinerCamError(f"{flag} {path}: line {number} has {len(cells)} fields, expected {len(HEADER)}")
        image, target, reference, part = (c.strip() for c in cells[:4])
        try:
            margin, swapped = float(cells[4]), float(cells[5])
            token = float(cells[6]) if cells[6].strip() else None
        except ValueError:
            raise FinerCamError(f"{flag} {path}: line {number}: the margins must be numbers") from None
        if not all(math.isfinite(v) for v in (margin, swapped) + (() if token is None else (token,))):
            raise FinerCamError(f"{flag} {path}: line {number}: a margin is not finite")
        if not image or not part:
            raise FinerCamError(f"{flag} {path}: line {number}: no image or no part")
        parts = out.setdefault((image, target, reference), {})
        if part in parts:
            raise FinerCamError(f"{flag} {path}: line {number}: part {part!r} of {image} against {reference} "
                                "is given twice")
        parts[part] = SwapRow(image, target, reference, part, margin, swapped, token)
    return out


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two vectors ``[P]`` (ties get their mean rank); NaN when either is
    constant or has fewer than two entries."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / math.sqrt((ra @ ra) * (rb @ rb)))


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    for value in np.unique(v):  # ties: the mean of their ranks
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


@dataclass(frozen=True)
class Agreement:
    """How a map's energy per part follows the swap effects of one (image, reference): ``rank`` the rank
    correlation over the parts, ``top`` whether the part where the map is densest is the decisive one (1.0 or
    0.0); NaN where it is undefined (no positive margin, no part with an effect, a constant map)."""

    rank: float
    top: float


def agreement(density: dict[str, float], effects: dict[str, float | None]) -> Agreement:
    """``density``: part -> the map's mass per pixel in it (any scale); ``effects``: part -> its swap effect
    (None: unknown). Only parts with both are compared."""
    parts = [p for p in effects if effects[p] is not None and p in density and math.isfinite(density[p])]
    if len(parts) < 2:
        return Agreement(float("nan"), float("nan"))
    d = np.array([density[p] for p in parts])
    e = np.array([effects[p] for p in parts], dtype=np.float64)
    top = float("nan") if e.max() <= 0 or np.ptp(d) == 0 else float(parts[int(d.argmax())] == parts[int(e.argmax())])
    return Agreement(rank_correlation(d, e), top)
