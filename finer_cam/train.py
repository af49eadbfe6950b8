"""The work of train_classifier.py: a linear head on frozen DINOv2 features, trained once per dataset.

The head reads exactly what :class:`~finer_cam.models.Classifier` feeds it (the mean of the normalised patch
tokens), so the file it writes is the official head format that generate_cam.py loads. Backbone features are
computed once per image and cached; the head then trains on them in seconds per epoch. ``augment`` puts the
backbone back in the loop on randomly cropped and flipped views.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import __version__, checks
from .data import (NORMALIZATIONS, ImageDataset, Preprocess, keep_as_list, make_loader, patch_multiple,
                   walk_images)
from .device import PRECISIONS, autocast, loader_workers, resolve_device
from .errors import ArgumentError, FinerCamError
from .atomic import FolderLock, OUTPUT_MARKER, atomic_write_bytes, json_text, write_json
from .userfiles import check_folder, claim_output
from .models import (BACKBONES, CLASS_LIST, DEFAULT_MODELS, SIDECAR, Classifier,
                     backbone_kind, backbone_shape, feature_dim, freeze_and_pack, load_backbone, make_classifier)
from .progress import BarFactory, StopRequest, open_bar
from .records import AccuracyRecord, BackboneRecord, HeadRecord, PreprocessingRecord, TrainingDataRecord
from .settings import (ARCH, BACKBONE, CLIP_POOL, DEVICE, MAX_PIXELS, MODEL_PATH, NORMALIZE, NUM_WORKERS, OFFLINE,
                       check_settings, setting)
from .weights import resolve_weights

log = logging.getLogger("finer_cam")
BEST, LAST, METRICS, STATE = "best_classifier.pth", "last_classifier.pth", "metrics.json", "train_state.pth"
SPLIT_LAYOUTS = (("train", "test"), ("train", "val"), ("train", "valid"))
OUTPUTS = (BEST, LAST, CLASS_LIST, SIDECAR, METRICS, STATE)


_DATA, _BACKBONE = "data and output", "backbone"  # the help's groups that two places start


def _seed(name: str, value) -> None:
    """``--seed``: a whole number torch's generators take (0 to 2**63 - 1)."""
    checks.at_least(name, value, 0, "0 or a positive integer")
    if value >= 2**63:
        raise ArgumentError(name, value, "expected 0 or a positive integer below 2**63 (what torch's generators take)")


@dataclass
class TrainConfig:
    """What train_classifier.py runs: each field is its flag of the same name (:mod:`finer_cam.settings`).
    Python may pass the first three by position, ``TrainConfig(data_root, model_path, output_dir)``: so
    ``model_path`` (of the backbone group) comes before ``output_dir`` (of the data group)."""

    data_root: str = setting(flags=("--data_root", "--data-root"), group=_DATA, help="the dataset folder")
    backbone: str = BACKBONE.field(
        group=_BACKBONE, help="dinov2: the head reads the mean of DINOv2's normalised patch tokens; clip: CLIP's "
                                   "image embedding (see --clip_pool)")
    model_path: str | None = MODEL_PATH.field(kw_only=False)  # None: the backbone's default file (DEFAULT_MODELS)
    output_dir: str = setting(
        "pretrained_models/classifier/", flags=("--output_dir", "--output-dir"), group=_DATA, kw_only=False,
        help="where the head, its class list and its sidecar go")
    overwrite: bool = setting(False, help="replace the files of an earlier training in --output_dir")
    resume: bool = setting(
        False, help="continue the training saved in --output_dir; every setting that changes the head (size, "
                    "normalisation, precision, epochs, lr, ...) must be as before")
    val_fraction: float = setting(  # used only when the data has no test/val folder
        0.2, check=checks.Finite("a fraction between 0 and 1", above=0, below=1),
        help="share of each class held out for evaluation when the data has no test/val folder")
    offline: bool = OFFLINE.field(group=_BACKBONE)
    arch: str = ARCH.field()
    clip_pool: str = CLIP_POOL.field()
    image_size: int | None = setting(  # None: 224 for DINOv2, the checkpoint's resolution for CLIP
        None, check=checks.AtLeast(1, optional=True),
        help="square bicubic resize of every image (default: 224, or the CLIP checkpoint's resolution)")
    normalize: str | None = NORMALIZE.field(  # None: imagenet for DINOv2, clip for CLIP
        help="input normalisation; recorded in the sidecar, and generate_cam.py uses the same (default: imagenet, "
             "or clip with --backbone clip)")
    feature_cache: str | None = setting(
        None, metavar="DIR", help="keep backbone features on disk here, reused by later runs with the same backbone "
                                  "and preprocessing (default: in memory only)")
    epochs: int = setting(30, group="training", check=checks.AtLeast(1), help="passes over the training set")
    lr: float = setting(1e-3, check=checks.Finite("a positive number", above=0),
                        help="AdamW learning rate (cosine schedule)")
    weight_decay: float = setting(1e-4, check=checks.Finite("0 or a positive number", at_least=0),
                                  help="AdamW weight decay")
    batch_size: int = setting(64, check=checks.AtLeast(1), help="images per backbone batch and per head step")
    augment: bool = setting(
        False, help="train on RandomResizedCrop + flip views with the backbone in the loop (slower; no cache)")
    seed: int = setting(0, check=_seed,
                        help="seeds the split, the initialisation and the batch order")
    num_workers: int | str = NUM_WORKERS.field(group="runtime")  # device.loader_workers
    device: str = DEVICE.field()
    precision: str = setting("fp32", choices=PRECISIONS,
                             help="the backbone's: fp32; tf32 (TF32 matrix products on CUDA); bf16 (autocast)")
    max_pixels: int | None = MAX_PIXELS.field()

    def __post_init__(self) -> None:
        """Every field's value is checked here, once, against its setting."""
        check_settings(self)


