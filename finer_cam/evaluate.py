"""The work of evaluate.py: the paper's numbers for every mode of a generate_cam.py run.

Per image and mode, from the saved maps and the same classifier and preprocessing as the run:

- RD@k, the relative confidence drop: ``(p_c - p*_c) - (p_d - p*_d)``, p before and p* after masking the
  top k% of the map's pixels at the network input; c the target, d its most similar class (rank 1 of the
  run's similarity ranking); and the plain drop ``p_c - p*_c``;
- deletion and insertion curves (RISE): the target's probability as the most highlighted pixels are
  removed from the image / revealed on the fill, in ``steps`` equal steps, and the area under each;
- with ground truth (``masks`` or ``boxes``): the share of the map's energy inside the region and whether
  the map's peak falls in it (pointing game); with ``parts`` (CUB's visible part locations), the same for the
  discs of radius ``part_radius`` (a fraction of the image's shorter side) around them: a part-level
  pointing game;
- with part masks (a label map, ``labels.json``) and class attributes (``attributes``): the same inside the
  parts where the target differs from the mode's reference classes (``energy_difference``,
  ``pointing_difference``); for a mode without references (the baseline), from its rank-1 class;
- with part masks and a swap-effects file (``swaps``, :mod:`finer_cam.swaps`), the counterfactual agreement
  against the rank-1 class: ``swap_rank``, the rank correlation over the parts between the map's density in
  each part (its mean over the part's pixels) and the part's swap effect, and ``swap_top``, whether the part
  where the map is densest is the decisive one (the largest effect); ``token_rank`` and ``token_top`` the
  same with the token-swap effects, where the file has them.

Masked pixels take the fill: 0 after normalisation (the data set mean) or a heavily blurred copy. The masked
variants of a batch of images, for all modes, all k and all curve steps, go through the model together.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import checks
from .cam import normalize_maps, resize_maps
from .data import MAX_PIXELS, ImageDataset, ImageError, Preprocess, make_loader, open_image
from .device import loader_workers, resolve_device
from .distributed import init_ranks, shutdown
from .errors import ArgumentError, FinerCamError
from .io import (INDEX_FILE, FolderLock, SkippedFile, atomic_write_bytes, check_folder, claim_output, dataset_root,
                 entry_map, inside, is_special, read_map_file, read_run, read_text, safe_relative, write_json)
from .metrics import (blurred, compose, curve_auc, energy_inside, mean_ci, pixel_ranks, pointing_hit,
                      relative_drop, top_percent_mask)
from .models import load_classifier
from .progress import BarFactory, StopRequest, open_bar
from .targets import rank_references, weight_cosine

log = logging.getLogger("finer_cam")
FILLS = ("mean", "blur")
MASK_FORMATS = ("auto", "binary", "levels", "labels")
VARIANT_BUDGET = 64 * 2**20  # mask elements (bytes of bool) built at once for one group of images
OUTPUT_FILES = ("summary.md", "summary.csv", "summary.json", "per_image.csv", "curves.png", "rd_bars.png")


@dataclass
class EvaluateConfig:
    cam_dir: str
    out: str
    dataset_dir: str | None = None
    model_path: str | None = None
    classifier_path: str | None = None
    arch: str | None = None
    percent: list[float] = field(default_factory=lambda: [5.0, 10.0])
    fill: str = "mean"
    steps: int = 20
    masks: str | None = None
    boxes: str | None = None
    parts: str | None = None  # CSV image,part,x,y: visible part locations (prepare_dataset.py cub)
    part_radius: float = 0.1  # of the image's shorter side
    mask_format: str = "auto"
    attributes: str | None = None
    swaps: str | None = None  # CSV of swap effects (finer_cam.swaps): the counterfactual agreement
    batch_size: int = 64
    num_workers: int | str = "auto"  # device.loader_workers
    device: str = "auto"
    limit: int | None = None
    max_pixels: int | None = MAX_PIXELS

    def __post_init__(self) -> None:
        """Every field's value is checked here, once (:mod:`finer_cam.checks`)."""
        checks.one_of("fill", self.fill, FILLS)
        checks.one_of("mask_format", self.mask_format, MASK_FORMATS)
        if not self.percent or any(not 0 < p < 100 for p in self.percent):
            raise ArgumentError("percent", " ".join(map(str, self.percent)), "each must be between 0 and 100 "
                                "(exclusive)")
        if len({_pct(p) for p in self.percent}) != len(self.percent):
            raise ArgumentError("percent", " ".join(map(_pct, self.percent)), "a percentage is given twice")
        checks.num_workers(self.num_workers)
        checks.max_pixels(self.max_pixels)
        checks.at_least("steps", self.steps, 0, "0 (no curves) or more")
        checks.at_least("batch_size", self.batch_size, 1)
        checks.at_least("limit", self.limit, 1, optional=True)
        checks.exclusive(("masks", self.masks), ("boxes", self.boxes))
        checks.finite("part_radius", self.part_radius, "a fraction of the shorter side between 0 and 1", above=0,
                      below=1)
        if self.attributes and not self.masks:
            raise ArgumentError("attributes", problem="needs --masks (label maps with labels.json)")
        if self.swaps and not self.masks:
            raise ArgumentError("swaps", problem="needs --masks (label maps with labels.json naming the parts)")


