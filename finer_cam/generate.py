"""The work of generate_cam.py: a dataset folder in, one ``.npy`` of maps per image out (see io.py)."""

from __future__ import annotations

import logging
import platform
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .downloads import file_sha256

from . import __version__, checks
from .cam import METHODS, TARGETS, FinerCAM, normalize_maps, resize_maps
from .concepts import DEFAULT_PROMPT, ConceptSet
from .data import (DECODERS, DEFAULT_CLASS_LIST, NORMALIZATIONS, ImageDataset, ImageList, LabelMatcher,
                   Preprocess, decode_raw, default_decode, displayed_size, find_images, make_loader,
                   patch_multiple, read_class_names, shape_batches)
from .device import AUTO, PRECISIONS, default_precision, loader_workers, resolve_device
from .distributed import Ranks, init_ranks, shutdown
from .errors import ArgumentError, FinerCamError
from .records import BackboneRecord, HeadFileRecord, HeadRecord, PreprocessingRecord, RunRecord
from .runstore import INDEX_FILE, MapWriter, RUN_FILE, RunFolder, map_names
from .userfiles import check_folder, claim_output, is_special
from .kernels import prepack
from .models import (CLASS_LIST, DEFAULT_MODELS, arch_name, backbone_kind, backbone_shape,
                     load_classifier, load_concept_classifier, read_sidecar)
from .pipeline import HostCopy, Prefetcher, to_host
from .progress import BarFactory, StopRequest, open_bar
from .targets import DEFAULT_MODES, SIMILARITIES, parse_modes
from .settings import (ARCH, BACKBONE, CLIP_POOL, DEVICE, MAX_PIXELS, MODEL_PATH, NORMALIZE, NUM_WORKERS, OFFLINE,
                       check_settings, setting)
from .shipped import shipped_file
from .weights import resolve_weights

log = logging.getLogger("finer_cam")
SAVE_SIZES = ("input", "grid", "original")
# the shipped official Stanford Cars head (pretrained_models/README.md), found from any working folder;
# train_classifier.py writes its heads beside it (pretrained_models/classifier/best_classifier.pth), never over it
DEFAULT_HEAD = "pretrained_models/classifier/stanford_cars/classifier_cars_DINO.pth"


def _modes(field: str, value) -> None:
    """``--modes``: specifications that parse (:func:`finer_cam.targets.parse_modes`)."""
    parse_modes(value)


_PIXELS = checks.AtLeast(1, "a positive number of pixels", optional=True)  # --image_size, --max_size