# ------------------------------------------------------------------------------------------------ the data

@dataclass
class Split:
    """Images and labels of the training and evaluation sets, with the class names in head order."""

    class_names: list[str]
    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]
    layout: str  # e.g. "train+test", or "split 0.2 (seed 0)"
    val_name: str  # "test", "val", "valid" or "held-out"


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    """Class folder name -> its images (searched recursively), for each sub-folder of ``folder``."""
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (sub / OUTPUT_MARKER).exists():
            log.warning("%s: an output folder of finer_cam, not a class; left out", sub)
            continue
        name = sub.name
        if name != name.strip() or "\n" in name:
            raise FinerCamError(f"{sub}: a class folder name may not start or end with spaces or hold a line break")
        classes[name] = walk_images(sub)
    return classes


def _drop_empty(classes: dict[str, list[Path]], where: Path) -> dict[str, list[Path]]:
    for name in [n for n, paths in classes.items() if not paths]:
        log.warning("%s: no images in this class folder; the class is left out of the head", where / name)
    return {n: p for n, p in classes.items() if p}


def find_split(root: str | Path, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """The dataset layout under ``root``: ``train`` with ``test``, ``val`` or ``valid`` beside it, or else one
    ImageFolder (``root`` itself, or ``root/train`` alone) split per class with a seeded permutation."""
    root = Path(root)
    if not root.is_dir():
        raise FinerCamError(f"--data_root {root}: no such folder")
    for train_name, val_name in SPLIT_LAYOUTS:
        if (root / train_name).is_dir() and (root / val_name).is_dir():
            train = _drop_empty(_class_folders(root / train_name), root / train_name)
            val = _class_folders(root / val_name)
            if not train:
                raise FinerCamError(f"--data_root {root}: {root / train_name} holds no class folders with images")
            names = list(train)
            for name in names:
                if not val.get(name):
                    log.warning("class %r has no images in %s: its accuracy is not measured", name, root / val_name)
            for name in val:
                if name not in train and val[name]:
                    log.warning("%s: class not in %s; its %d images are left out of the evaluation",
                                root / val_name / name, root / train_name, len(val[name]))
            index = {n: i for i, n in enumerate(names)}
            return Split(names, [(p, index[n]) for n in names for p in train[n]],
                         [(p, index[n]) for n in names for p in val.get(n, [])], f"{train_name}+{val_name}", val_name)
    folder = root / "train" if (root / "train").is_dir() else root
    if not 0 < val_fraction < 1:
        raise FinerCamError(f"--val_fraction {val_fraction}: expected a fraction between 0 and 1")
    classes = _drop_empty(_class_folders(folder), folder)
    if not classes:
        raise FinerCamError(f"--data_root {root}: no class folders with images (expected ROOT/train and ROOT/test, "
                            "or one folder per class)")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for i, (name, paths) in enumerate(classes.items()):
        order = rng.permutation(len(paths))
        n_val = min(len(paths) - 1, max(1, round(len(paths) * val_fraction))) if len(paths) > 1 else 0
        if n_val == 0:
            log.warning("class %r has a single image: it is used for training only", name)
        val += [(paths[j], i) for j in sorted(order[:n_val])]
        train += [(paths[j], i) for j in sorted(order[n_val:])]
    return Split(list(classes), train, val, f"split {val_fraction:g} of {folder.name or folder} (seed {seed})",
                 "held-out")


# ------------------------------------------------------------------------------------------- feature cache

def _file_id(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


class FeatureCache:
    """Backbone features by image, in memory and optionally in ``folder`` (one ``.npz`` per backbone setup).

    The setup key covers the backbone file (path, size, modification time), its architecture, the
    preprocessing and the precision; an image's key is its path, size and modification time, so an edited
    image or checkpoint is recomputed, never served stale.
    """

    def __init__(self, folder: str | Path | None, setup: dict) -> None:
        self.rows: dict[str, np.ndarray] = {}
        self.path = None
        if folder is None:
            return
        digest = hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:20]
        self.path = Path(folder) / f"features-{digest}.npz"
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FinerCamError(f"--feature_cache {folder}: cannot create the folder ({exc.strerror})") from None
        write_json(Path(folder) / f"features-{digest}.json", setup)
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    keys, feats = data["keys"], data["features"]
                self.rows = {str(k): f for k, f in zip(keys, feats)}
            except (OSError, ValueError, KeyError) as exc:
                log.warning("%s: unreadable feature cache, recomputing (%s)", self.path, exc)
        self.saved = len(self.rows)

    def get(self, key: str) -> np.ndarray | None:
        return self.rows.get(key)

    def put(self, key: str, row: np.ndarray) -> None:
        self.rows[key] = row

    def save(self) -> None:
        """Write the cache (atomically) when it has grown since it was read or last saved."""
        if self.path is None or len(self.rows) == self.saved:
            return
        keys = np.array(list(self.rows), dtype=str)
        feats = np.stack(list(self.rows.values())).astype(np.float32)
        atomic_write_bytes(self.path, lambda f: np.savez(f, keys=keys, features=feats))
        self.saved = len(self.rows)


@dataclass
class Failures:
    """Images that could not be read: named when met, counted at the end."""

    items: dict[str, str] = field(default_factory=dict)

    def add(self, path: Path, why: str) -> None:
        if str(path) not in self.items:
            log.error("%s: %s (skipped)", path, why)
        self.items[str(path)] = why


def _batch_features(model: Classifier, batch: list[dict], dataset: ImageDataset, failures: Failures,
                    device: torch.device, precision: str) -> tuple[torch.Tensor, list[int]]:
    """Features ``[G, D]`` (float32, on the CPU) of a loader batch's readable images, and their indices in
    ``dataset``; the unreadable ones are recorded in ``failures``."""
    for item in batch:
        if item["error"] is not None:
            failures.add(dataset.paths[item["index"]], item["error"])
    good = [item for item in batch if item["error"] is None]
    if not good:
        return torch.zeros(0, model.feature_dim), []
    x = torch.stack([item["image"] for item in good]).to(device, non_blocking=True)
    with torch.no_grad(), autocast(device, precision):
        return model.features(x).float().cpu(), [item["index"] for item in good]


def extract_features(model: Classifier, paths: list[Path], preprocess, cache: FeatureCache, cfg: TrainConfig,
                     device: torch.device, failures: Failures, progress: BarFactory | None = None,
                     desc: str = "features", stop: StopRequest | None = None) -> tuple[torch.Tensor, list[bool]]:
    """``[N, D]`` features of ``paths`` (rows of failed images are zero) and which rows are valid.

    Cached rows are reused; the rest go through the backbone in batches and join the cache, which is saved
    every minute or so, so an interrupted run keeps most of its work.
    """
    keys = [_file_id(p) if p.is_file() else f"missing|{p}" for p in paths]
    todo = [i for i, k in enumerate(keys) if cache.get(k) is None]
    dataset = ImageDataset([paths[i] for i in todo], preprocess, cfg.max_pixels)
    last_save = time.monotonic()
    try:
        with open_bar(progress, desc, len(todo)) as bar:
            for batch in make_loader(dataset, cfg.batch_size, cfg.num_workers, pin_memory=device.type == "cuda"):
                feats, indices = _batch_features(model, batch, dataset, failures, device, cfg.precision)
                for i, row in zip(indices, feats.numpy()):
                    cache.put(keys[todo[i]], row)
                bar.update(len(batch))
                if time.monotonic() - last_save > 60:
                    cache.save()
                    last_save = time.monotonic()
                if stop is not None:
                    stop.check()
    finally:
        cache.save()
    dim = model.feature_dim
    rows = [cache.get(k) for k in keys]
    valid = [r is not None for r in rows]
    feats = np.stack([r if r is not None else np.zeros(dim, np.float32) for r in rows]) if rows else np.zeros((0, dim))
    return torch.from_numpy(feats.astype(np.float32)), valid


class _Augment:
    """RandomResizedCrop (bicubic) and horizontal flip, then the usual normalisation: PIL image -> ``[3, S, S]``."""

    def __init__(self, preprocess: Preprocess) -> None:
        import torchvision.transforms as T  # here, not at import: torchvision takes about two seconds to import

        side = preprocess.input_size(1, 1)[0]
        self.transform = T.Compose([T.RandomResizedCrop(side, scale=(0.35, 1.0),
                                                        interpolation=T.InterpolationMode.BICUBIC),
                                    T.RandomHorizontalFlip()])
        self.preprocess = preprocess

    def __call__(self, img):
        return self.preprocess(self.transform(img))


# ------------------------------------------------------------------------------------------------ training

def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """Learning rate of ``epoch`` (0-based): cosine from ``base`` down to 1% of it."""
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs))))