@dataclass
class EvaluateResult:
    summary: dict  # mode -> metric -> {"mean", "ci95", "n"}
    rows: list[dict]
    images: int = 0
    failed: int = 0
    metrics: list[str] = field(default_factory=list)
    main: bool = True  # rank 0 of a torchrun run (or the only process): the one that writes and reports


def _pct(p: float) -> str:
    return f"{p:g}"


SWAP_METRICS = ("swap_rank", "swap_top", "token_rank", "token_top")


def metric_names(cfg: EvaluateConfig, localisation: list[str]) -> list[str]:
    names = [f"rd@{_pct(p)}" for p in cfg.percent] + [f"drop@{_pct(p)}" for p in cfg.percent]
    if cfg.steps > 0:
        names += ["deletion_auc", "insertion_auc"]
    for region in localisation:
        names += [f"energy_{region}", f"pointing_{region}"]
    if cfg.swaps:
        names += list(SWAP_METRICS)
    return names


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


# ---------------------------------------------------------------------------------------------- the model

def _probabilities(model, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([torch.softmax(model(chunk), dim=1) for chunk in images.split(batch_size)])


def _variants(model, x: torch.Tensor, fill: torch.Tensor, keep: torch.Tensor, owner: torch.Tensor,
              batch_size: int) -> torch.Tensor:
    """Probabilities ``[J, C]`` of ``J`` masked images: image ``owner[j]`` where ``keep[j]``, its fill elsewhere."""
    out = []
    with torch.no_grad():
        for start in range(0, len(owner), batch_size):
            idx = owner[start:start + batch_size]
            out.append(torch.softmax(model(compose(x[idx], fill[idx], keep[start:start + batch_size])), dim=1))
    return torch.cat(out) if out else torch.zeros(0)


def evaluate_group(model, x: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, refs: torch.Tensor,
                   cfg: EvaluateConfig) -> dict[str, torch.Tensor]:
    """Every perturbation metric of ``B`` images and ``M`` modes: ``x [B, 3, H, W]``, maps ``[B, M, H, W]``
    (normalised, at the input size), target and reference classes ``[B]``. Returns ``name -> [B, M]`` and
    the curves ``deletion``/``insertion`` ``[B, M, S + 1]``."""
    B, M, H, W = maps.shape
    fill = torch.zeros_like(x) if cfg.fill == "mean" else blurred(x)
    p0 = _probabilities(model, x, cfg.batch_size)  # [B, C]
    flat_maps = maps.reshape(B * M, H, W)
    owner_bm = torch.arange(B, device=x.device).repeat_interleave(M)  # image of each (b, m)
    keeps, owners = [], []
    for p in cfg.percent:
        keeps.append(~top_percent_mask(flat_maps, p))
        owners.append(owner_bm)
    S = cfg.steps
    if S > 1:  # the inner steps; the ends are the image itself and the fill alone, the same for every mode
        ranks = pixel_ranks(flat_maps)  # [B*M, H, W]
        counts = [round(s / S * H * W) for s in range(1, S)]
        deletion = torch.stack([ranks >= n for n in counts], dim=1)  # keep the pixels not yet removed
        insertion = torch.stack([ranks < n for n in counts], dim=1)  # keep the pixels revealed so far
        keeps += [deletion.reshape(-1, H, W), insertion.reshape(-1, H, W)]
        owners += [owner_bm.repeat_interleave(S - 1)] * 2
    probs = _variants(model, x, fill, torch.cat(keeps), torch.cat(owners), cfg.batch_size)  # [J, C]
    c = targets.repeat_interleave(M)
    d = refs.repeat_interleave(M)
    base = p0[owner_bm]
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for p in cfg.percent:
        after = probs[offset:offset + B * M]
        offset += B * M
        out[f"rd@{_pct(p)}"] = relative_drop(base, after, c, d).view(B, M)
        out[f"drop@{_pct(p)}"] = (base.gather(1, c.view(-1, 1)) - after.gather(1, c.view(-1, 1))).view(B, M)
    if S > 0:
        # the fill alone: one forward for the mean fill (the same zero image for all), else one per image
        p_fill = (_probabilities(model, fill[:1], 1).expand(B, -1) if cfg.fill == "mean"
                  else _probabilities(model, fill, cfg.batch_size))
        whole = base.gather(1, c.view(-1, 1)).view(B, M, 1)
        empty = p_fill[owner_bm].gather(1, c.view(-1, 1)).view(B, M, 1)
        n = B * M * (S - 1)
        tgt = c.repeat_interleave(S - 1).view(-1, 1)
        for name, first, last in (("deletion", whole, empty), ("insertion", empty, whole)):
            inner = probs[offset:offset + n].gather(1, tgt).view(B, M, S - 1)
            out[name] = torch.cat([first, inner, last], dim=2)
            offset += n
    return out


# ------------------------------------------------------------------------------------------------ the run

def _load_model(cfg: EvaluateConfig, run_info: dict, device):
    return load_run_model(run_info, cfg.cam_dir, device, cfg.model_path, cfg.classifier_path, cfg.arch)


def load_run_model(run_info: dict, cam_dir: str | Path, device, model_path: str | None = None,
                   classifier_path: str | None = None, arch: str | None = None):
    """The classifier of a run as its run.json records it (backbone and head files, architecture, kind and
    pool), each file replaceable by the flag of the same name when it moved."""
    backbone = run_info.get("backbone") or {}
    head = run_info.get("head") or {}
    model_path = model_path or backbone.get("path")
    head_path = classifier_path or head.get("path")
    if not model_path or not head_path:
        raise FinerCamError(f"--cam_dir {cam_dir}: run.json names no backbone or head; pass --model_path "
                            "and --classifier_path")
    for flag, path in (("--model_path", model_path), ("--classifier_path", head_path)):
        if not Path(path).is_file():
            raise FinerCamError(f"{flag} {path}: no such file (recorded in run.json; pass {flag} if it moved)")
    return load_classifier(model_path, head_path, arch or backbone.get("arch", "auto"), device,
                           backbone.get("kind", "dinov2"), backbone.get("pool", "cls"))


def run_preprocess(run_info: dict, patch: int) -> Preprocess:
    """The preprocessing run.json records (input size, normalisation) for a backbone of patch ``patch``."""
    pre = run_info.get("preprocessing") or {}
    try:
        return Preprocess(tuple(pre["mean"]), tuple(pre["std"]), image_size=pre.get("image_size"),
                          max_size=pre.get("max_size"), patch=patch)
    except (KeyError, TypeError):
        raise FinerCamError(f"--cam_dir: run.json has no usable preprocessing ({pre})") from None


def run_evaluate(cfg: EvaluateConfig, progress: BarFactory | None = None,
                 stop: StopRequest | None = None) -> EvaluateResult:
    """Evaluate the maps of ``cfg.cam_dir`` and write the tables and figures into ``cfg.out``."""
    stop = stop or StopRequest()
    check_folder(cfg.out, "out")
    run_info, entries = read_run(cfg.cam_dir)
    if run_info.get("concepts"):
        raise FinerCamError(f"--cam_dir {cfg.cam_dir}: a concept run (--concepts); evaluate.py measures the maps "
                            "of a classifier's classes and does not take concept maps")
    root = dataset_root(run_info, cfg.dataset_dir, cfg.cam_dir)
    claim_output(cfg.out, "out", root=root, image_folders={(root / e["image"]).parent for e in entries.values()},
                 writes=OUTPUT_FILES)
    device = resolve_device(cfg.device)
    ranks = init_ranks(device.type)
    if ranks.world > 1 and device.type == "cuda":
        device = torch.device(f"cuda:{ranks.local_rank}")
    cfg = replace(cfg, num_workers=loader_workers(cfg.num_workers, device))  # auto: what the machine has
    model = _load_model(cfg, run_info, device)
    modes = [m["name"] for m in run_info["modes"]]
    class_names = run_info["class_names"]
    if model.num_classes != len(class_names):
        raise FinerCamError(f"--classifier_path: the head has {model.num_classes} classes, run.json lists "
                            f"{len(class_names)}")
    similarity = run_info.get("similarity", "logit-distance")
    class_sim = weight_cosine(model.head.weight) if similarity == "weight-cosine" else None
    preprocess = run_preprocess(run_info, model.patch_size)
    truth = GroundTruth(cfg.masks, cfg.boxes, cfg.mask_format, cfg.attributes, class_names, cfg.parts,
                        cfg.part_radius, cfg.max_pixels)
    chosen = [entries[k] for k in sorted(entries) if "error" not in entries[k]]
    chosen = chosen[:cfg.limit] if cfg.limit else chosen
    if not chosen:
        raise FinerCamError(f"--cam_dir {cfg.cam_dir}: index.jsonl lists no explained images")
    names = metric_names(cfg, truth.regions)
    swaps = None
    if cfg.swaps:
        from .swaps import read_swaps

        if truth.legend is None:
            raise FinerCamError(f"--swaps {cfg.swaps}: needs --masks with a label map (labels.json) naming the parts")
        swaps = read_swaps(cfg.swaps)
        regions = truth.legend["regions"]
        unknown = sorted({p for parts in swaps.values() for p in parts} - set(regions))
        if unknown:
            raise FinerCamError(f"--swaps {cfg.swaps}: part {unknown[0]!r} is not a region of the masks' labels.json "
                                f"({', '.join(regions)})")
    result = EvaluateResult(summary={}, rows=[], metrics=names, main=ranks.is_main)
    curves: dict[str, list[np.ndarray]] = {"deletion": [], "insertion": []}
    mine = ranks.shard(chosen)  # torchrun: each rank evaluates its share; rank 0 gathers and writes
    dataset = ImageDataset([inside(root, e["image"], "index.jsonl: image", follow_links=True) for e in mine],
                           preprocess, cfg.max_pixels)
    loader = make_loader(dataset, cfg.batch_size, cfg.num_workers, pin_memory=device.type == "cuda")
    with open_bar(progress if ranks.is_main else None, "evaluate", len(mine)) as bar:
        for batch in loader:
            ready = _readable(batch, mine, root, cfg.cam_dir, len(class_names), len(modes), truth, result)
            for group in _by_shape(ready, len(modes), _variants_per_mode(cfg)):
                _evaluate(group, model, cfg, similarity, class_sim, truth, modes, device, result, curves,
                          run_info["modes"], swaps, class_names)
            bar.update(len(batch))
            stop.check()
    if ranks.world > 1:
        curves = _gather(ranks, result, curves, chosen, modes)
        if not ranks.is_main:
            return result
    for mode in modes:
        rows = [r for r in result.rows if r["mode"] == mode]
        result.summary[mode] = {name: _summary(rows, name) for name in names}
    result.images = len({r["image"] for r in result.rows})
    _write_outputs(cfg, run_info, result, curves, modes)
    return result


def _readable(batch: list[dict], entries: list[dict], root: Path, cam_dir: str, n_classes: int, n_modes: int,
              truth: GroundTruth, result: EvaluateResult) -> list[tuple]:
    """The items of a loader batch with their index entry, maps and ground truth; an item whose image, maps or
    mask cannot be read, or whose index line names no class of the run as its target, is logged, counted in
    ``result.failed`` and left out."""
    ready = []
    for item in batch:
        entry = entries[item["index"]]
        try:
            if item["error"] is not None:
                raise SkippedFile(root / entry["image"], item["error"])
            target = entry.get("target")
            if not isinstance(target, int) or isinstance(target, bool) or not 0 <= target < n_classes:
                raise SkippedFile(Path(cam_dir) / INDEX_FILE, f"{entry['image']}: target {target!r} is not a class "
                                  f"index of the run (0 to {n_classes - 1})")
            try:
                map_path = inside(cam_dir, entry_map(entry), "index.jsonl: map")
            except FinerCamError as exc:
                raise SkippedFile(Path(cam_dir) / INDEX_FILE, str(exc)) from None
            maps = read_map_file(map_path, (n_modes,))
            truth_here = truth(entry["image"], tuple(item["size"])) if truth.regions else None
            ready.append((item, entry, maps, truth_here))
        except SkippedFile as exc:
            result.failed += 1
            log.error("%s: %s (skipped)", exc.path, exc)
    return ready


def _gather(ranks, result: EvaluateResult, curves: dict, chosen: list[dict], modes: list[str]) -> dict:
    """torchrun: every rank's rows, curves and failures on rank 0, in the single-process order; the curves."""
    parts = ranks.gather((result.rows, curves, result.failed))
    shutdown(ranks)
    if not ranks.is_main:
        return curves
    order = {e["image"]: i for i, e in enumerate(chosen)}
    result.rows = sorted((r for rows, _, _ in parts for r in rows),
                         key=lambda r: (order[r["image"]], modes.index(r["mode"])))
    result.failed = sum(f for _, _, f in parts)
    return {k: [c for _, part, _ in parts for c in part[k]] for k in curves}


def _summary(rows: list[dict], name: str) -> dict:
    """The mean of metric ``name`` over ``rows`` with its 95% interval and the count it is over."""
    mean, half, n = mean_ci(np.array([r.get(name, np.nan) for r in rows], dtype=np.float64))
    return {"mean": mean, "ci95": half, "n": n}


def _variants_per_mode(cfg: EvaluateConfig) -> int:
    """At most how many masked copies of an image one mode needs: one per k, and the two curves' steps."""
    return len(cfg.percent) + (2 * (cfg.steps + 1) if cfg.steps > 0 else 0)


def _by_shape(ready: list, n_modes: int, variants_per_mode: int) -> list[list]:
    """Groups of same-shaped images small enough that their masked variants fit :data:`VARIANT_BUDGET`."""
    groups: dict[tuple, list] = {}
    for r in ready:
        groups.setdefault(tuple(r[0]["image"].shape), []).append(r)
    out = []
    for shape, items in groups.items():
        per_image = n_modes * shape[1] * shape[2] * max(1, variants_per_mode)
        size = max(1, VARIANT_BUDGET // per_image)
        out += [items[i:i + size] for i in range(0, len(items), size)]
    return out


def _difference_regions(truth: GroundTruth, labels: np.ndarray, target: int, rank1: int, entry: dict,
                        run_modes: list[dict]) -> np.ndarray:
    """Per mode, where the target differs from the mode's reference classes (index.jsonl's ``references``;
    for a mode without any, or with alpha 0, the rank-1 class): ``bool [M, H, W]``, all False where no
    region differs (the metric is then left out)."""
    out = np.zeros((len(run_modes), *labels.shape), bool)
    listed = entry.get("references") or {}
    for m, mode in enumerate(run_modes):
        refs = listed.get(mode["name"]) if isinstance(listed, dict) else None
        if not refs or not mode.get("alpha"):
            refs = [rank1]
        region = truth.difference(labels, target, [int(r) for r in refs])
        if region is not None:
            out[m] = region
    return out


def _evaluate(group, model, cfg, similarity, class_sim, truth: GroundTruth, modes, device, result, curves,
              run_modes: list[dict], swaps: dict | None = None, class_names: list[str] | None = None) -> None:
    x = torch.stack([item["image"] for item, _, _, _ in group]).to(device)
    H, W = x.shape[-2:]
    raw = [torch.from_numpy(maps.astype(np.float32)) for _, _, maps, _ in group]
    maps = torch.stack([normalize_maps(resize_maps(m, (H, W))) for m in raw]).to(device)  # [B, M, H, W]
    targets = torch.tensor([int(e["target"]) for _, e, _, _ in group], device=device)
    with torch.no_grad():
        logits = model(x)
    refs = rank_references(logits, targets, 1, similarity, class_sim)[:, 0]
    out = evaluate_group(model, x, maps, targets, refs, cfg)
    probs = torch.softmax(logits, dim=1)
    for b, (item, entry, _, found) in enumerate(group):
        if truth.regions and found is None:
            log.warning("%s: no ground truth for this image; its localisation is left out", entry["image"])
        local = {}
        if found:
            regions, labels = found
            fitted = normalize_maps(resize_maps(raw[b], next(iter(regions.values())).shape))
            if truth.looks is not None:
                regions = {**regions, "difference": _difference_regions(truth, labels, int(targets[b]), int(refs[b]),
                                                                        entry, run_modes)}
            for name, region in regions.items():
                if region is None:
                    continue
                r = torch.from_numpy(np.broadcast_to(region, (len(modes), *region.shape[-2:])).copy())
                hit = pointing_hit(fitted, r).float()
                energy = energy_inside(fitted, r)
                if name == "difference":  # left out where the target differs from no reference in any region
                    known = r.flatten(1).any(1)
                    energy, hit = torch.where(known, energy, torch.nan), torch.where(known, hit, torch.nan)
                local[f"energy_{name}"] = energy.tolist()
                local[f"pointing_{name}"] = hit.tolist()
            if swaps is not None and labels is not None:
                key = (entry["image"], class_names[int(targets[b])], class_names[int(refs[b])])
                agreed = swap_agreement(fitted.cpu().numpy(), labels, truth.legend["regions"], swaps.get(key))
                for name in SWAP_METRICS:
                    local[name] = [a[name] for a in agreed]
        for m, mode in enumerate(modes):
            row = {"image": entry["image"], "mode": mode, "target": int(targets[b]), "reference": int(refs[b]),
                   "p_target": float(probs[b, targets[b]]), "p_reference": float(probs[b, refs[b]])}
            for name, values in out.items():
                if values.ndim == 2:
                    row[name] = float(values[b, m])
            if cfg.steps > 0:
                row["deletion_auc"] = float(curve_auc(out["deletion"][b, m:m + 1].cpu().numpy())[0])
                row["insertion_auc"] = float(curve_auc(out["insertion"][b, m:m + 1].cpu().numpy())[0])
            for name, values in local.items():
                row[name] = values[m]
            result.rows.append(row)
    if cfg.steps > 0:
        curves["deletion"].append(out["deletion"].cpu().numpy())
        curves["insertion"].append(out["insertion"].cpu().numpy())


# ---------------------------------------------------------------------------------------------- outputs

def format_table(result: EvaluateResult) -> str:
    """The summary as a Markdown table: one row per mode, ``mean ± ci95`` per metric, and the count."""
    header = ["mode", *result.metrics, "images"]  # a metric measured on fewer images says on how many
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    for mode, metrics in result.summary.items():
        cells = [mode]
        most = max((metrics[n]["n"] for n in result.metrics), default=0)
        for name in result.metrics:
            s = metrics[name]
            cell = ("n/a" if s["n"] == 0 else f"{s['mean']:.3f} ± {s['ci95']:.3f}" if np.isfinite(s["ci95"])
                    else f"{s['mean']:.3f}")
            cells.append(cell + (f" (n={s['n']})" if 0 < s["n"] < most else ""))
        cells.append(str(most))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue().encode("utf-8")))


