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
  pointing game.

Masked pixels take the fill: 0 after normalisation (the data set mean) or a heavily blurred copy. The masked
variants of a batch of images, for all modes, all k and all curve steps, go through the model together.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cam import normalize_maps, resize_maps
from .data import MAX_PIXELS, ImageDataset, Preprocess, check_runtime, make_loader
from .device import resolve_device
from .distributed import init_ranks, shutdown
from .errors import FinerCamError
from .io import (FolderLock, SkippedFile, atomic_write_bytes, check_folder, dataset_root, read_map_file, read_run,
                 read_text, safe_relative, write_json)
from .metrics import (blurred, compose, curve_auc, energy_inside, mean_ci, pixel_ranks, pointing_hit,
                      relative_drop, top_percent_mask)
from .models import load_classifier
from .progress import BarFactory, StopRequest, open_bar
from .targets import rank_references, weight_cosine

log = logging.getLogger("finer_cam")
FILLS = ("mean", "blur")
VARIANT_BUDGET = 64 * 2**20  # mask elements (bytes of bool) built at once for one group of images


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
    batch_size: int = 64
    num_workers: int = 2
    device: str = "auto"
    limit: int | None = None
    max_pixels: int | None = MAX_PIXELS


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


def metric_names(cfg: EvaluateConfig, localisation: list[str]) -> list[str]:
    names = [f"rd@{_pct(p)}" for p in cfg.percent] + [f"drop@{_pct(p)}" for p in cfg.percent]
    if cfg.steps > 0:
        names += ["deletion_auc", "insertion_auc"]
    for region in localisation:
        names += [f"energy_{region}", f"pointing_{region}"]
    return names


# ------------------------------------------------------------------------------------------- ground truth

class GroundTruth:
    """Regions by image: mask files (``DIR/<relative path>.png``; 0 background, values >= 128 the object and
    255 the part in the toy data's encoding, any non-zero pixel otherwise) or a CSV of boxes
    (``image,x1,y1,x2,y2`` in pixels of the original image; several rows of an image are joined)."""

    def __init__(self, masks: str | None, boxes: str | None, parts: str | None = None,
                 part_radius: float = 0.1) -> None:
        self.masks = Path(masks) if masks else None
        if self.masks is not None and not self.masks.is_dir():
            raise FinerCamError(f"--masks {masks}: no such folder")
        self.boxes: dict[str, list[tuple[float, float, float, float]]] = {}
        if boxes:
            self.boxes = _read_boxes(Path(boxes))
        self.regions = []
        if self.masks is not None:
            self.regions = ["part", "object"]
        elif boxes:
            self.regions = ["box"]
        self.parts: dict[str, list[tuple[float, float]]] = _read_parts(Path(parts)) if parts else {}
        self.part_radius = part_radius
        if parts:
            self.regions.append("parts")

    def __call__(self, rel: str, size: tuple[int, int]) -> dict[str, np.ndarray] | None:
        """Boolean regions ``[H, W]`` for image ``rel`` of ``size = (W, H)``, or None when it has none."""
        found = self._regions(rel, size) or {}
        if rel in self.parts:
            found["parts"] = part_discs(self.parts[rel], size, self.part_radius * min(size))
        return found or None

    def _regions(self, rel: str, size: tuple[int, int]) -> dict[str, np.ndarray] | None:
        if self.masks is not None:
            path = self.masks / Path(rel).with_suffix(".png")
            if not path.is_file():
                return None
            values = np.asarray(Image.open(path).convert("L"))
            if values.shape != (size[1], size[0]):
                values = np.asarray(Image.fromarray(values).resize(size, Image.NEAREST))
            levels = set(np.unique(values).tolist())
            if 128 in levels and levels <= {0, 128, 255}:  # the toy encoding: object and part
                return {"part": values == 255, "object": values >= 128}
            return {"part": values > 0, "object": values > 0}
        if rel in self.boxes:
            region = np.zeros((size[1], size[0]), bool)
            for x1, y1, x2, y2 in self.boxes[rel]:
                region[max(0, int(y1)):max(0, int(np.ceil(y2))), max(0, int(x1)):max(0, int(np.ceil(x2)))] = True
            return {"box": region}
        return None