@dataclass
class GenerateConfig:
    """What generate_cam.py runs: each field is its flag of the same name (:mod:`finer_cam.settings`)."""

    dataset_path: str = setting(
        flags=("--dataset_path", "--image_paths"), group="input and output",
        help="folder of images (searched recursively; the class is the parent folder's name) or a text file of "
             "image paths, one a line (relative to the file's folder)")
    save_dir: str = setting(
        flags=("--save_dir", "--save_path"),
        help="output folder: one .npy per image mirroring the dataset tree, run.json, index.jsonl")
    save_size: str = setting(
        "input", choices=SAVE_SIZES,
        help="input: float16 maps at the network input size, each normalised to [0, 1]; grid: raw float32 maps on "
             "the patch grid; original: float16 at each image's own size")
    overwrite: bool = setting(False, help="redo every image (and replace a run made with another configuration)")
    backbone: str = BACKBONE.field(
        group="model", help="dinov2: a DINOv2 ViT; clip: CLIP's image tower (with --classifier_path, a head trained "
                            "on its embedding; with --concepts, zero-shot concept maps)")
    model_path: str | None = MODEL_PATH.field()  # None: DEFAULT_MODELS[backbone]
    offline: bool = OFFLINE.field()
    arch: str = ARCH.field()
    clip_pool: str = CLIP_POOL.field()
    classifier_path: str | None = setting(  # None: DEFAULT_HEAD (not used by concept runs)
        None, help=f"linear head: a state dict {{weight [C, D], bias [C]}} (default: {DEFAULT_HEAD}; not with "
                   "--concepts)")
    class_names: str | None = setting(
        None, help="class names, one a line in the head's order (default: class_names.txt beside the head, else the "
                   "Stanford Cars list shipped with finer_cam)")
    concepts: list[str] | None = setting(  # CLIP zero-shot concept run (see concepts.py)
        None, group="CLIP concepts (zero-shot, --backbone clip)", metavar="TEXT",
        help="explain each of these concepts in turn, e.g. \"red crown\" \"black wing\"; the maps get a concept "
             "dimension: [concepts, modes, H, W]")
    concepts_file: str | None = setting(None, help="more concepts, one a line (# comments, blank lines skipped)")
    prompt: str | None = setting(
        None, help=f"template each concept (and --compare_with text) is put into; {{}} marks the place (default: "
                   f"{DEFAULT_PROMPT!r})")
    compare_with: list[str] | None = setting(
        None, metavar="TEXT",
        help="references of every concept, most similar first (e.g. \"bird\"); default: the other concepts, ranked "
             "as classes are")
    truncate: bool = setting(
        False, help="cut texts longer than CLIP's context (77 tokens) instead of stopping with an error")
    modes: list[str] = setting(list(DEFAULT_MODES), group="explanation", metavar="SPEC", check=_modes,
                               help="maps to compute, in this order (see below)")
    method: str = setting("gradcam", choices=METHODS, help="CAM method applied to every objective")
    target: str = setting(
        "label", choices=TARGETS,
        help="label: the class named by the image's folder (falls back to the prediction when the folder matches "
             "no class); predicted: always the predicted class")
    similarity: str = setting(
        "logit-distance", choices=SIMILARITIES,
        help="how the other classes are ranked: |y_i - y_t| ascending, y_i descending, or cosine similarity of the "
             "head's weight rows")
    aug_smooth: bool = setting(
        False, help="average over flipped and rescaled-intensity views (ttach), as pytorch-grad-cam")
    image_size: int | None = setting(  # None: the head's sidecar, else 224
        None, group="preprocessing", check=_PIXELS,
        help="bicubic resize to a square of this side (default: the head's sidecar, else 224, or the CLIP "
             "checkpoint's resolution)")
    max_size: int | None = setting(
        None, check=_PIXELS,
        help="instead of --image_size: keep the aspect ratio, cap the long side, round each side up to a multiple "
             "of the patch")
    normalize: str | None = NORMALIZE.field(  # None: the head's sidecar, else the backbone's own (ImageNet)
        help="input normalisation (default: what the head was trained with, else ImageNet's, or CLIP's with "
             "--backbone clip)")
    batch_size: int = setting(16, group="runtime", check=checks.AtLeast(1), help="images per forward pass")
    num_workers: int | str = NUM_WORKERS.field()  # device.loader_workers
    device: str = DEVICE.field()
    precision: str = setting(  # auto: device.default_precision
        AUTO, choices=(AUTO, *PRECISIONS),
        help="fp32; tf32: float32 with TF32 matrix products on CUDA (Ampere or newer); bf16: autocast (the fastest; "
             "a few contrastive maps differ, see docs/speed.md); auto (the default): tf32 on CUDA, whose maps are "
             "fp32's, fp32 elsewhere. A resumed run keeps the precision it began with")
    compile: bool = setting(  # torch.compile the shared forward (the blocks before the target layer)
        False, help="torch.compile the shared forward pass: pays off on a GPU over many images (compiling takes a "
                    "minute, once per input shape)")
    decode: str = setting(  # data.DECODERS, or auto: data.default_decode
        AUTO, choices=(AUTO, *DECODERS),
        help="pil: decode and resize with PIL in the loader workers; draft: PIL decodes JPEGs at a reduced size "
             "first (faster; the pixels change: most maps stay close, but a few contrastive ones do not, so check on "
             "your data); torchvision: JPEGs decoded in batches on the model's device (nvJPEG on CUDA) and resized "
             "there with torch, other formats by PIL in the workers; auto (the default): torchvision on CUDA, pil "
             "elsewhere. A resumed run keeps the decoding it began with")
    max_pixels: int | None = MAX_PIXELS.field()

    def __post_init__(self) -> None:
        """Every field's value is checked here, once: each against its setting, then the settings that go
        together; what needs the files or the machine (the head, the weights, the device) is checked by
        :func:`prepare`."""
        check_settings(self)
        checks.exclusive(("image_size", self.image_size), ("max_size", self.max_size))
        if self.concepts or self.concepts_file:
            if self.backbone != "clip":
                raise ArgumentError("concepts", problem="needs --backbone clip: concepts are text prompts that CLIP "
                                    "reads")
            if self.classifier_path:
                raise ArgumentError("concepts", problem="excludes --classifier_path: concepts are classified zero-shot "
                                    "by their text, without a trained head")
        elif self.compare_with or self.prompt is not None:
            raise ArgumentError("compare_with" if self.compare_with else "prompt",
                                problem="goes with --concepts (a CLIP concept run)")