def _write_outputs(cfg: EvaluateConfig, run_info: dict, result: EvaluateResult, curves, modes: list[str]) -> None:
    out = Path(cfg.out)
    lock = FolderLock(out, "out")  # also marks the figures as outputs, never read as images
    try:
        _write_tables(out, cfg, run_info, result, curves, modes)
    finally:
        lock.release()


def _write_tables(out: Path, cfg: EvaluateConfig, run_info: dict, result: EvaluateResult, curves,
                  modes: list[str]) -> None:
    base = ["image", "mode", "target", "reference", "p_target", "p_reference"]
    _write_csv(out / "per_image.csv", base + result.metrics, result.rows)
    summary_rows = []
    for mode, metrics in result.summary.items():
        for name, s in metrics.items():
            summary_rows.append({"mode": mode, "metric": name, "mean": s["mean"], "ci95": s["ci95"], "n": s["n"]})
    _write_csv(out / "summary.csv", ["mode", "metric", "mean", "ci95", "n"], summary_rows)
    settings = {k: getattr(cfg, k) for k in ("cam_dir", "percent", "fill", "steps", "masks", "boxes", "parts",
                                             "part_radius", "limit", "attributes", "swaps")}
    settings["mask_format"] = resolve_mask_format(cfg.masks, cfg.mask_format)
    write_json(out / "summary.json", {
        "settings": settings, "modes": result.summary, "images": result.images, "failed": result.failed,
        "similarity": run_info.get("similarity"), "method": run_info.get("method"),
        "mean_curves": {k: dict(zip(modes, np.concatenate(v).mean(0).round(6).tolist())) for k, v in curves.items() if v},
    })
    atomic_write_bytes(out / "summary.md", lambda f: f.write((format_table(result) + "\n").encode("utf-8")))
    _figures(out, result, curves, modes, cfg)


