"""The work of evaluate.py: the paper's numbers for every mode of a generate_cam.py run.

Per image and mode, from the saved maps and the same classifier and preprocessing as the run:

- RD@k, the relative confidence drop: ``(p_c - p*_c) - (p_d - p*_d)``, p before and p* after masking the
  top k% of the map's pixels at the network input; c the target, d its most similar class (rank 1 of the
  ranking generate_cam.py recorded in index.jsonl); and the plain drop ``p_c - p*_c``;
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

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import checks
from .cam import normalize_maps, resize_maps
from .data import ImageDataset, Preprocess, make_loader
from .device import loader_workers, resolve_device
from .distributed import init_ranks, shutdown
from .errors import ArgumentError, FinerCamError
from .ground_truth import MASK_FORMATS, SWAP_METRICS, GroundTruth, swap_agreement
from .metrics import curve_auc, energy_inside, mean_ci, pointing_hit
from .models import load_classifier
from .records import BackboneRecord, HeadFileRecord, MapLayout, RunRecord
from .perturbations import FILLS, evaluate_group, pct
from .progress import BarFactory, StopRequest, open_bar
from .report import OUTPUT_FILES, write_outputs
from .settings import (CAM_DIR, DEVICE, MAX_PIXELS, NUM_WORKERS, PART_RADIUS, RUN_ARCH, RUN_CLASSIFIER_PATH,
                       RUN_DATASET_DIR, RUN_MODEL_PATH, check_settings, setting)
from .runstore import INDEX_FILE, SkippedFile, dataset_root, entry_map, read_map_file, read_run
from .targets import Mode, rank_references, weight_cosine
from .userfiles import check_folder, claim_output, inside

log = logging.getLogger("finer_cam")
VARIANT_BUDGET = 64 * 2**20  # mask elements (bytes of bool) built at once for one group of images


def _percentages(field: str, value) -> None:
    """``--percent``: one or more distinct percentages, each between 0 and 100."""
    if not value or any(not 0 < p < 100 for p in value):
        raise ArgumentError(field, " ".join(map(str, value)), "each must be between 0 and 100 (exclusive)")
    if len({pct(p) for p in value}) != len(value):
        raise ArgumentError(field, " ".join(map(pct, value)), "a percentage is given twice")


@dataclass
class EvaluateConfig:
    """What evaluate.py runs: each field is its flag of the same name (:mod:`finer_cam.settings`)."""

    cam_dir: str = CAM_DIR.field(
        help="a generate_cam.py output folder; its run.json gives the dataset, model and preprocessing")
    out: str = setting(help="folder for the tables and figures")
    dataset_dir: str | None = RUN_DATASET_DIR.field()
    model_path: str | None = RUN_MODEL_PATH.field()
    classifier_path: str | None = RUN_CLASSIFIER_PATH.field()
    arch: str | None = RUN_ARCH.field()
    percent: list[float] = setting([5.0, 10.0], metavar="K", check=_percentages,
                                   help="RD@k and drop@k for these percentages of pixels")
    fill: str = setting(
        "mean", choices=FILLS,
        help="what masked pixels become: 0 after normalisation (the data set mean) or a blurred copy")
    steps: int = setting(20, check=checks.AtLeast(0, "0 (no curves) or more"),
                         help="steps of the deletion/insertion curves (0: no curves)")
    masks: str | None = setting(
        None, metavar="DIR",
        help="ground-truth masks: DIR/<image path, its extension replaced by .png> (a.jpg and a.png share one "
             "mask), encoded as --mask_format says")
    boxes: str | None = setting(
        None, metavar="CSV",
        help="instead of --masks: ground-truth boxes, a CSV with columns image,x1,y1,x2,y2 in original image pixels")
    mask_format: str = setting(
        "auto", choices=MASK_FORMATS,
        help="binary: the object where the pixel is >= 128; levels: 0 background, 128 object, 255 part; labels: a "
             "label map named by DIR/labels.json ({\"background\": 0, \"regions\": {name: value}, \"parts\": "
             "[names]}); auto: labels when DIR/labels.json exists, else binary")
    attributes: str | None = setting(
        None, metavar="JSON",
        help="each class's look of each region, {\"classes\": {class name: {region: look}}}, with label-map masks: "
             "adds energy_difference and pointing_difference, the map inside the regions where the target looks "
             "different from the mode's reference classes")
    swaps: str | None = setting(  # CSV of swap effects (finer_cam.swaps): the counterfactual agreement
        None, metavar="CSV",
        help="swap effects, a CSV image,target,reference,part,margin,swapped_margin,token_swapped_margin (python -m "
             "finer_cam.toy swaps writes the toy's), with label-map masks: adds swap_rank and swap_top (token_rank, "
             "token_top), how the map's density per part follows the effects")
    parts: str | None = setting(  # CSV image,part,x,y: visible part locations (prepare_dataset.py cub)
        None, metavar="CSV",
        help="part locations for a part-level pointing game: a CSV with columns image,part,x,y in original image "
             "pixels (prepare_dataset.py cub writes the visible ones as parts.csv)")
    part_radius: float = PART_RADIUS.field(  # of the image's shorter side
        help="a part covers the disc of this radius around its location, as a fraction of the image's shorter side")
    limit: int | None = setting(None, check=checks.AtLeast(1, optional=True),
                                help="only the first N images (in path order)")
    max_pixels: int | None = MAX_PIXELS.field()
    batch_size: int = setting(64, check=checks.AtLeast(1), help="images (masked variants) per forward pass")
    num_workers: int | str = NUM_WORKERS.field()  # device.loader_workers
    device: str = DEVICE.field()

    def __post_init__(self) -> None:
        """Every field's value is checked here, once: each against its setting, then the settings that go
        together."""
        check_settings(self)
        checks.exclusive(("masks", self.masks), ("boxes", self.boxes))
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

def metric_names(cfg: EvaluateConfig, localisation: list[str]) -> list[str]:
    names = [f"rd@{pct(p)}" for p in cfg.percent] + [f"drop@{pct(p)}" for p in cfg.percent]
    if cfg.steps > 0:
        names += ["deletion_auc", "insertion_auc"]
    for region in localisation:
        names += [f"energy_{region}", f"pointing_{region}"]
    if cfg.swaps:
        names += list(SWAP_METRICS)
    return names



# ------------------------------------------------------------------------------------------------ the run

def _load_model(cfg: EvaluateConfig, run: RunRecord, device):
    return load_run_model(run, cfg.cam_dir, device, cfg.model_path, cfg.classifier_path, cfg.arch)


def load_run_model(run: RunRecord, cam_dir: str | Path, device, model_path: str | None = None,
                   classifier_path: str | None = None, arch: str | None = None):
    """The classifier of a run as its run.json records it (backbone and head files, architecture, kind and
    pool), each file replaceable by the flag of the same name when it moved."""
    backbone = run.backbone or BackboneRecord()
    head = run.head or HeadFileRecord()
    model_path = model_path or backbone.path
    head_path = classifier_path or head.path
    if not model_path or not head_path:
        raise FinerCamError(f"--cam_dir {cam_dir}: run.json names no backbone or head; pass --model_path "
                            "and --classifier_path")
    for flag, path in (("--model_path", model_path), ("--classifier_path", head_path)):
        if not Path(path).is_file():
            raise FinerCamError(f"{flag} {path}: no such file (recorded in run.json; pass {flag} if it moved)")
    # a run.json without a kind, or without an architecture's name, is from before they were recorded: a
    # DINOv2 backbone whose architecture is read off its checkpoint
    return load_classifier(model_path, head_path, arch or backbone.arch or "auto", device, backbone.kind or "dinov2",
                           backbone.pool or "cls")


def run_preprocess(run: RunRecord, patch: int) -> Preprocess:
    """The preprocessing run.json records (input size, normalisation) for a backbone of patch ``patch``."""
    if run.preprocessing is None:
        raise FinerCamError("--cam_dir: run.json records no preprocessing")
    return run.preprocessing.preprocess(patch)


def run_evaluate(cfg: EvaluateConfig, progress: BarFactory | None = None,
                 stop: StopRequest | None = None) -> EvaluateResult:
    """Evaluate the maps of ``cfg.cam_dir`` and write the tables and figures into ``cfg.out``."""
    stop = stop or StopRequest()
    check_folder(cfg.out, "out")
    run, entries = read_run(cfg.cam_dir)
    layout = run.layout
    if not layout.class_per_image:
        raise FinerCamError(f"--cam_dir {cfg.cam_dir}: a concept run (--concepts); evaluate.py measures the maps "
                            "of a classifier's classes and does not take concept maps")
    root = dataset_root(run, cfg.dataset_dir, cfg.cam_dir)
    claim_output(cfg.out, "out", root=root, image_folders={(root / e["image"]).parent for e in entries.values()},
                 writes=OUTPUT_FILES)
    device = resolve_device(cfg.device)
    ranks = init_ranks(device.type)
    if ranks.world > 1 and device.type == "cuda":
        device = torch.device(f"cuda:{ranks.local_rank}")
    cfg = replace(cfg, num_workers=loader_workers(cfg.num_workers, device))  # auto: what the machine has
    model = _load_model(cfg, run, device)
    modes = [m.name for m in run.modes]
    class_names = list(run.class_names)
    if model.num_classes != len(class_names):
        raise FinerCamError(f"--classifier_path: the head has {model.num_classes} classes, run.json lists "
                            f"{len(class_names)}")
    # the ranking of the index lines that do not record the one generate_cam.py made (see _recorded_reference);
    # a run.json without a similarity is from before it was a choice: logit distance
    similarity = run.similarity or "logit-distance"
    class_sim = weight_cosine(model.head.weight) if similarity == "weight-cosine" else None
    preprocess = run_preprocess(run, model.patch_size)
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
            ready = _readable(batch, mine, root, cfg.cam_dir, len(class_names), layout, truth, result)
            for group in _by_shape(ready, len(modes), _variants_per_mode(cfg)):
                _evaluate(group, model, cfg, similarity, class_sim, truth, modes, device, result, curves,
                          run.modes, swaps, class_names)
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
    write_outputs(cfg, run, result, curves, modes)
    return result


@dataclass
class _Ready:
    """An image of a loader batch with what evaluating it takes."""

    item: dict  # the loader's: the image [3, H, W], its size
    entry: dict  # its index line
    maps: np.ndarray  # [M, h, w]
    truth: tuple | None  # (regions, labels) of its ground truth, when there is some
    reference: int | None  # the rank-1 reference generate_cam.py recorded (None: to be ranked here)


def _is_class(value, n_classes: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_classes


def _recorded_reference(entry: dict, n_classes: int, index: Path) -> int | None:
    """The rank-1 reference class generate_cam.py chose for an image: the first of its index line's
    ``ranking`` (the classes it ranked, most similar first). None for a line written before index lines
    recorded the ranking, or by a run whose modes compared with no class (an empty ranking): only for those is
    the reference ranked again here, from the logits of the image as evaluate.py computes them."""
    ranking = entry.get("ranking")
    if ranking is None or ranking == []:
        return None
    if not isinstance(ranking, list) or not all(_is_class(r, n_classes) for r in ranking):
        raise SkippedFile(index, f"{entry['image']}: ranking {ranking!r} is not a list of class indices of the run "
                          f"(0 to {n_classes - 1})")
    return ranking[0]


def _readable(batch: list[dict], entries: list[dict], root: Path, cam_dir: str, n_classes: int, layout: MapLayout,
              truth: GroundTruth, result: EvaluateResult) -> list[_Ready]:
    """The items of a loader batch with their index entry, maps and ground truth; an item whose image, maps or
    mask cannot be read, or whose index line names no class of the run as its target (or in its ranking), is
    logged, counted in ``result.failed`` and left out."""
    ready = []
    index = Path(cam_dir) / INDEX_FILE
    for item in batch:
        entry = entries[item["index"]]
        try:
            if item["error"] is not None:
                raise SkippedFile(root / entry["image"], item["error"])
            target = entry.get("target")
            if not _is_class(target, n_classes):
                raise SkippedFile(index, f"{entry['image']}: target {target!r} is not a class "
                                  f"index of the run (0 to {n_classes - 1})")
            reference = _recorded_reference(entry, n_classes, index)
            try:
                map_path = inside(cam_dir, entry_map(entry), "index.jsonl: map")
            except FinerCamError as exc:
                raise SkippedFile(index, str(exc)) from None
            maps = read_map_file(map_path, layout)
            truth_here = truth(entry["image"], tuple(item["size"])) if truth.regions else None
            ready.append(_Ready(item, entry, maps, truth_here, reference))
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


def _by_shape(ready: list[_Ready], n_modes: int, variants_per_mode: int) -> list[list[_Ready]]:
    """Groups of same-shaped images small enough that their masked variants fit :data:`VARIANT_BUDGET`."""
    groups: dict[tuple, list[_Ready]] = {}
    for r in ready:
        groups.setdefault(tuple(r.item["image"].shape), []).append(r)
    out = []
    for shape, items in groups.items():
        per_image = n_modes * shape[1] * shape[2] * max(1, variants_per_mode)
        size = max(1, VARIANT_BUDGET // per_image)
        out += [items[i:i + size] for i in range(0, len(items), size)]
    return out


def _difference_regions(truth: GroundTruth, labels: np.ndarray, target: int, rank1: int, entry: dict,
                        run_modes: tuple[Mode, ...]) -> np.ndarray:
    """Per mode, where the target differs from the mode's reference classes (index.jsonl's ``references``;
    for a mode without any, or with alpha 0, the rank-1 class): ``bool [M, H, W]``, all False where no
    region differs (the metric is then left out)."""
    out = np.zeros((len(run_modes), *labels.shape), bool)
    listed = entry.get("references") or {}
    for m, mode in enumerate(run_modes):
        refs = listed.get(mode.name) if isinstance(listed, dict) else None
        if not refs or not mode.alpha:
            refs = [rank1]
        region = truth.difference(labels, target, [int(r) for r in refs])
        if region is not None:
            out[m] = region
    return out


def _evaluate(group: list[_Ready], model, cfg, similarity, class_sim, truth: GroundTruth, modes, device, result,
              curves, run_modes: tuple[Mode, ...], swaps: dict | None = None,
              class_names: list[str] | None = None) -> None:
    x = torch.stack([r.item["image"] for r in group]).to(device)
    H, W = x.shape[-2:]
    raw = [torch.from_numpy(r.maps.astype(np.float32)) for r in group]
    maps = torch.stack([normalize_maps(resize_maps(m, (H, W))) for m in raw]).to(device)  # [B, M, H, W]
    targets = torch.tensor([int(r.entry["target"]) for r in group], device=device)
    with torch.no_grad():
        logits = model(x)
    chosen = [r.reference for r in group]
    if any(c is None for c in chosen):  # lines that record no ranking (see _recorded_reference): rank them here
        ranked = rank_references(logits, targets, 1, similarity, class_sim)[:, 0].tolist()
        chosen = [ranked[b] if c is None else c for b, c in enumerate(chosen)]
    refs = torch.tensor(chosen, dtype=torch.long, device=device)
    out = evaluate_group(model, x, maps, targets, refs, cfg)
    probs = torch.softmax(logits, dim=1)
    for b, ready in enumerate(group):
        entry, found = ready.entry, ready.truth
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