@dataclass
class Summary:
    total: int = 0
    processed: int = 0
    skipped: int = 0  # finished by an earlier run
    failed: int = 0
    label_fallback: int = 0  # folder matched no class: the prediction was explained
    errors: list[tuple[str, str]] = field(default_factory=list)
    main: bool = True  # rank 0 of a multi-process run (or the only process): the one that reports

    def to_json(self) -> dict:
        return {"total": self.total, "processed": self.processed, "skipped": self.skipped, "failed": self.failed,
                "label_fallback": self.label_fallback}


@dataclass(frozen=True)
class Runtime:
    """What a run's ``auto`` values resolved to on its machine; run.json records these, not ``auto``."""

    num_workers: int
    decode: str
    precision: str


def resolve_runtime(cfg: GenerateConfig, device: torch.device, recorded: RunRecord | None = None) -> Runtime:
    """``auto`` values for ``device`` (:func:`~finer_cam.device.loader_workers`, :func:`~finer_cam.data.default_decode`,
    :func:`~finer_cam.device.default_precision`). ``recorded`` is the run.json of the run being resumed: its
    decoding path and precision are kept for ``auto``, so that every map of one folder is made the same way
    (a run begun on a CPU and resumed on a GPU goes on as it began)."""

    def chosen(field: str, options: tuple[str, ...], default: str) -> str:
        value = getattr(cfg, field)
        if value != AUTO:
            return value
        kept = getattr(recorded, field, None)
        return kept if kept in options else default

    return Runtime(num_workers=loader_workers(cfg.num_workers, device),
                   decode=chosen("decode", DECODERS, default_decode(device)),
                   precision=chosen("precision", PRECISIONS, default_precision(device)))


def _recorded_run(cfg: GenerateConfig) -> RunRecord | None:
    """The run.json in ``save_dir`` that a rerun resumes (None when there is none, it is not a readable run
    description, or ``--overwrite`` replaces it; :class:`~finer_cam.runstore.RunFolder` reports the unreadable one)."""
    path = Path(cfg.save_dir) / RUN_FILE
    if cfg.overwrite or not path.is_file():
        return None
    try:
        return RunRecord.read(path)
    except FinerCamError:
        return None


@dataclass
class RunSetup:
    """A run once its arguments are checked and its model is loaded: what :func:`run_generate` works with."""

    engine: FinerCAM
    images: ImageList  # what to explain, and the root their relative paths start from
    preprocess: Preprocess
    class_names: list[str]
    record: RunRecord  # what run.json records
    device: torch.device
    concepts: ConceptSet | None  # a CLIP concept run; None for a classifier with a head
    runtime: Runtime  # the loader workers, decoding path and precision in use
    map_names: dict[str, str] = field(default_factory=dict)  # relative image path -> relative map path
    matcher: LabelMatcher = field(init=False)  # folder name -> class index

    def __post_init__(self) -> None:
        self.matcher = LabelMatcher(self.class_names)