def _figures(out: Path, result: EvaluateResult, curves, modes: list[str], cfg: EvaluateConfig) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def save(fig, name):
        buf = io.BytesIO()
        FigureCanvasAgg(fig)
        fig.savefig(buf, format="png")
        atomic_write_bytes(out / name, lambda f: f.write(buf.getvalue()))

    if cfg.steps > 0 and curves["deletion"]:
        fig = Figure(figsize=(9, 3.6), dpi=120, layout="constrained")
        axes = fig.subplots(1, 2)
        xs = np.linspace(0, 100, cfg.steps + 1)
        for ax, kind in zip(axes, ("deletion", "insertion")):
            mean = np.concatenate(curves[kind]).mean(0)  # [M, S + 1]
            for m, mode in enumerate(modes):
                area = result.summary[mode][f"{kind}_auc"]["mean"]
                ax.plot(xs, mean[m], label=f"{mode} (AUC {area:.3f})")
            ax.set_xlabel(f"% of pixels {'removed' if kind == 'deletion' else 'revealed'}, most highlighted first")
            ax.set_ylabel("target probability")
            ax.set_title(kind)
            ax.legend(fontsize=8)
        save(fig, "curves.png")
    fig = Figure(figsize=(1.6 + 1.4 * len(cfg.percent) * len(modes) / 2, 3.4), dpi=120, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(modes)
    for m, mode in enumerate(modes):
        means = [result.summary[mode][f"rd@{_pct(p)}"]["mean"] for p in cfg.percent]
        errs = [result.summary[mode][f"rd@{_pct(p)}"]["ci95"] for p in cfg.percent]
        ax.bar(np.arange(len(cfg.percent)) + m * width, means, width, yerr=np.nan_to_num(errs), label=mode, capsize=3)
    ax.set_xticks(np.arange(len(cfg.percent)) + width * (len(modes) - 1) / 2, [f"RD@{_pct(p)}%" for p in cfg.percent])
    ax.set_ylabel("relative confidence drop")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.legend(fontsize=8)
    save(fig, "rd_bars.png")
