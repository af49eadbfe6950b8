"""Ground truth for evaluate.py and the field guide: mask folders (three encodings), boxes, part locations,
class attributes (where two classes look different), and the counterfactual agreement with swap effects."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .data import MAX_PIXELS, ImageError, open_image
from .errors import ArgumentError, FinerCamError
from .runstore import SkippedFile
from .userfiles import inside, is_special, read_text, safe_relative

MASK_FORMATS = ("auto", "binary", "levels", "labels")
SWAP_METRICS = ("swap_rank", "swap_top", "token_rank", "token_top")


# ------------------------------------------------------------------------------ counterfactual agreement

def part_densities(maps: np.ndarray, labels: np.ndarray, regions: dict[str, int]) -> list[dict[str, float]]:
    """Per map of ``maps`` ``[M, H, W]``, each region's density: the map's mean over the region's pixels of
    the label map ``[H, W]`` over its mean over the image (1: as dense as a uniform map); NaN for a region the
    image does not show or a map without mass."""
    out = []
    for m in maps.astype(np.float64):
        total = m.mean()
        out.append({name: float(m[labels == value].mean() / total) if total > 0 and (labels == value).any()
                    else float("nan") for name, value in regions.items()})
    return out


def swap_agreement(maps: np.ndarray, labels: np.ndarray, regions: dict[str, int],
                   rows: dict | None) -> list[dict[str, float]]:
    """Per map ``[M, H, W]``, the counterfactual agreement (:data:`SWAP_METRICS`) with the swap rows of one
    (image, target, reference) (part -> :class:`finer_cam.swaps.SwapRow`; None: the file has none, all NaN)."""
    from .swaps import agreement

    nan = {name: float("nan") for name in SWAP_METRICS}
    if not rows:
        return [dict(nan) for _ in maps]
    image_effects = {p: r.effect for p, r in rows.items()}
    token_effects = {p: r.token_effect for p, r in rows.items()}
    out = []
    for density in part_densities(maps, labels, regions):
        a, t = agreement(density, image_effects), agreement(density, token_effects)
        out.append({"swap_rank": a.rank, "swap_top": a.top, "token_rank": t.rank, "token_top": t.top})
    return out


# ------------------------------------------------------------------------------------------- ground truth

class GroundTruth:
    """Regions by image, from mask files (``DIR/<relative path>.png``) or a CSV of boxes (``image,x1,y1,x2,y2``
    in pixels of the original image; several rows of an image are joined).

    The masks' encoding is one for the whole folder, never guessed per image (``mask_format``):

    - ``binary``: the object where the pixel is 128 or more (0/255 masks, anti-aliased ones included);
    - ``levels``: 0 background, 128 the object, 255 its discriminative part (thresholds at 64 and 192);
    - ``labels``: a label map, its values named by ``DIR/labels.json``:
      ``{"background": 0, "regions": {"body": 1, "wheels": 2, ...}, "parts": ["wheels", ...]}``; the object is
      every region, the part the union of ``parts``;
    - ``auto``: ``labels`` when ``DIR/labels.json`` exists, else ``binary``.

    With ``labels`` and a class-attribute file (``{"classes": {name: {region: look, ...}}}``), the regions
    where two classes look different (:meth:`difference`) give the pair-level ground truth.
    With ``parts`` (a CSV ``image,part,x,y`` of visible part locations), the discs of radius ``part_radius``
    (a fraction of the image's shorter side) around them are the region ``parts``.
    """

    def __init__(self, masks: str | None, boxes: str | None, mask_format: str = "auto",
                 attributes: str | None = None, class_names: list[str] | None = None, parts: str | None = None,
                 part_radius: float = 0.1, max_pixels: int | None = MAX_PIXELS) -> None:
        self.masks = Path(masks) if masks else None
        self.max_pixels = max_pixels  # masks are images: the same decompression-bomb guard
        if self.masks is not None and not self.masks.is_dir():
            raise FinerCamError(f"--masks {masks}: no such folder")
        if mask_format not in MASK_FORMATS:
            raise ArgumentError("mask_format", mask_format, f"expected one of {', '.join(MASK_FORMATS)}")
        self.format = resolve_mask_format(masks, mask_format)
        self.legend: dict | None = None
        if self.format == "labels":
            self.legend = read_labels(self.masks / "labels.json")
        self.boxes: dict[str, list[tuple[float, float, float, float]]] = {}
        if boxes:
            self.boxes = _read_boxes(Path(boxes))
        self.looks: dict[int, dict[str, object]] | None = None
        if attributes:
            if self.format != "labels":
                raise FinerCamError(f"--attributes {attributes}: needs --masks with a label map (labels.json), "
                                    "which says where each region is")
            self.looks = read_attributes(Path(attributes), class_names or [], self.legend["regions"])
        self.regions = {None: [], "binary": ["object"], "levels": ["part", "object"],
                        "labels": ["part", "object"]}[self.format]
        if boxes:
            self.regions = ["box"]
        if self.looks is not None:
            self.regions = self.regions + ["difference"]
        self.parts: dict[str, list[tuple[float, float]]] = _read_parts(Path(parts)) if parts else {}
        self.part_radius = part_radius
        if parts:
            self.regions = self.regions + ["parts"]

    def __call__(self, rel: str, size: tuple[int, int]) -> tuple[dict[str, np.ndarray], np.ndarray | None] | None:
        """Boolean regions ``[H, W]`` for image ``rel`` of ``size = (W, H)`` and, for label maps, the map
        itself ``[H, W]``; None when the image has none. An unreadable mask raises :class:`SkippedFile`."""
        regions, labels = self._regions(rel, size) or ({}, None)
        if rel in self.parts:
            regions = {**regions, "parts": part_discs(self.parts[rel], size, self.part_radius * min(size))}
        return (regions, labels) if regions else None

    def _regions(self, rel: str, size: tuple[int, int]) -> tuple[dict[str, np.ndarray], np.ndarray | None] | None:
        if self.masks is not None:
            path = inside(self.masks, Path(rel).with_suffix(".png").as_posix(), "--masks", follow_links=True)
            if is_special(path):  # a FIFO or a device would block the read for ever
                raise SkippedFile(path, "not a regular file (a FIFO, device or socket)")
            if not path.is_file():
                return None
            try:
                with open_image(path, self.max_pixels) as img:
                    values = np.asarray(img.convert("L"))
            except ImageError as exc:
                raise SkippedFile(path, f"mask: {exc}") from None
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise SkippedFile(path, f"unreadable mask ({exc})") from None
            if values.shape != (size[1], size[0]):
                values = np.asarray(Image.fromarray(values).resize(size, Image.NEAREST))
            if self.format == "binary":
                return {"object": values >= 128}, None
            if self.format == "levels":
                return {"part": values >= 192, "object": values >= 64}, None
            regions = self.legend["regions"]
            parts = [regions[p] for p in self.legend["parts"]]
            return {"part": np.isin(values, parts), "object": np.isin(values, list(regions.values()))}, values
        if rel in self.boxes:
            region = np.zeros((size[1], size[0]), bool)
            for x1, y1, x2, y2 in self.boxes[rel]:
                region[max(0, int(y1)):max(0, int(np.ceil(y2))), max(0, int(x1)):max(0, int(np.ceil(x2)))] = True
            return {"box": region}, None
        return None

    def difference(self, labels: np.ndarray, target: int, references: list[int]) -> np.ndarray | None:
        """Where class ``target`` looks different from any of ``references``: the union of the regions
        (of the label map ``[H, W]``) whose looks differ, ``bool [H, W]``; None when no region differs."""
        mine = self.looks.get(target)
        values = set()
        for r in references:
            theirs = self.looks.get(r)
            if mine is None or theirs is None:
                return None
            values |= {v for v, look in mine.items() if theirs.get(v) != look}
        return np.isin(labels, sorted(values)) if values else None


def resolve_mask_format(masks: str | None, mask_format: str) -> str | None:
    """The encoding of a mask folder: ``mask_format``, or for ``auto`` ``labels`` when the folder has a
    ``labels.json`` and ``binary`` otherwise; None without masks."""
    if not masks:
        return None
    if mask_format != "auto":
        return mask_format
    return "labels" if (Path(masks) / "labels.json").is_file() else "binary"


def read_labels(path: Path) -> dict:
    """A mask folder's ``labels.json`` (see :class:`GroundTruth`), checked."""
    try:
        legend = json.loads(read_text(path, f"--masks: {path}"))
        regions = {str(k): int(v) for k, v in legend["regions"].items()}
        parts = [str(p) for p in legend.get("parts", [])]
        background = int(legend.get("background", 0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FinerCamError(f"--masks: {path}: expected {{\"background\": 0, \"regions\": {{name: value}}, "
                            f"\"parts\": [names]}} ({exc})") from None
    unknown = [p for p in parts if p not in regions]
    if unknown or background in regions.values():
        raise FinerCamError(f"--masks: {path}: 'parts' names {unknown} not in 'regions', or the background value "
                            "is also a region's")
    return {"background": background, "regions": regions, "parts": parts}


def read_attributes(path: Path, class_names: list[str], regions: dict[str, int]) -> dict[int, dict[int, object]]:
    """``--attributes``: ``{"classes": {class name: {region name: look}}}`` -> class index -> {label value:
    look}, for the regions the label map names (other keys are left out). Every class of the run must be
    there."""
    try:
        classes = json.loads(read_text(path, f"--attributes {path}"))["classes"]
        looks = {name: {regions[k]: json.dumps(v, sort_keys=True) for k, v in classes[name].items() if k in regions}
                 for name in class_names if name in classes}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FinerCamError(f"--attributes {path}: expected {{\"classes\": {{class name: {{region: look}}}}}} "
                            f"({exc})") from None
    missing = [n for n in class_names if n not in looks]
    if missing:
        raise FinerCamError(f"--attributes {path}: no attributes for {len(missing)} of the run's classes "
                            f"(first: {missing[0]!r})")
    return {i: looks[n] for i, n in enumerate(class_names)}


def part_discs(points: list[tuple[float, float]], size: tuple[int, int], radius: float) -> np.ndarray:
    """The pixels (``[H, W]`` bool, ``size = (W, H)``) within ``radius`` of any of the ``(x, y)`` points (pixel
    centres at +0.5)."""
    ys, xs = np.mgrid[0:size[1], 0:size[0]] + 0.5
    region = np.zeros((size[1], size[0]), bool)
    for x, y in points:
        region |= (xs - x) ** 2 + (ys - y) ** 2 <= radius ** 2
    return region


def read_csv_rows(path: Path, flag: str) -> list[dict]:
    """A user's CSV file (UTF-8, with or without a byte-order mark) as rows keyed by its header."""
    text = read_text(path, f"{flag} {path}")
    try:
        return list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise FinerCamError(f"{flag} {path}: not a CSV file ({exc})") from None


def read_named_parts(path: Path, flag: str = "--parts") -> dict[str, list[tuple[str, float, float]]]:
    """The part locations CSV ``image,part,x,y`` (prepare_dataset.py cub): image path -> its visible parts as
    ``(name, x, y)`` in pixels of the original image."""
    rows = read_csv_rows(path, flag)
    parts: dict[str, list] = {}
    for i, row in enumerate(rows, start=2):
        try:
            point = (str(row["part"]), float(row["x"]), float(row["y"]))
            parts.setdefault(row["image"], []).append(point)
        except (KeyError, TypeError, ValueError):
            raise FinerCamError(f"{flag} {path}: line {i}: expected columns image,part,x,y with numbers") from None
    return parts


def _read_parts(path: Path) -> dict[str, list[tuple[float, float]]]:
    """The part locations CSV ``image,part,x,y``: image path -> its visible parts' points."""
    return {image: [(x, y) for _, x, y in points] for image, points in read_named_parts(path).items()}


def _read_boxes(path: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """The boxes CSV (UTF-8, with or without a byte-order mark): image path (relative, as in index.jsonl)
    -> its boxes."""
    rows = read_csv_rows(path, "--boxes")
    boxes: dict[str, list] = {}
    for i, row in enumerate(rows, start=2):
        try:
            box = tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2"))
            image = row["image"]
        except (KeyError, TypeError, ValueError):
            raise FinerCamError(f"--boxes {path}: line {i}: expected columns image,x1,y1,x2,y2 with numbers") from None
        if not all(np.isfinite(box)):
            raise FinerCamError(f"--boxes {path}: line {i}: a coordinate is not a finite number")
        if safe_relative(image) is None:
            raise FinerCamError(f"--boxes {path}: line {i}: image {image!r} is not a path relative to the data "
                                "set's root (as index.jsonl names it)")
        boxes.setdefault(image, []).append(box)
    return boxes