@dataclass
class _Todo:
    """The images of this process still to explain: their relative paths and map names, by loader index."""

    rel_paths: list[str]
    indices: list[int]  # positions in rel_paths, in loader order
    map_names: dict[str, str]

    def rel(self, loader_index: int) -> str:
        return self.rel_paths[self.indices[loader_index]]


def _resolve_class_names(cfg: GenerateConfig, head_path: str) -> tuple[list[str], str]:
    if cfg.class_names:
        path = Path(cfg.class_names)
    elif Path(head_path).with_name(CLASS_LIST).is_file():
        path = Path(head_path).with_name(CLASS_LIST)
    else:
        path = DEFAULT_CLASS_LIST
    return read_class_names(path), str(path)


@dataclass
class _Loaded:
    """The model a run explains, and where its classes and weights came from."""

    model: torch.nn.Module
    model_path: Path
    class_names: list[str]
    class_file: str | None  # the class list read (None for concepts)
    head_file: HeadFileRecord | None  # the head file as run.json records it (None for concepts)
    concepts: ConceptSet | None
    sidecar: HeadRecord  # what train_classifier.py recorded beside the head (empty when none)


def _load(cfg: GenerateConfig, device: torch.device, progress: BarFactory | None) -> _Loaded:
    model_spec = cfg.model_path or DEFAULT_MODELS[cfg.backbone]
    if cfg.concepts or cfg.concepts_file:
        concepts = ConceptSet.from_flags(cfg.concepts, cfg.concepts_file, cfg.compare_with, cfg.prompt)
        model_path = resolve_weights(model_spec, cfg.backbone, cfg.offline, progress)
        model = load_concept_classifier(model_path, concepts.texts, device, cfg.clip_pool, cfg.truncate)
        return _Loaded(model, Path(model_path), concepts.class_names, None, None, concepts, HeadRecord())
    head_path = cfg.classifier_path or str(shipped_file(DEFAULT_HEAD))
    if is_special(head_path):  # before any weights are downloaded
        raise FinerCamError(f"{head_path}: not a regular file (a FIFO, device or socket)")
    if not Path(head_path).is_file():
        raise FinerCamError(f"{head_path}: no such file")
    class_names, class_file = _resolve_class_names(cfg, head_path)
    sidecar = read_sidecar(head_path)
    model_path = resolve_weights(model_spec, cfg.backbone, cfg.offline, progress)
    model = load_classifier(model_path, head_path, cfg.arch, device, cfg.backbone, cfg.clip_pool)
    if model.num_classes != len(class_names):
        raise FinerCamError(f"{head_path}: the head has {model.num_classes} classes but {class_file} "
                            f"lists {len(class_names)}; pass the head's class list with --class_names")
    head_file = HeadFileRecord(path=str(Path(head_path).resolve()), num_classes=model.num_classes,
                               sha256=file_sha256(head_path, remember=False))
    return _Loaded(model, Path(model_path), class_names, class_file, head_file, None, sidecar)


def _normalization(cfg: GenerateConfig, sidecar: HeadRecord, kind) -> str:
    """The flag's, else the one the head was trained with, else the backbone's own; a flag that contradicts
    the head is warned about."""
    if cfg.normalize and sidecar.normalize and cfg.normalize != sidecar.normalize:
        log.warning("the head was trained with %s normalisation but --normalize %s was asked for",
                    sidecar.normalize, cfg.normalize)
    return cfg.normalize or sidecar.normalize or kind.normalize


def _input_size(cfg: GenerateConfig, sidecar: HeadRecord, native: int, patch: int) -> int | None:
    """The square side images are resized to (None with ``max_size``): the flag's, else the head's, else the
    backbone's native one, rounded up to a multiple of ``patch`` (said when it changes); a flag that contradicts
    the head is warned about, and one that leaves fewer than two patches a side is refused."""
    checks.patches_a_side("image_size", cfg.image_size, patch)
    checks.patches_a_side("max_size", cfg.max_size, patch)
    size = _requested_size(cfg, sidecar, native)
    if size is not None and patch_multiple(size, patch) != size:
        log.warning("images are resized to %d px, %d rounded up to a multiple of the %d px patch (run.json "
                    "records %d)", patch_multiple(size, patch), size, patch, patch_multiple(size, patch))
        size = patch_multiple(size, patch)
    return size


