"""Scoring a guide against ground truth: does the top-ranked part of each direction ``A -> B`` name a part
where the two classes are drawn differently (a class-attribute file), and the part whose swap to B's look
removes most of the margin ``y_A - y_B`` (a swap-effects file)?

The swap-effects file is a CSV, one row per (image, reference class, part):
``image,target,reference,part,margin,swapped_margin,token_swapped_margin`` (class names, the part a region of
the masks' labels.json). A part's effect is ``(margin - swapped_margin) / margin``; rows with a non-positive
margin are left out (the model does not prefer the target there). The decisive part of a direction is the
part with the largest mean effect over its rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FinerCamError
from ..ground_truth import read_attributes
from ..swaps import read_swaps as read_swap_rows

SOURCES = ("plain", "contrastive")  # the guide of the plain maps (ranked by their share) or of the contrast (lift)


@dataclass
class SwapEffects:
    """``(target, reference) -> part -> the part's effects`` over the rows of that pair of class names."""

    effects: dict[tuple[str, str], dict[str, list[float]]] = field(default_factory=dict)
    skipped: int = 0  # rows with a non-positive margin

    def decisive(self, target: str, reference: str) -> str | None:
        """The part with the largest mean effect for ``target -> reference``; None without rows."""
        parts = self.effects.get((target, reference))
        if not parts:
            return None
        return max(sorted(parts), key=lambda p: float(np.mean(parts[p])))


def read_swaps(path: str | Path, flag: str = "--swaps") -> SwapEffects:
    """The swap-effects file, read by :func:`finer_cam.swaps.read_swaps` (its one reader), as the effects per
    pair of classes and part; a malformed file is a FinerCamError naming the file and line."""
    out = SwapEffects()
    for (_, target, reference), parts in read_swap_rows(path, flag).items():
        for part, row in parts.items():
            if row.effect is None:  # a non-positive margin: the model does not prefer the target
                out.skipped += 1
                continue
            out.effects.setdefault((target, reference), {}).setdefault(part, []).append(row.effect)
    return out


def differing(attributes: str | Path, class_names: list[str], parts: list[str]) -> dict[tuple[str, str], set[str]]:
    """For every ordered pair of the run's classes, the annotated parts (among ``parts``) where the two look
    different, from a class-attribute file ``{"classes": {name: {region: look}}}`` (evaluate.py's reader)."""
    value = {p: i for i, p in enumerate(parts)}
    looks = read_attributes(Path(attributes), class_names, value)
    out = {}
    for a, na in enumerate(class_names):
        for b, nb in enumerate(class_names):
            if a != b:
                out[na, nb] = {parts[v] for v, look in looks[a].items() if looks[b].get(v) != look}
    return out


@dataclass
class Score:
    """Hits over the scored directions, and the mean chance of a hit for a part drawn at random."""

    hits: int = 0
    n: int = 0
    chance: float = 0.0

    @property
    def share(self) -> float:
        return self.hits / self.n if self.n else float("nan")

    def add(self, hit: bool, chance: float) -> None:
        self.chance = (self.chance * self.n + chance) / (self.n + 1)
        self.hits += int(hit)
        self.n += 1


@dataclass
class TruthScore:
    """Per kind of parts (annotated, discovered): the true-part and the decisive-part scores."""

    true_part: dict[str, Score] = field(default_factory=dict)
    decisive: dict[str, Score] = field(default_factory=dict)


def _top(parts: list[dict], source: str) -> str | None:
    """The top part of a direction's ranked parts (guide.json's) for ``source``: the largest plain share, or
    the largest lift; None when no part was measured."""
    field_name = "plain_share" if source == "plain" else "lift"
    scored = [s for s in parts if s["n"] and s[field_name] is not None]
    return max(scored, key=lambda s: s[field_name])["part"] if scored else None


def score_guide(guide: dict, attributes: str | Path, swaps: SwapEffects | None = None,
                source: str = "contrastive") -> TruthScore:
    """Score a ``guide.json`` (as a dict): for every direction with measured images, whether its top part
    (ranked by the plain share for ``source="plain"``, by the lift otherwise) is a true differing part, and
    whether it is the decisive part of ``swaps``. A discovered part stands for the annotated region most of
    its patches lie in (the guide must have been built with ``--masks`` and ``--discover``)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    annotated = guide["parts"].get("annotated")
    if not annotated:
        raise FinerCamError("the guide has no annotated parts; build it with --masks (and --discover)")
    regions = [p for p in annotated if p != "background"]
    truth = differing(attributes, guide["class_names"], regions)
    region_of = {}
    for d in guide.get("discovered") or []:
        where = d.get("regions") or {}
        region_of[d["name"]] = max(sorted(where), key=lambda r: where[r]) if where else None
    out = TruthScore()
    for pair in guide["pairs"]:
        for d in pair["directions"]:
            key = d["target"], d["reference"]
            true = truth.get(key, set())
            decisive = swaps.decisive(*key) if swaps is not None else None
            for kind, parts in d["parts"].items():
                top = _top(parts, source)
                if top is None:
                    continue
                if kind == "discovered":
                    names = list(region_of)
                    top_region = region_of.get(top)
                    chance_true = np.mean([region_of[n] in true for n in names]) if names else 0.0
                    chance_decisive = np.mean([region_of[n] == decisive for n in names]) if names else 0.0
                else:
                    top_region = top
                    chance_true = len(true & set(annotated)) / len(annotated)
                    chance_decisive = 1.0 / len(annotated)
                out.true_part.setdefault(kind, Score()).add(top_region in true, float(chance_true))
                if decisive is not None:
                    out.decisive.setdefault(kind, Score()).add(top_region == decisive, float(chance_decisive))
    return out


def format_rows(label: str, score: TruthScore) -> list[str]:
    """Markdown table rows ``| label | kind | true part | chance | decisive part | chance |``."""
    rows = []
    for kind, s in score.true_part.items():
        d = score.decisive.get(kind)
        decisive = f"{d.share:.2f} ({d.hits}/{d.n}) | {d.chance:.2f}" if d else "not measured | –"
        rows.append(f"| {label} | {kind} | {s.share:.2f} ({s.hits}/{s.n}) | {s.chance:.2f} | {decisive} |")
    return rows
