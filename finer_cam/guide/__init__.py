"""The work of field_guide.py: what tells each confusable pair of classes of a generate_cam.py run apart.

1. the pairs (:mod:`.pairs`): from index.jsonl, how often B is the rank-1 reference of A's images and, on
   labelled data, how often A's images are predicted as B, ranked;
2. where the difference lies (:mod:`.parts`), per pair and direction: the share of the contrastive map of the
   images of A whose reference is B inside each part, against the plain (alpha 0) map's share of the same
   images, with 95% intervals, ranked; parts are annotated (``--masks`` label maps, ``--parts`` locations) or
   found by the backbone (k-means over patch tokens); exemplars are the images where the difference is most
   concentrated;
3. the site (:mod:`.site`): ``index.html``, a page per pair, class and discovered part, ``guide.json`` and
   PNG figures, built in a folder beside ``save_dir`` and moved into place when complete.

Maps are read one image at a time (only the shares are kept), so memory does not grow with the maps.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import checks
from ..device import loader_workers, resolve_device
from ..errors import ArgumentError, FinerCamError
from ..atomic import FolderLock, OUTPUT_MARKER
from ..records import MapLayout, RunRecord
from ..runstore import SkippedFile, dataset_root, read_map_file, read_run
from ..userfiles import check_folder, inside
from ..progress import BarFactory, StopRequest, open_bar
from ..settings import (CAM_DIR, DEVICE, MAX_PIXELS, NUM_WORKERS, PART_RADIUS, RUN_ARCH, RUN_CLASSIFIER_PATH,
                        RUN_DATASET_DIR, RUN_MODEL_PATH, check_settings, setting)
from .pairs import (RANK_BY, Direction, Modes, Pair, Sample, choose_modes, directions, find_pairs, part_stats,
                    rank_exemplars, samples_of)
from .parts import AnnotatedParts, Discovered, discover_parts, region_composition

log = logging.getLogger("finer_cam")
GUIDE_FILE = "guide.json"
GUIDE_KIND = "finer_cam field guide"
ANNOTATED, DISCOVERED = "annotated", "discovered"
CONCEPT_RUN = ("a concept run (--concepts): the field guide compares the classes of a classifier and does not take "
               "CLIP concept maps (not supported)")


@dataclass
class GuideConfig:
    """What field_guide.py runs: each field is its flag of the same name (:mod:`finer_cam.settings`)."""

    cam_dir: str = CAM_DIR.field(help="a generate_cam.py output folder with a plain (alpha 0) and a contrastive mode")
    save_dir: str = setting(
        help="the guide's folder: new, empty, or a guide written before (it is replaced as a whole)")
    pairs: int = setting(  # pairs that get a page (every pair is in guide.json)
        20, check=checks.AtLeast(0, "0 (no pair pages) or more"), help="how many of the ranked pairs get a page")
    mode: str | None = setting(  # the contrastive mode; None: by the rule of pairs.choose_modes
        None, help="the contrastive mode to read (default: by the rule below)")
    rank_by: str | None = setting(  # lift or share; None: lift (share when mode is the plain one)
        None, choices=RANK_BY,
        help="rank parts by lift (contrastive minus plain share), the contrastive share, or the plain share "
             "(default: lift)")
    masks: str | None = setting(
        None, metavar="DIR",
        help="part annotations: label maps DIR/<image path, extension .png> with DIR/labels.json, as evaluate.py "
             "--mask_format labels reads them; each region is a part")
    parts: str | None = setting(
        None, metavar="CSV",
        help="instead of --masks: part locations, a CSV image,part,x,y in original image pixels (prepare_dataset.py "
             "cub writes parts.csv); each part is a disc around its location")
    part_radius: float = PART_RADIUS.field(
        help="a located part's disc radius, as a fraction of the image's shorter side")
    discover: bool = setting(  # also discover parts when annotations are given
        False, help="also discover parts (k-means over patch tokens) when --masks or --parts are given")
    parts_k: int = setting(8, check=checks.AtLeast(2, "at least 2 parts"), help="how many parts to discover")
    exemplars: int = setting(4, check=checks.AtLeast(0), help="exemplar images per direction")
    dataset_dir: str | None = RUN_DATASET_DIR.field()
    model_path: str | None = RUN_MODEL_PATH.field(
        help="backbone checkpoint for discovering parts (default: run.json's)")
    classifier_path: str | None = RUN_CLASSIFIER_PATH.field()
    arch: str | None = RUN_ARCH.field()
    batch_size: int = setting(32, check=checks.AtLeast(1), help="images per forward pass when discovering parts")
    num_workers: int | str = NUM_WORKERS.field()  # device.loader_workers
    device: str = DEVICE.field(help="auto, cpu, cuda or cuda:N (for discovering parts)")
    thumb: int = setting(160, check=checks.AtLeast(16, "a thumbnail height of at least 16 pixels"),
                         help="thumbnail height in pixels")
    max_pixels: int | None = MAX_PIXELS.field()

    def __post_init__(self) -> None:
        """Every field's value is checked here, once: each against its setting, then the settings that go
        together (and the masks' labels.json)."""
        check_settings(self)
        checks.exclusive(("masks", self.masks), ("parts", self.parts))
        if self.masks and not (Path(self.masks) / "labels.json").is_file():
            raise ArgumentError("masks", Path(self.masks), "expected label maps with a labels.json (the format "
                                "evaluate.py --mask_format labels reads)")
        if Path(self.save_dir).resolve() == Path(self.cam_dir).resolve():
            raise ArgumentError("save_dir", Path(self.save_dir), "is the run folder (--cam_dir); give a folder of "
                                "its own")


@dataclass
class GuideResult:
    save_dir: Path
    pairs: int = 0  # pairs found
    paged: int = 0  # pairs with a page
    images: int = 0  # images whose maps were read
    failed: int = 0  # images whose maps (or mask) could not be read
    kinds: list[str] = field(default_factory=list)
    guide: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ the folder

def check_guide_folder(save_dir: str | Path) -> None:
    """``save_dir`` is the guide's own: missing, empty (but for the lock file), or holding a ``guide.json``
    that field_guide.py wrote; anything else is an ArgumentError (the guide replaces the whole folder)."""
    check_folder(save_dir, "save_dir")
    folder = Path(save_dir)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ArgumentError("save_dir", folder, "not a folder")
    names = {p.name for p in folder.iterdir()} - {OUTPUT_MARKER}
    if not names:
        return
    try:
        kind = json.loads((folder / GUIDE_FILE).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind != GUIDE_KIND:
        raise ArgumentError("save_dir", folder, "holds files that are not a field guide (no guide.json written by "
                            "field_guide.py); the guide replaces its folder, so give a new or empty one")


def _move_into_place(built: Path, save_dir: Path) -> None:
    """Swap the finished guide ``built`` in for ``save_dir`` (two renames), then delete the old one."""
    old = None
    if save_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{save_dir.name}.old-", dir=save_dir.parent))
        os.rename(save_dir, old / "guide")
    os.rename(built, save_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------ the work

@dataclass
class Shares:
    """Per kind of parts, the share of each image's contrastive and plain map in each part ``[N, P]``."""

    names: dict[str, list[str]]
    contrastive: dict[str, np.ndarray]
    plain: dict[str, np.ndarray]


def _measure(samples: list[Sample], wanted: list[int], cam_dir: Path, layout: MapLayout, modes: Modes,
             annotated: AnnotatedParts | None, discovered: Discovered | None, result: GuideResult,
             progress: BarFactory | None, stop: StopRequest) -> Shares:
    """Read the maps of the ``wanted`` samples one at a time and keep only their shares per part."""
    names = {}
    if annotated is not None:
        names[ANNOTATED] = annotated.names
    if discovered is not None:
        names[DISCOVERED] = discovered.names
    out = Shares(names, {k: np.full((len(samples), len(v)), np.nan) for k, v in names.items()},
                 {k: np.full((len(samples), len(v)), np.nan) for k, v in names.items()})
    with open_bar(progress, "field guide", len(wanted)) as bar:
        for i in wanted:
            s = samples[i]
            try:
                maps = read_map_file(inside(cam_dir, s.map, f"{cam_dir}/index.jsonl"), layout)
                heats = [maps[modes.contrastive], maps[modes.plain]]
                found = {}
                if annotated is not None:
                    found[ANNOTATED] = annotated.shares(s, heats)
                if discovered is not None:
                    found[DISCOVERED] = discovered.shares(i, heats)
            except (SkippedFile, FinerCamError) as exc:
                path = getattr(exc, "path", cam_dir / s.map)
                log.error("%s: %s (skipped)", path, exc)
                result.failed += 1
            else:
                result.images += 1
                for kind, values in found.items():
                    if values is not None:
                        out.contrastive[kind][i], out.plain[kind][i] = values[0], values[1]
            bar.update(1)
            stop.check()
    return out


def _rank(dirs: dict[tuple[int, int], Direction], shares: Shares, rank_by: str, exemplars: int) -> None:
    for d in dirs.values():
        rows = np.asarray(d.images, dtype=np.int64)
        for kind, names in shares.names.items():
            d.parts[kind] = part_stats(names, shares.contrastive[kind][rows].reshape(len(rows), len(names)),
                                       shares.plain[kind][rows].reshape(len(rows), len(names)), rank_by)
            d.exemplars[kind] = rank_exemplars(d, kind, shares.contrastive[kind], shares.plain[kind], names,
                                               exemplars)


def run_guide(cfg: GuideConfig, progress: BarFactory | None = None, stop: StopRequest | None = None) -> GuideResult:
    """Build the field guide of ``cfg.cam_dir`` into ``cfg.save_dir``."""
    stop = stop or StopRequest()
    check_guide_folder(cfg.save_dir)
    run, entries = read_run(cfg.cam_dir)
    if not run.layout.class_per_image:
        raise FinerCamError(f"--cam_dir {cfg.cam_dir}: {CONCEPT_RUN}")
    modes = choose_modes(run.modes, cfg.mode, cfg.cam_dir)
    class_names = list(run.class_names)
    samples, problems = samples_of(entries, modes, len(class_names))
    for line in problems:
        log.warning("%s", line)
    if not samples:
        raise FinerCamError(f"--cam_dir {cfg.cam_dir}: index.jsonl lists no explained images")
    pairs = find_pairs(samples)
    if not pairs:
        raise FinerCamError(f"--cam_dir {cfg.cam_dir}: no image has a reference class other than its own, so there "
                            "is no pair of classes to compare")
    dirs = directions(samples, pairs)
    annotated = AnnotatedParts(cfg.masks, cfg.parts, cfg.part_radius) if (cfg.masks or cfg.parts) else None
    save_dir = Path(cfg.save_dir)
    created = not save_dir.exists()
    lock = FolderLock(save_dir, "save_dir")  # one build at a time; the folder itself is replaced at the end
    try:
        built = Path(tempfile.mkdtemp(prefix=f".{save_dir.name}.building-", dir=save_dir.parent))
        try:
            result = _build(cfg, run, samples, pairs, dirs, modes, annotated, built, progress, stop)
            _move_into_place(built, save_dir)
        except BaseException:
            shutil.rmtree(built, ignore_errors=True)
            if created:  # leave nothing behind where there was nothing
                lock.path.unlink(missing_ok=True)
                save_dir.rmdir()
            raise
    finally:
        lock.release()
    result.save_dir = save_dir
    return result


def _build(cfg: GuideConfig, run: RunRecord, samples: list[Sample], pairs: list[Pair],
           dirs: dict[tuple[int, int], Direction], modes: Modes, annotated: AnnotatedParts | None, built: Path,
           progress: BarFactory | None, stop: StopRequest) -> GuideResult:
    from .site import render

    build_lock = FolderLock(built, "save_dir")  # marks the guide as an output folder, never read as images
    try:
        result = GuideResult(Path(cfg.save_dir), pairs=len(pairs), paged=min(cfg.pairs, len(pairs)))
        wanted = sorted({i for d in dirs.values() for i in d.images})
        root = None
        discovered = None
        if annotated is None or cfg.discover:
            root = dataset_root(run, cfg.dataset_dir, cfg.cam_dir)
            discovered = _discover(cfg, run, samples, root, built, progress, stop)
        shares = _measure(samples, wanted, Path(cfg.cam_dir), run.layout, modes, annotated, discovered, result, progress,
                          stop)
        if annotated is not None and annotated.found == 0:
            raise FinerCamError(f"{annotated.source}: names no image of the run (expected e.g. "
                                f"{_expected_annotation(cfg, samples[0])})")
        if discovered is not None and annotated is not None and annotated.truth is not None:
            region_composition(discovered, annotated, samples)
        rank_by = cfg.rank_by or "lift"
        _rank(dirs, shares, rank_by, cfg.exemplars)
        result.kinds = list(shares.names)
        if root is None:
            try:
                root = dataset_root(run, cfg.dataset_dir, cfg.cam_dir)
            except FinerCamError as exc:
                log.warning("%s; the guide is built without pictures of the images", exc)
        result.guide = render(built, cfg, run, samples, pairs, dirs, modes, shares.names, discovered, root,
                              rank_by, result, progress)
    finally:
        build_lock.release()
    return result


def _expected_annotation(cfg: GuideConfig, sample: Sample) -> str:
    if cfg.masks:
        return str(Path(cfg.masks) / Path(sample.image).with_suffix(".png"))
    return f"a row with image {sample.image!r}"


def _discover(cfg: GuideConfig, run: RunRecord, samples: list[Sample], root: Path, built: Path,
              progress: BarFactory | None, stop: StopRequest) -> Discovered:
    from ..evaluate import load_run_model

    device = resolve_device(cfg.device)
    model = load_run_model(run, cfg.cam_dir, device, cfg.model_path, cfg.classifier_path, cfg.arch)
    work = Path(tempfile.mkdtemp(prefix=".tokens-", dir=built))
    try:
        return discover_parts(samples, root, model, run, cfg.parts_k, work, device, cfg.batch_size,
                              loader_workers(cfg.num_workers, device), cfg.max_pixels, progress=progress, stop=stop)
    finally:
        shutil.rmtree(work, ignore_errors=True)