def _requested_size(cfg: GenerateConfig, sidecar: HeadRecord, native: int) -> int | None:
    trained = sidecar.image_size
    if cfg.image_size and trained and cfg.image_size != trained:
        log.warning("the head was trained at %s px but --image_size %s was asked for", trained, cfg.image_size)
    if cfg.max_size:
        if trained:
            log.warning("the head was trained on %s px squares but --max_size %s keeps each image's aspect ratio "
                        "(long side up to %s px)", trained, cfg.max_size, cfg.max_size)
        return None
    return cfg.image_size or int(trained or native)


def _warm_up(device: torch.device, decode: str) -> threading.Thread | None:
    """Start-up work that does not need the model, started on a thread (returned, to join once the weights
    are read) so that it overlaps reading them: the CUDA context, and the import of torchvision's decoder
    (about a second) for ``torchvision`` decoding, which the first batch would otherwise wait for."""
    if device.type != "cuda" and decode != "torchvision":
        return None

    def work() -> None:
        if device.type == "cuda":
            torch.empty(1, device=device)  # creates the context
        if decode == "torchvision":
            import torchvision.io  # noqa: F401

    thread = threading.Thread(target=work, name="finer-cam-warm-up", daemon=True)
    thread.start()
    return thread


def prepare(cfg: GenerateConfig, progress: BarFactory | None = None) -> RunSetup:
    """Load and check everything a run needs; every user mistake becomes a FinerCamError here, before any work
    (``progress`` shows a download of named weights)."""
    check_folder(cfg.save_dir, "save_dir")
    modes = parse_modes(cfg.modes)
    images = find_images(cfg.dataset_path)
    maps = map_names([images.relative(p) for p in images.paths])
    claim_output(cfg.save_dir, "save_dir", root=images.root, image_folders={p.parent for p in images.paths},
                 writes=[RUN_FILE, INDEX_FILE, *maps.values()])
    device = resolve_device(cfg.device)
    runtime = resolve_runtime(cfg, device, _recorded_run(cfg))
    warming = _warm_up(device, runtime.decode)  # while the weights are read
    try:
        loaded = _load(cfg, device, progress)
    finally:
        if warming is not None:
            warming.join()
    model = loaded.model
    for mode in modes:
        if mode.alpha and all(r > model.num_classes - 1 for r in mode.ranks):
            log.warning("--modes %s: every rank lies beyond the %d other classes, so this mode is plain Grad-CAM "
                        "(its label still says α=%g)", mode.spec, model.num_classes - 1, mode.alpha)
    kind = backbone_kind(model.backbone)
    normalize = _normalization(cfg, loaded.sidecar, kind)
    mean, std = NORMALIZATIONS[normalize]
    size = _input_size(cfg, loaded.sidecar, kind.native_size(model.backbone), model.patch_size)
    preprocess = Preprocess(mean, std, image_size=size, max_size=cfg.max_size, patch=model.patch_size)
    if cfg.compile:
        # the shared no-grad forward is nearly all the work; one compiled graph per input shape (bucketed)
        model.forward_to_target = torch.compile(model.forward_to_target)
    engine = FinerCAM(model, modes=modes, method=cfg.method, similarity=cfg.similarity, precision=runtime.precision)
    record = RunRecord(
        dataset_root=str(images.root), modes=tuple(modes), method=cfg.method, target_layer=model.target_layer_name,
        backbone=BackboneRecord.of({**backbone_shape(model.backbone), **kind.pooling(cfg.clip_pool)},
                                   path=str(loaded.model_path.resolve()), sha256=file_sha256(loaded.model_path),
                                   arch=arch_name(model.backbone, cfg.arch)),
        head=loaded.head_file, concepts=loaded.concepts, class_names_file=loaded.class_file,
        class_names=tuple(loaded.class_names), preprocessing=PreprocessingRecord.of(preprocess, normalize),
        similarity=cfg.similarity, target=cfg.target, save_size=cfg.save_size,
        map_dtype="float32" if cfg.save_size == "grid" else "float16", aug_smooth=cfg.aug_smooth,
        precision=runtime.precision, decode=runtime.decode, compile=cfg.compile, num_workers=runtime.num_workers,
        versions={"finer_cam": __version__, "torch": torch.__version__, "numpy": np.__version__,
                  "python": platform.python_version()})
    return RunSetup(engine, images, preprocess, loaded.class_names, record, device, loaded.concepts, runtime, maps)