def part_discs(points: list[tuple[float, float]], size: tuple[int, int], radius: float) -> np.ndarray:
    """The pixels (``[H, W]`` bool, ``size = (W, H)``) within ``radius`` of any of the ``(x, y)`` points (pixel
    centres at +0.5)."""
    ys, xs = np.mgrid[0:size[1], 0:size[0]] + 0.5
    region = np.zeros((size[1], size[0]), bool)
    for x, y in points:
        region |= (xs - x) ** 2 + (ys - y) ** 2 <= radius ** 2
    return region


def _read_parts(path: Path) -> dict[str, list[tuple[float, float]]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise FinerCamError(f"--parts {path}: cannot read ({exc})") from None
    parts: dict[str, list] = {}
    for i, row in enumerate(rows, start=2):
        try:
            parts.setdefault(row["image"], []).append((float(row["x"]), float(row["y"])))
        except (KeyError, TypeError, ValueError):
            raise FinerCamError(f"--parts {path}: line {i}: expected columns image,part,x,y with numbers") from None
    return parts


def _read_boxes(path: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """The boxes CSV (UTF-8, with or without a byte-order mark): image path (relative, as in index.jsonl)
    -> its boxes."""
    text = read_text(path, f"--boxes {path}")
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise FinerCamError(f"--boxes {path}: not a CSV file ({exc})") from None
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
    if S > 0:
        ranks = pixel_ranks(flat_maps)  # [B*M, H, W]
        counts = [round(s / S * H * W) for s in range(S + 1)]
        deletion = torch.stack([ranks >= n for n in counts], dim=1)  # keep the pixels not yet removed
        insertion = torch.stack([ranks < n for n in counts], dim=1)  # keep the pixels revealed so far
        keeps += [deletion.reshape(-1, H, W), insertion.reshape(-1, H, W)]
        owners += [owner_bm.repeat_interleave(S + 1)] * 2
    probs = _variants(model, x, fill, torch.cat(keeps), torch.cat(owners), cfg.batch_size)
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
        n = B * M * (S + 1)
        tgt = c.repeat_interleave(S + 1).view(-1, 1)
        for name in ("deletion", "insertion"):
            out[name] = probs[offset:offset + n].gather(1, tgt).view(B, M, S + 1)
            offset += n
    return out


# ------------------------------------------------------------------------------------------------ the run

def _load_model(cfg: EvaluateConfig, run_info: dict, device):
    backbone = run_info.get("backbone") or {}
    head = run_info.get("head") or {}
    model_path = cfg.model_path or backbone.get("path")
    head_path = cfg.classifier_path or head.get("path")
    if not model_path or not head_path:
        raise FinerCamError(f"--cam_dir {cfg.cam_dir}: run.json names no backbone or head; pass --model_path "
                            "and --classifier_path")
    for flag, path in (("--model_path", model_path), ("--classifier_path", head_path)):
        if not Path(path).is_file():
            raise FinerCamError(f"{flag} {path}: no such file (recorded in run.json; pass {flag} if it moved)")
    return load_classifier(model_path, head_path, cfg.arch or backbone.get("arch", "auto"), device,
                           backbone.get("kind", "dinov2"), backbone.get("pool", "cls"))


def _preprocess(run_info: dict, patch: int) -> Preprocess:
    pre = run_info.get("preprocessing") or {}
    try:
        return Preprocess(tuple(pre["mean"]), tuple(pre["std"]), image_size=pre.get("image_size"),
                          max_size=pre.get("max_size"), patch=patch)
    except (KeyError, TypeError):
        raise FinerCamError(f"--cam_dir: run.json has no usable preprocessing ({pre})") from None


def check_config(cfg: EvaluateConfig) -> None:
    if cfg.fill not in FILLS:
        raise FinerCamError(f"--fill {cfg.fill!r}: expected one of {', '.join(FILLS)}")
    if not cfg.percent or any(not 0 < p < 100 for p in cfg.percent):
        raise FinerCamError(f"--percent {cfg.percent}: each must be between 0 and 100 (exclusive)")
    if len({_pct(p) for p in cfg.percent}) != len(cfg.percent):
        raise FinerCamError(f"--percent {' '.join(map(_pct, cfg.percent))}: a percentage is given twice")
    check_runtime(cfg.num_workers, cfg.max_pixels)
    check_folder(cfg.out, "--out")
    if cfg.steps < 0:
        raise FinerCamError("--steps must be 0 (no curves) or more")
    if cfg.batch_size < 1:
        raise FinerCamError("--batch_size must be at least 1")
    if cfg.limit is not None and cfg.limit < 1:
        raise FinerCamError("--limit must be at least 1")
    if cfg.masks and cfg.boxes:
        raise FinerCamError("--masks and --boxes exclude each other: give one")
    if not 0 < cfg.part_radius < 1:
        raise FinerCamError(f"--part_radius {cfg.part_radius}: expected a fraction of the shorter side between 0 and 1")


def run_evaluate(cfg: EvaluateConfig, progress: BarFactory | None = None,
                 stop: StopRequest | None = None) -> EvaluateResult:
    """Evaluate the maps of ``cfg.cam_dir`` and write the tables and figures into ``cfg.out``."""
    stop = stop or StopRequest()
    check_config(cfg)
    run_info, entries = read_run(cfg.cam_dir)
    if run_info.get("concepts"):
        raise FinerCamError(f"--cam_dir {cfg.cam_dir}: a concept run (--concepts); evaluate.py measures the maps "
                            "of a classifier's classes and does not take concept maps")
    device = resolve_device(cfg.device)
    ranks = init_ranks(device.type)
    if ranks.world > 1 and device.type == "cuda":
        device = torch.device(f"cuda:{ranks.local_rank}")
    model = _load_model(cfg, run_info, device)
    modes = [m["name"] for m in run_info["modes"]]
    class_names = run_info["class_names"]
    if model.num_classes != len(class_names):
        raise FinerCamError(f"--classifier_path: the head has {model.num_classes} classes, run.json lists "
                            f"{len(class_names)}")
    similarity = run_info.get("similarity", "logit-distance")
    class_sim = weight_cosine(model.head.weight) if similarity == "weight-cosine" else None
    preprocess = _preprocess(run_info, model.patch_size)
    truth = GroundTruth(cfg.masks, cfg.boxes, cfg.parts, cfg.part_radius)
    root = dataset_root(run_info, cfg.dataset_dir, cfg.cam_dir)
    chosen = [entries[k] for k in sorted(entries) if "error" not in entries[k]]
    chosen = chosen[:cfg.limit] if cfg.limit else chosen
    if not chosen:
        raise FinerCamError(f"--cam_dir {cfg.cam_dir}: index.jsonl lists no explained images")
    names = metric_names(cfg, truth.regions)
    result = EvaluateResult(summary={}, rows=[], metrics=names, main=ranks.is_main)
    curves: dict[str, list[np.ndarray]] = {"deletion": [], "insertion": []}
    mine = ranks.shard(chosen)  # torchrun: each rank evaluates its share; rank 0 gathers and writes
    dataset = ImageDataset([root / e["image"] for e in mine], preprocess, cfg.max_pixels)
    loader = make_loader(dataset, cfg.batch_size, cfg.num_workers, pin_memory=device.type == "cuda")
    with open_bar(progress if ranks.is_main else None, "evaluate", len(mine)) as bar:
        for batch in loader:
            ready = []
            for item in batch:
                entry = mine[item["index"]]
                try:
                    if item["error"] is not None:
                        raise SkippedFile(root / entry["image"], item["error"])
                    ready.append((item, entry, read_map_file(Path(cfg.cam_dir) / entry.get("map", ""), (len(modes),))))
                except SkippedFile as exc:
                    result.failed += 1
                    log.error("%s: %s (skipped)", exc.path, exc)
            for group in _by_shape(ready, len(modes)):
                _evaluate(group, model, cfg, similarity, class_sim, truth, modes, device, result, curves)
            bar.update(len(batch))
            stop.check()
    if ranks.world > 1:
        parts = ranks.gather((result.rows, curves, result.failed))
        shutdown(ranks)
        if not ranks.is_main:
            return result
        order = {e["image"]: i for i, e in enumerate(chosen)}
        result.rows = sorted((r for rows, _, _ in parts for r in rows),
                             key=lambda r: (order[r["image"]], modes.index(r["mode"])))
        curves = {k: [c for _, part, _ in parts for c in part[k]] for k in curves}
        result.failed = sum(f for _, _, f in parts)
    for mode in modes:
        rows = [r for r in result.rows if r["mode"] == mode]
        result.summary[mode] = {}
        for name in names:
            mean, half, n = mean_ci(np.array([r.get(name, np.nan) for r in rows], dtype=np.float64))
            result.summary[mode][name] = {"mean": mean, "ci95": half, "n": n}
    result.images = len({r["image"] for r in result.rows})
    _write_outputs(cfg, run_info, result, curves, modes)
    return result


def _by_shape(ready: list, n_modes: int) -> list[list]:
    """Groups of same-shaped images small enough that their masked variants fit :data:`VARIANT_BUDGET`."""
    groups: dict[tuple, list] = {}
    for r in ready:
        groups.setdefault(tuple(r[0]["image"].shape), []).append(r)
    out = []
    for shape, items in groups.items():
        per_image = n_modes * shape[1] * shape[2] * 48  # ~ (k values + 2 curves of S+1 steps) masks per mode
        size = max(1, VARIANT_BUDGET // per_image)
        out += [items[i:i + size] for i in range(0, len(items), size)]
    return out


def _evaluate(group, model, cfg, similarity, class_sim, truth: GroundTruth, modes, device, result, curves) -> None:
    x = torch.stack([item["image"] for item, _, _ in group]).to(device)
    H, W = x.shape[-2:]
    raw = [torch.from_numpy(maps.astype(np.float32)) for _, _, maps in group]
    maps = torch.stack([normalize_maps(resize_maps(m, (H, W))) for m in raw]).to(device)  # [B, M, H, W]
    targets = torch.tensor([int(e["target"]) for _, e, _ in group], device=device)
    with torch.no_grad():
        logits = model(x)
    refs = rank_references(logits, targets, 1, similarity, class_sim)[:, 0]
    out = evaluate_group(model, x, maps, targets, refs, cfg)
    probs = torch.softmax(logits, dim=1)
    for b, (item, entry, _) in enumerate(group):
        regions = truth(entry["image"], tuple(item["size"])) if truth.regions else None
        if truth.regions and regions is None:
            log.warning("%s: no ground truth for this image; its localisation is left out", entry["image"])
        local = {}
        if regions:
            fitted = normalize_maps(resize_maps(raw[b], next(iter(regions.values())).shape))
            for name, region in regions.items():
                r = torch.from_numpy(region).unsqueeze(0).expand(len(modes), -1, -1)
                local[f"energy_{name}"] = energy_inside(fitted, r).tolist()
                local[f"pointing_{name}"] = pointing_hit(fitted, r).float().tolist()
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
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FinerCamError(f"--out {cfg.out}: cannot create the folder ({exc.strerror})") from None
    lock = FolderLock(out, "--out")  # also marks the figures as outputs, never read as images
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
                                             "part_radius", "limit")}
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