def head_scores(head: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``head`` on features ``[N, D]`` and labels ``[N]`` (NaN when empty)."""
    if len(y) == 0:
        return float("nan"), float("nan")
    with torch.no_grad():
        logits = head(x)
        return (logits.argmax(1) == y).float().mean().item(), F.cross_entropy(logits, y).item()


def _head_state(head: nn.Linear) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in head.state_dict().items()}


def _save_torch(path: Path, obj) -> None:
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


@dataclass
class TrainResult:
    class_names: list[str]
    best_accuracy: float
    best_epoch: int
    last_accuracy: float
    train_images: int
    val_images: int
    failed: int
    output_dir: Path
    history: list[dict] = field(default_factory=list)


def _check_output_dir(out: Path, cfg: TrainConfig) -> None:
    check_folder(out, "output_dir")
    existing = [n for n in OUTPUTS if (out / n).exists()]
    if cfg.resume:
        if not (out / STATE).is_file():
            raise FinerCamError(f"--resume: {out / STATE} does not exist; nothing to resume")
        return
    if existing and not cfg.overwrite:
        raise FinerCamError(f"--output_dir {out}: already holds {', '.join(existing)}; use --overwrite to replace "
                            "them or --resume to continue that training")


def _backbone_info(cfg: TrainConfig, model: Classifier) -> BackboneRecord:
    return BackboneRecord.of({**backbone_shape(model.backbone), **backbone_kind(model.backbone).pooling(cfg.clip_pool)},
                             arch=cfg.arch, path=str(Path(cfg.model_path).resolve()))


def run_train(cfg: TrainConfig, progress: BarFactory | None = None, stop: StopRequest | None = None) -> TrainResult:
    """Train, evaluate and save the head, showing progress through ``progress``; ``stop`` is checked after
    every feature batch (the cache is saved) and every epoch (the training state is saved)."""
    stop = stop or StopRequest()
    out = Path(cfg.output_dir)
    _check_output_dir(out, cfg)
    device = resolve_device(cfg.device)
    cfg = replace(cfg, num_workers=loader_workers(cfg.num_workers, device))  # auto: what the machine has
    split = find_split(cfg.data_root, cfg.val_fraction, cfg.seed)
    claim_output(out, "output_dir", root=cfg.data_root, image_folders={p.parent for p, _ in split.train + split.val},
                 writes=OUTPUTS)
    lock = FolderLock(out, "output_dir")  # one training at a time in a folder
    try:
        return _train(cfg, out, device, split, progress, stop)
    finally:
        lock.release()


@dataclass
class _Model:
    """The frozen backbone with a head of the right size, and what the run records of it."""

    cfg: TrainConfig  # with model_path resolved and image_size and normalize filled in
    model: nn.Module
    preprocess: Preprocess
    backbone_info: BackboneRecord


def _load_model(cfg: TrainConfig, num_classes: int, device: torch.device, progress: BarFactory | None) -> _Model:
    model_file = resolve_weights(cfg.model_path or DEFAULT_MODELS[cfg.backbone], cfg.backbone, cfg.offline, progress)
    cfg = replace(cfg, model_path=str(model_file))
    backbone = load_backbone(cfg.model_path, cfg.backbone, cfg.arch)
    model = freeze_and_pack(make_classifier(backbone, nn.Linear(feature_dim(backbone), num_classes), cfg.clip_pool),
                            device)
    kind = backbone_kind(backbone)
    checks.patches_a_side("image_size", cfg.image_size, model.patch_size)
    size = cfg.image_size or kind.native_size(backbone)
    if patch_multiple(size, model.patch_size) != size:
        log.warning("images are resized to %d px, %d rounded up to a multiple of the %d px patch (the head's "
                    "sidecar records %d)", patch_multiple(size, model.patch_size), size, model.patch_size,
                    patch_multiple(size, model.patch_size))
    cfg = replace(cfg, image_size=patch_multiple(size, model.patch_size), normalize=cfg.normalize or kind.normalize)
    mean, std = NORMALIZATIONS[cfg.normalize]
    preprocess = Preprocess(mean, std, image_size=cfg.image_size, patch=model.patch_size)
    return _Model(cfg, model, preprocess, _backbone_info(cfg, model))


@dataclass
class _Progress:
    """Where the training stands: the epochs done, their history and the best head so far (highest evaluation
    accuracy, then lowest evaluation loss; with no evaluation images, the last one)."""

    epoch: int = 0
    best_accuracy: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0
    best_head: dict | None = None
    history: list[dict] = field(default_factory=list)

    def record(self, entry: dict, head: nn.Linear, val_acc: float, val_loss: float) -> None:
        self.epoch = entry["epoch"]
        self.history.append(entry)
        if math.isnan(val_acc) or val_acc > self.best_accuracy or (val_acc == self.best_accuracy and
                                                                   val_loss < self.best_loss):
            self.best_accuracy = -1.0 if math.isnan(val_acc) else val_acc
            self.best_loss, self.best_epoch, self.best_head = val_loss, self.epoch, _head_state(head)


def _train_epoch(head: nn.Linear, optimizer, batches, epoch: int, lr: float) -> float:
    """One pass over ``batches``; the mean training loss."""
    total_loss, seen = 0.0, 0
    head.train()
    for xb, yb in batches:
        loss = F.cross_entropy(head(xb.to(head.weight.device)), yb)
        if not torch.isfinite(loss):
            raise FinerCamError(f"training diverged in epoch {epoch + 1}: the loss is {loss.item()}; nothing "
                                f"of this epoch is saved; lower --lr (now {lr:g})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(yb)
        seen += len(yb)
    head.eval()
    return total_loss / max(1, seen)


def _train(cfg: TrainConfig, out: Path, device: torch.device, split: Split, progress: BarFactory | None,
           stop: StopRequest) -> TrainResult:
    num_classes = len(split.class_names)
    loaded = _load_model(cfg, num_classes, device, progress)
    cfg, model, preprocess, backbone_info = loaded.cfg, loaded.model, loaded.preprocess, loaded.backbone_info
    settings = _settings(cfg)
    setup = {"backbone": {**backbone_info.to_json(), "file": _file_id(Path(cfg.model_path))},
             "preprocessing": preprocess.to_json(), "precision": cfg.precision}
    cache = FeatureCache(cfg.feature_cache, setup)
    failures = Failures()
    log.info("%s: %d classes, %d training and %d %s images (%s)", cfg.data_root, num_classes, len(split.train),
             len(split.val), split.val_name, split.layout)

    def features_of(items, desc):
        x, valid = extract_features(model, [p for p, _ in items], preprocess, cache, cfg, device, failures,
                                    progress, desc, stop)
        keep = torch.tensor(valid, dtype=torch.bool)
        y = torch.tensor([label for _, label in items], dtype=torch.long)
        return x[keep], y[keep]

    val_x, val_y = features_of(split.val, f"features ({split.val_name})")
    if not cfg.augment:
        train_x, train_y = features_of(split.train, "features (train)")
        if len(train_y) == 0:
            raise FinerCamError(f"--data_root {cfg.data_root}: none of the training images could be read")
    head = nn.Linear(model.feature_dim, num_classes)
    generator = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        nn.init.normal_(head.weight, std=0.01, generator=generator)
        head.bias.zero_()
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = _Progress(best_head=_head_state(head))
    if cfg.resume:
        state = _load_state(out, head, optimizer, split.class_names, backbone_info, settings)
        log.info("resuming after epoch %d of %d", state.epoch, cfg.epochs)
    epoch_bar = open_bar(progress, "epochs", cfg.epochs, unit="epoch")
    epoch_bar.update(state.epoch)
    with epoch_bar:
        for epoch in range(state.epoch, cfg.epochs):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(cfg.lr, epoch, cfg.epochs)
            g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            if cfg.augment:
                batches = _augmented_batches(model, split.train, preprocess, cfg, device, failures, g)
            else:
                order = torch.randperm(len(train_y), generator=g)
                batches = ((train_x[idx], train_y[idx]) for idx in order.split(cfg.batch_size))
            loss = _train_epoch(head, optimizer, batches, epoch, cfg.lr)
            val_acc, val_loss = head_scores(head, val_x, val_y)
            train_acc = head_scores(head, train_x, train_y)[0] if not cfg.augment else float("nan")
            state.record({"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "loss": loss,
                          "train_accuracy": _num(train_acc), "val_accuracy": _num(val_acc),
                          "val_loss": _num(val_loss)}, head, val_acc, val_loss)
            _save_torch(out / STATE, {"epoch": state.epoch, "head": _head_state(head),
                                      "optimizer": optimizer.state_dict(), "best_accuracy": state.best_accuracy,
                                      "best_loss": state.best_loss, "best_epoch": state.best_epoch,
                                      "best_head": state.best_head, "class_names": split.class_names,
                                      "backbone": backbone_info.to_json(), "settings": json_text(settings),
                                      "history": json_text(state.history)})
            epoch_bar.set_postfix(loss=f"{loss:.3f}", acc=f"{val_acc:.3f}")
            epoch_bar.update(1)
            stop.check()
    last_acc = state.history[-1]["val_accuracy"] if state.history else None
    result = TrainResult(split.class_names, state.best_accuracy if state.best_accuracy >= 0 else float("nan"),
                         state.best_epoch, last_acc if last_acc is not None else float("nan"), len(split.train),
                         len(split.val), len(failures.items), out, state.history)
    _write_outputs(out, cfg, split, head, state.best_head, result, backbone_info, preprocess, failures)
    return result


def _num(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 6)


def _augmented_batches(model, items, preprocess, cfg, device, failures, generator):
    """One epoch of ``(features, labels)`` on augmented views, the backbone in the loop (without gradients)."""
    paths = [p for p, _ in items]
    labels = torch.tensor([label for _, label in items])
    dataset = ImageDataset(paths, _Augment(preprocess), cfg.max_pixels)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, generator=generator, num_workers=cfg.num_workers,
        collate_fn=keep_as_list)
    for batch in loader:
        feats, indices = _batch_features(model, batch, dataset, failures, device, cfg.precision)
        if indices:
            yield feats, labels[indices]


def _settings(cfg: TrainConfig) -> dict:
    """Everything besides the data and the backbone that changes the trained head (the preprocessing follows
    from the size and the normalisation): a resume must match it."""
    return {k: getattr(cfg, k) for k in ("image_size", "normalize", "precision", "epochs", "lr", "weight_decay",
                                         "batch_size", "seed", "augment", "val_fraction")}


def _load_state(out: Path, head: nn.Linear, optimizer, class_names: list[str], backbone_info: BackboneRecord,
                settings: dict) -> _Progress:
    path = out / STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = json.loads(state["settings"]) if "settings" in state else None
        if saved is None:
            raise FinerCamError(f"--resume: {path} does not record its training settings (an older version "
                                "wrote it); train anew with --overwrite")
        changed = [k for k in settings if json.loads(json_text(settings[k])) != saved.get(k)]
        if changed:
            said = "; ".join(f"{k} {json_text(saved.get(k))} then, {json_text(settings[k])} now" for k in changed)
            raise FinerCamError(f"--resume: {path} was trained with other settings ({said}); resume with the "
                                "same flags, or train anew with --overwrite")
        if state["class_names"] != class_names:
            raise FinerCamError(f"--resume: {path} was trained on other classes than {len(class_names)} found now")
        trained = BackboneRecord.from_json(state["backbone"], f"{path}: backbone")
        if trained.resumed() != backbone_info.resumed():
            raise FinerCamError(f"--resume: {path} was trained on another backbone ({trained.path})")
        if not all(torch.isfinite(t).all() for t in (*state["head"].values(), *state["best_head"].values())):
            raise FinerCamError(f"--resume: {path} holds NaN or infinite weights; train anew with --overwrite")
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        return _Progress(int(state["epoch"]), float(state["best_accuracy"]), float(state["best_loss"]),
                         int(state["best_epoch"]), state["best_head"], json.loads(state["history"]))
    except FinerCamError:
        raise
    except pickle.UnpicklingError:
        raise FinerCamError(f"--resume: {path} refused: it holds pickled objects other than tensors, which could "
                            "run code when loaded") from None
    except Exception as exc:  # a torn or foreign file: say which
        raise FinerCamError(f"--resume: {path} is not a readable training state ({str(exc).splitlines()[0]})") from None


def _write_outputs(out: Path, cfg: TrainConfig, split: Split, head: nn.Linear, best_state, result: TrainResult,
                   backbone_info: BackboneRecord, preprocess: Preprocess, failures: Failures) -> None:
    _save_torch(out / BEST, best_state)
    _save_torch(out / LAST, _head_state(head))
    text = "".join(n + "\n" for n in split.class_names)
    atomic_write_bytes(out / CLASS_LIST, lambda f: f.write(text.encode("utf-8")))
    accuracy_info = {"split": split.val_name, "best": _num(result.best_accuracy), "best_epoch": result.best_epoch,
                     "last": _num(result.last_accuracy)}
    HeadRecord(
        backbone=backbone_info, num_classes=len(split.class_names), class_names_file=CLASS_LIST,
        image_size=cfg.image_size, normalize=cfg.normalize,
        preprocessing=PreprocessingRecord.of(preprocess, cfg.normalize),
        features=BACKBONES[cfg.backbone].features(cfg.clip_pool),
        accuracy=AccuracyRecord(**accuracy_info),
        data=TrainingDataRecord(root=str(Path(cfg.data_root).resolve()), layout=split.layout,
                                train_images=len(split.train), val_images=len(split.val),
                                failed_images=len(failures.items)),
        training={k: getattr(cfg, k) for k in ("epochs", "lr", "weight_decay", "batch_size", "seed", "augment",
                                               "precision")}
        | {"optimizer": "AdamW", "schedule": "cosine"},
        versions={"finer_cam": __version__, "torch": torch.__version__, "python": platform.python_version()},
    ).write(out / SIDECAR)
    write_json(out / METRICS, {"accuracy": accuracy_info, "epochs": result.history,
                               "failed_images": failures.items})
