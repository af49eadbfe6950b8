"""Reference-class selection and the Finer objectives (modes): pure functions on logits.

A mode ``NAME:ALPHA[:RANKS[:softmax]]`` asks for the map of ``y_t - ALPHA * mean(y_r for r in RANKS)``,
where ``r`` are 1-based positions in the similarity ranking of the other classes. With ``:softmax`` the
objective is the official pytorch-grad-cam ``FinerWeightedTarget``:
``sum_r p_r (y_t - ALPHA y_r) / (sum_r p_r + 1e-9)`` with ``p = softmax(y)`` (not detached).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from .errors import ArgumentError

SIMILARITIES = ("logit-distance", "logit-rank", "weight-cosine")
WEIGHTINGS = ("mean", "softmax")
DEFAULT_MODES = ("baseline:0", "finer:0.6:1,2,3", "compare:1:1")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class Mode:
    """One objective: ``name``, strength ``alpha``, 1-based reference ``ranks``, ``weighting`` of the references."""

    name: str
    alpha: float
    ranks: tuple[int, ...] = ()
    weighting: str = "mean"

    @property
    def spec(self) -> str:
        """The ``NAME:ALPHA[:RANKS[:softmax]]`` string that parses back to this mode."""
        alpha = repr(float(self.alpha))  # the shortest text that parses back to the same float
        text = f"{self.name}:{alpha.removesuffix('.0')}"
        if self.ranks or self.weighting != "mean":
            text += ":" + ",".join(map(str, self.ranks))
        if self.weighting != "mean":
            text += ":" + self.weighting
        return text

    def to_json(self) -> dict:
        return {"name": self.name, "alpha": self.alpha, "ranks": list(self.ranks), "weighting": self.weighting}


def parse_mode(spec: str) -> Mode:
    """Parse ``NAME:ALPHA[:RANKS[:softmax]]``; raise FinerCamError saying what is wrong."""
    parts = spec.split(":")
    if not 2 <= len(parts) <= 4:
        raise ArgumentError("modes", spec, "expected NAME:ALPHA[:RANKS[:softmax]]")
    name, alpha_text = parts[0], parts[1]
    if not _NAME.match(name):
        raise ArgumentError("modes", spec, f"the name must be letters, digits or _.+- (got {name!r})")
    try:
        alpha = float(alpha_text)
    except ValueError:
        raise ArgumentError("modes", spec, f"ALPHA {alpha_text!r} is not a number") from None
    if not math.isfinite(alpha):
        raise ArgumentError("modes", spec, "ALPHA must be finite")
    ranks: tuple[int, ...] = ()
    if len(parts) >= 3 and parts[2].strip():
        try:
            ranks = tuple(int(r) for r in parts[2].split(","))
        except ValueError:
            raise ArgumentError("modes", spec, "RANKS must be comma-separated integers like 1,2,3") from None
        if any(r < 1 for r in ranks):
            raise ArgumentError("modes", spec, "RANKS are 1-based (1 = most similar class)")
        if len(set(ranks)) != len(ranks):
            raise ArgumentError("modes", spec, "RANKS repeat a rank")
    weighting = "mean"
    if len(parts) == 4:
        weighting = parts[3]
        if weighting not in WEIGHTINGS:
            raise ArgumentError("modes", spec, f"the weighting must be 'softmax' (or 'mean'), not {weighting!r}")
    if alpha != 0 and not ranks:
        raise ArgumentError("modes", spec, f"a non-zero ALPHA needs RANKS (e.g. {name}:{alpha_text}:1,2,3)")
    return Mode(name, alpha, ranks, weighting)


def parse_modes(specs: list[str] | tuple[str, ...]) -> list[Mode]:
    modes = [parse_mode(s) for s in specs]
    if not modes:
        raise ArgumentError("modes", problem="give at least one mode")
    names = [m.name for m in modes]
    if len(set(names)) != len(names):
        raise ArgumentError("modes", problem=f"mode names must be unique (got {', '.join(names)})")
    return modes


def max_rank(modes: list[Mode], num_classes: int) -> int:
    """How many references the modes need, capped by the number of other classes."""
    return min(max((max(m.ranks) for m in modes if m.ranks), default=0), num_classes - 1)


def rank_references(logits: torch.Tensor, targets: torch.Tensor, k: int, similarity: str = "logit-distance",
                    class_similarity: torch.Tensor | None = None) -> torch.Tensor:
    """The ``k`` classes most similar to each target, most similar first: ``[B, C], [B] -> [B, k]``.

    ``logit-distance``: smallest ``|y_i - y_t|`` (the official code, pytorch-grad-cam, torchcam);
    ``logit-rank``: highest ``y_i``; ``weight-cosine``: highest ``class_similarity[t, i]`` (a ``[C, C]``
    matrix, e.g. cosine similarity of the head's weight rows). The target is never a reference.
    """
    logits = logits.detach().float()
    t = targets.view(-1, 1)
    if similarity == "logit-distance":
        score = -(logits - logits.gather(1, t)).abs()
    elif similarity == "logit-rank":
        score = logits.clone()
    elif similarity == "weight-cosine":
        if class_similarity is None:
            raise ValueError("weight-cosine similarity needs the class similarity matrix")
        score = class_similarity.to(logits.device, torch.float32)[targets].clone()
    else:
        raise ArgumentError("similarity", similarity, f"expected one of {', '.join(SIMILARITIES)}")
    score.scatter_(1, t, float("-inf"))
    return torch.argsort(score, dim=1, descending=True, stable=True)[:, :k]


def weight_cosine(weight: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the head's class rows: ``[C, D] -> [C, C]``."""
    w = torch.nn.functional.normalize(weight.detach().float(), dim=1)
    return w @ w.T


def objectives(logits: torch.Tensor, targets: torch.Tensor, references: torch.Tensor,
               modes: list[Mode]) -> torch.Tensor:
    """Every mode's objective for every image: ``[B, C], [B], [B, K] -> [M, B]`` (differentiable in logits).

    Ranks beyond ``K`` are dropped; a mode with none left is the target logit.
    """
    y_t = logits.gather(1, targets.view(-1, 1))[:, 0]
    rows = []
    for mode in modes:
        cols = [r - 1 for r in mode.ranks if r <= references.shape[1]]
        if not cols:
            rows.append(y_t)
            continue
        idx = references[:, cols]
        y_r = logits.gather(1, idx)
        if mode.weighting == "softmax":
            p = torch.softmax(logits, dim=1).gather(1, idx)
            rows.append((p * (y_t[:, None] - mode.alpha * y_r)).sum(1) / (p.sum(1) + 1e-9))
        else:
            rows.append(y_t - mode.alpha * y_r.mean(1))
    return torch.stack(rows)