def run_generate(cfg: GenerateConfig, progress: BarFactory | None = None, stop: StopRequest | None = None,
                 replace_engine: Callable[[FinerCAM], FinerCAM] | None = None) -> Summary:
    """Explain every image of ``cfg.dataset_path`` into ``cfg.save_dir``, showing progress through ``progress``;
    ``stop`` is checked after every batch (raising :class:`Interrupted`, the finished images kept).

    Batch k+1 is read, decoded and copied to the device (:class:`~finer_cam.pipeline.Prefetcher`) while
    batch k computes, and batch k's maps come back and are handed to the writer threads while batch k+1
    computes. ``replace_engine`` swaps the engine for what it returns for it (the benchmarks measure the
    pipeline around a stand-in network with it)."""
    stop = stop or StopRequest()
    device_type = resolve_device(cfg.device).type
    ranks = init_ranks(device_type)
    if ranks.world > 1 and device_type == "cuda":  # one GPU a rank
        cfg = replace(cfg, device=f"cuda:{ranks.local_rank}")
    setup = prepare(cfg, progress if ranks.is_main else None)
    if replace_engine is not None:
        setup.engine = replace_engine(setup.engine)
    images, preprocess, device = setup.images, setup.preprocess, setup.device
    folder = _open_folder(cfg, setup.record, ranks)
    rel_paths = [images.relative(p) for p in images.paths]
    pending = [i for i, rel in enumerate(rel_paths) if cfg.overwrite or not folder.is_done(rel, setup.map_names[rel])]
    todo = _Todo(rel_paths, ranks.shard(pending), setup.map_names)
    summary = Summary(total=len(rel_paths), skipped=len(rel_paths) - len(pending), main=ranks.is_main)
    progress = progress if ranks.is_main else None
    dataset = ImageDataset([images.paths[i] for i in todo.indices], preprocess, cfg.max_pixels, setup.runtime.decode)
    batches = None
    if cfg.max_size:  # inputs differ in shape: batch images of equal shape together (read off their headers)
        shapes = [preprocess.input_size(*s) if s else None for s in map(displayed_size, dataset.paths)]
        batches = shape_batches(shapes, cfg.batch_size)
        log.debug("%d images in %d input shapes", len(shapes), len(set(shapes)))
    loader = make_loader(dataset, cfg.batch_size, setup.runtime.num_workers, pin_memory=device.type == "cuda",
                         batches=batches)
    bar = open_bar(progress, "Finer-CAM", len(todo.indices))
    writer = MapWriter(folder)
    finished = False
    explained: _Explained | None = None  # the last group computed, whose results are still on their way back
    try:
        with Prefetcher(loader, lambda batch: _ready(batch, preprocess, device), device) as batches:
            packing = _pack_ahead(setup, min(cfg.batch_size, len(todo.indices)))  # while batch 0 is decoded
            for batch in batches:
                if packing is not None:
                    packing.join()
                    packing = None
                for item in batch.failed:
                    rel = todo.rel(item["index"])
                    summary.failed += 1
                    summary.errors.append((rel, item["error"]))
                    log.error("%s: %s", images.root / rel, item["error"])
                    folder.add({"image": rel, "error": item["error"]})
                for group in batch.groups:
                    previous, explained = explained, _explain_group(group, cfg, setup, todo)
                    if previous is not None:  # while this group computes
                        _write_group(previous, cfg, setup, todo, writer, summary)
                bar.update(batch.size)
                stop.check()
        if explained is not None:
            last, explained = explained, None
            _write_group(last, cfg, setup, todo, writer, summary)
        writer.close()
        finished = True
    finally:
        if explained is not None:  # stopped after a computed group: its maps are kept too
            try:
                _write_group(explained, cfg, setup, todo, writer, summary)
            except FinerCamError as exc:
                log.error("%s", exc)
        writer.close(raise_errors=False)  # what was explained is written, whatever stopped the loop
        bar.close()
        folder.close() if finished else folder.release()  # a stopped run lets the next one in
    counts = ranks.sum({"processed": summary.processed, "failed": summary.failed,
                        "label_fallback": summary.label_fallback})
    summary.processed, summary.failed, summary.label_fallback = (counts[k] for k in ("processed", "failed",
                                                                                     "label_fallback"))
    ranks.barrier()  # every rank's maps and index lines are in place
    if ranks.is_main:
        if ranks.world > 1:
            folder.merge_shards()
        folder.finish(summary.to_json())
    ranks.barrier()
    shutdown(ranks)
    return summary


