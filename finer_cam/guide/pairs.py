"""The pairs of look-alike classes of a run, and where the maps of each direction of a pair lie.

A *direction* ``A -> B`` is the images of class A (their target) whose rank-1 reference is B: the maps of a
contrastive mode of the run on those images say what tells A from B, the plain (alpha 0) maps of the same
images what A and B share. A *pair* is the two directions of two classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import FinerCamError
from ..metrics import mean_ci
from ..targets import Mode


@dataclass(frozen=True)
class Sample:
    """One explained image of the run, as the guide uses it."""

    image: str  # relative to the data set's root, as index.jsonl names it
    map: str  # its map file, relative to the run folder
    target: int  # the class explained
    reference: int  # its rank-1 reference class
    label: int | None  # the true class, on labelled data
    predicted: int
    size: tuple[int, int]  # (W, H) of the original image
    input_size: tuple[int, int] | None  # (W, H) at the network input


@dataclass(frozen=True)
class Modes:
    """Which maps of a run's files the guide reads: the contrastive one and the plain one (positions in
    run.json's modes), and the mode whose first reference is each image's rank-1 class."""

    contrastive: int
    plain: int
    names: tuple[str, ...]
    rank1_mode: str

    @property
    def contrastive_name(self) -> str:
        return self.names[self.contrastive]

    @property
    def plain_name(self) -> str:
        return self.names[self.plain]


def choose_modes(run_modes: Sequence[Mode], wanted: str | None, cam_dir) -> Modes:
    """The contrastive mode: ``wanted`` when given, else, by rule, the mode that contrasts with exactly the
    rank-1 class (ranks ``[1]``, as ``compare:1:1``) with the largest alpha, else the first mode with alpha >
    0 (as ``finer``). The plain mode is the first with alpha 0. A run without one of them is a FinerCamError.
    """
    names = tuple(m.name for m in run_modes)

    def alpha(m: Mode) -> float:
        return m.alpha

    plain = [i for i, m in enumerate(run_modes) if alpha(m) == 0]
    contrastive = [i for i, m in enumerate(run_modes) if alpha(m) > 0]
    if not contrastive:
        raise FinerCamError(f"--cam_dir {cam_dir}: the run has no contrastive mode (alpha > 0; its modes: "
                            f"{', '.join(names)}); generate it with e.g. --modes baseline:0 compare:1:1")
    if not plain:
        raise FinerCamError(f"--cam_dir {cam_dir}: the run has no plain mode (alpha 0) to compare the contrastive "
                            f"maps with (its modes: {', '.join(names)}); generate it with e.g. --modes baseline:0 "
                            "compare:1:1")
    if wanted is not None:
        if wanted not in names:
            raise FinerCamError(f"--mode {wanted}: not a mode of the run ({', '.join(names)})")
        chosen = names.index(wanted)
        if alpha(run_modes[chosen]) <= 0:
            raise FinerCamError(f"--mode {wanted}: a plain mode (alpha 0), not a contrastive one; the run's "
                                f"contrastive modes: {', '.join(names[i] for i in contrastive)}")
    else:
        exact = [i for i in contrastive if list(run_modes[i].ranks) == [1]]
        chosen = max(exact, key=lambda i: alpha(run_modes[i])) if exact else contrastive[0]
    with_rank1 = [i for i in contrastive if list(run_modes[i].ranks)[:1] == [1]]
    if not with_rank1:
        raise FinerCamError(f"--cam_dir {cam_dir}: no contrastive mode of the run compares with the rank-1 class "
                            "(ranks starting with 1), so the index does not say which class each image is most "
                            "easily confused with")
    rank1 = chosen if chosen in with_rank1 else with_rank1[0]
    return Modes(contrastive=chosen, plain=plain[0], names=names, rank1_mode=names[rank1])


def samples_of(entries: dict[str, dict], modes: Modes, n_classes: int) -> tuple[list[Sample], list[str]]:
    """The index's explained images as :class:`Sample`, in path order, and the problems of the lines left
    out (one line each)."""
    out, problems = [], []
    for key in sorted(entries):
        e = entries[key]
        if "error" in e:
            continue
        try:
            refs = (e.get("references") or {}).get(modes.rank1_mode) or []
            target, ref = int(e["target"]), int(refs[0])
            label = None if e.get("label") is None else int(e["label"])
            size = (int(e["size"][0]), int(e["size"][1]))
            inp = e.get("input_size")
            inp = (int(inp[0]), int(inp[1])) if inp else None
            predicted = int(e.get("predicted", target))
            classes = [target, ref, predicted] + ([] if label is None else [label])
            if not all(0 <= c < n_classes for c in classes) or not isinstance(e.get("map"), str):
                raise ValueError
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            problems.append(f"{key}: its index line has no usable target, {modes.rank1_mode} reference, prediction, "
                            f"label (classes 0 to {n_classes - 1} of the run), size or map")
            continue
        out.append(Sample(key, e["map"], target, ref, label, predicted, size, inp))
    return out, problems


@dataclass
class Pair:
    """Two classes ``a < b`` and how often each is taken for the other."""

    a: int
    b: int
    references: tuple[int, int] = (0, 0)  # images of a whose rank-1 reference is b; of b whose is a
    confusions: tuple[int, int] = (0, 0)  # labelled images of a predicted as b; of b predicted as a
    images: tuple[int, int] = (0, 0)  # images of a and of b in the run

    @property
    def key(self) -> str:
        return f"{self.a}-{self.b}"

    @property
    def score(self) -> tuple[int, int]:
        """The ranking key: confusions first (the classifier took one for the other), then references."""
        return sum(self.confusions), sum(self.references)


def find_pairs(samples: list[Sample]) -> list[Pair]:
    """Every pair of classes that some image links (by its rank-1 reference or by a wrong prediction of a
    labelled image), ranked by :attr:`Pair.score`, highest first, then by class indices."""
    per_class: dict[int, int] = {}
    refs: dict[tuple[int, int], int] = {}
    conf: dict[tuple[int, int], int] = {}
    for s in samples:
        per_class[s.target] = per_class.get(s.target, 0) + 1
        if s.reference != s.target:
            refs[s.target, s.reference] = refs.get((s.target, s.reference), 0) + 1
        if s.label is not None and s.predicted != s.label:
            conf[s.label, s.predicted] = conf.get((s.label, s.predicted), 0) + 1
    keys = {tuple(sorted(k)) for k in [*refs, *conf]}
    pairs = [Pair(a, b, (refs.get((a, b), 0), refs.get((b, a), 0)), (conf.get((a, b), 0), conf.get((b, a), 0)),
                  (per_class.get(a, 0), per_class.get(b, 0))) for a, b in keys]
    return sorted(pairs, key=lambda p: (-p.score[0], -p.score[1], p.a, p.b))


# ------------------------------------------------------------------------------------------- statistics

@dataclass
class PartStat:
    """One part in one direction: the mean share of the contrastive and of the plain map inside it, their
    paired difference (the lift), each with the half-width of its 95% interval, over ``n`` images."""

    part: str
    share: float
    share_ci: float
    plain: float
    plain_ci: float
    lift: float
    lift_ci: float
    n: int

    def as_json(self) -> dict:
        return {"part": self.part, "share": self.share, "share_ci95": self.share_ci, "plain_share": self.plain,
                "plain_ci95": self.plain_ci, "lift": self.lift, "lift_ci95": self.lift_ci, "n": self.n}


RANK_BY = ("lift", "share", "plain")


def part_stats(names: list[str], shares: np.ndarray, plain: np.ndarray, rank_by: str = "lift") -> list[PartStat]:
    """Per part, over the images of a direction: ``shares`` and ``plain`` ``[N, P]`` (the share of each
    image's contrastive / plain map inside each part, NaN where the image does not show the part). Ranked by
    ``rank_by``: ``lift`` (contrastive share minus plain share: what the contrast adds), ``share`` (the
    contrastive share itself) or ``plain`` (the plain share: the guide a plain map gives); highest first, parts
    seen in no image last."""
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {RANK_BY}")
    out = []
    for p, name in enumerate(names):
        s, s_ci, n = mean_ci(shares[:, p])
        q, q_ci, _ = mean_ci(plain[:, p])
        d, d_ci, _ = mean_ci(shares[:, p] - plain[:, p])
        out.append(PartStat(name, s, s_ci, q, q_ci, d, d_ci, n))
    key = {"lift": lambda st: st.lift, "share": lambda st: st.share, "plain": lambda st: st.plain}[rank_by]
    return sorted(out, key=lambda st: (st.n == 0, -(key(st) if np.isfinite(key(st)) else -np.inf)))


@dataclass
class Direction:
    """``target -> reference``: its images (positions in the sample list) and, per kind of parts, the ranked
    :class:`PartStat` and each image's concentration (its share in the top part, minus the plain share)."""

    target: int
    reference: int
    images: list[int] = field(default_factory=list)
    parts: dict[str, list[PartStat]] = field(default_factory=dict)
    exemplars: dict[str, list[int]] = field(default_factory=dict)  # kind -> sample positions, best first


def directions(samples: list[Sample], pairs: list[Pair]) -> dict[tuple[int, int], Direction]:
    """``(a, b) -> Direction`` for both directions of every pair (an empty one where no image of a has b as
    its rank-1 reference)."""
    out = {}
    for p in pairs:
        out[p.a, p.b] = Direction(p.a, p.b)
        out[p.b, p.a] = Direction(p.b, p.a)
    for i, s in enumerate(samples):
        if (s.target, s.reference) in out:
            out[s.target, s.reference].images.append(i)
    return out


def rank_exemplars(d: Direction, kind: str, shares: np.ndarray, plain: np.ndarray, names: list[str],
                   count: int) -> list[int]:
    """The ``count`` images of ``d`` where the difference is most concentrated: the largest contrastive share
    in the direction's top-ranked part, minus the plain share there. Returns sample positions."""
    ranked = d.parts.get(kind) or []
    if not d.images or not ranked or ranked[0].n == 0:
        return []
    p = names.index(ranked[0].part)
    rows = np.asarray(d.images)
    score = shares[rows, p] - plain[rows, p]
    score = np.where(np.isfinite(score), score, -np.inf)
    order = np.argsort(-score, kind="stable")[:count]
    return [int(rows[o]) for o in order if np.isfinite(score[o])]