def _open_folder(cfg: GenerateConfig, record: RunRecord, ranks: Ranks) -> RunFolder:
    """Rank 0 opens (checks, compacts) the output folder while the others wait; then each rank appends its
    index lines to a file of its own (merged at the end), or to the index itself in a single process."""
    folder, error = None, None
    if ranks.is_main:
        try:
            folder = RunFolder(cfg.save_dir, record, overwrite=cfg.overwrite)
        except FinerCamError as exc:
            error = exc
    ranks.share_error(error)
    if not ranks.is_main:
        return RunFolder.attach(cfg.save_dir, record, ranks.rank)
    if ranks.world > 1:
        folder.write_to_shard(0)
    return folder


def _pack_ahead(setup: RunSetup, first: int) -> threading.Thread | None:
    """On the CPU, pack the model's weights for oneDNN (:func:`~finer_cam.kernels.prepack`, about a second for
    a ViT-B/14) on a thread while the loader decodes the first batch, instead of in the first forward; for
    inputs of one size, with the rows the first forward gives each layer (``first`` images of ``tokens``
    tokens in the backbone, ``first`` rows in the head). Returns the thread to join before computing."""
    model, pre = getattr(setup.engine, "model", None), setup.preprocess
    if (setup.device.type != "cpu" or setup.runtime.precision == "bf16" or pre.image_size is None or not first
            or not hasattr(model, "backbone") or not hasattr(model, "num_prefix_tokens")):
        return None
    side = pre.input_size(pre.image_size, pre.image_size)[0]
    tokens = model.num_prefix_tokens + (side // model.patch_size) ** 2

    def rows(name: str) -> int:
        return first * tokens if name.startswith("backbone.") else first

    thread = threading.Thread(target=prepack, args=(model, rows), name="finer-cam-pack", daemon=True)
    thread.start()
    return thread


@dataclass
class _Group:
    """Equally shaped images of one loader batch, stacked on the device: ``images`` ``[B, 3, H, W]``."""

    items: list[dict]
    images: torch.Tensor


@dataclass
class _Batch:
    """One loader batch made ready for the model: the items that failed, and the rest grouped by shape."""

    size: int
    failed: list[dict]
    groups: list[_Group]


def _ready(batch: list[dict], preprocess: Preprocess, device: torch.device) -> _Batch:
    """Decode the JPEGs a batch carries undecoded (``--decode torchvision``, in batched kernels on the device),
    group the images by shape and copy each group to the device (from the loader's pinned memory on CUDA)."""
    decode_raw(batch, preprocess, device)
    groups: dict[tuple, list[dict]] = {}
    for item in batch:
        if item["error"] is None:
            groups.setdefault(tuple(item["image"].shape), []).append(item)
    stacked = [_Group(items, torch.stack([item["image"].to(device, non_blocking=True) for item in items]))
               for items in groups.values()]
    return _Batch(len(batch), [item for item in batch if item["error"] is not None], stacked)


@dataclass
class _Explained:
    """A group whose maps and decisions are computed, on their way back to the host (:class:`HostCopy`)."""

    group: _Group
    rels: list[str]
    labels: list[int | None]
    host: HostCopy  # maps [B, M, H, W] (or [B, K, M, H, W]), logits-derived decisions
    raw: torch.Tensor  # the raw maps on the device, for --save_size original


def _explain_group(group: _Group, cfg: GenerateConfig, setup: RunSetup, todo: _Todo) -> _Explained:
    """Explain a batch of equally shaped images; their maps and decisions start their way back to the host
    without waiting (:func:`_write_group` takes them, one group later)."""
    engine, concepts, device = setup.engine, setup.concepts, setup.device
    rels = [todo.rel(item["index"]) for item in group.items]
    x = group.images
    if concepts is None:
        # an image's class is its own parent folder's name, also when that folder is the dataset root (one
        # class folder, or a list whose images all sit in one): nothing else in the list changes it
        labels = [setup.matcher((setup.images.root / rel).parent.name) for rel in rels]
        label_t = torch.tensor([-1 if lab is None else lab for lab in labels], device=device)
        result = engine(x, label_t, cfg.target, aug_smooth=cfg.aug_smooth)
        decisions = {"targets": result.targets}
    else:
        labels = [None] * len(rels)
        result = engine.explain_concepts(x, len(concepts.names), concepts.fixed_references, cfg.aug_smooth)
        decisions = {}
    raw = result.maps  # [B, M, h, w], or [B, K, M, h, w] for concepts
    maps = raw
    if cfg.save_size == "input":
        maps = normalize_maps(resize_maps(raw, tuple(x.shape[-2:]))).half()
    probs = torch.softmax(result.logits, dim=1)
    top_p, top_i = probs.topk(min(5, probs.shape[1]), dim=1)
    host = to_host(maps=maps, references=result.references, predicted=result.logits.argmax(1), top_p=top_p,
                   top_i=top_i, **decisions)
    return _Explained(group, rels, labels, host, raw)


def _write_group(explained: _Explained, cfg: GenerateConfig, setup: RunSetup, todo: _Todo, writer: MapWriter,
                 summary: Summary) -> None:
    """Hand the maps and index lines of an explained group to ``writer`` (once its copies have arrived)."""
    layout = setup.record.layout
    host = explained.host.wait()
    group, rels, labels, raw, x = explained.group.items, explained.rels, explained.labels, explained.raw, \
        explained.group.images
    rankings = host["references"].tolist()  # [B, R], or [B, K, R] for concepts: most similar first
    targets = host["targets"].tolist() if layout.class_per_image else [None] * len(rels)
    maps_cpu = host["maps"]
    predicted = host["predicted"].tolist()
    top_p, top_i = host["top_p"].tolist(), host["top_i"].tolist()
    for b, (item, rel) in enumerate(zip(group, rels)):
        m = maps_cpu[b]
        if cfg.save_size == "original":
            w, h = item["size"]
            m = normalize_maps(resize_maps(raw[b], (h, w))).half().cpu()
        if labels[b] is None and cfg.target == "label" and layout.class_per_image:
            summary.label_fallback += 1
        entry = {
            "image": rel,
            "map": todo.map_names[rel],
            "size": list(item["size"]),
            "input_size": [int(x.shape[-1]), int(x.shape[-2])],
            "label": labels[b],
            "predicted": predicted[b],
            "target": layout.index_target(targets[b]),
            "references": layout.index_references(rankings[b]),
            "ranking": rankings[b],
            "top5": {"indices": top_i[b], "probs": [round(p, 6) for p in top_p[b]]},
        }
        writer.submit(todo.map_names[rel], m.numpy(), entry)
        summary.processed += 1
