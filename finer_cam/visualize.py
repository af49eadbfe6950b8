"""The work of visualize.py: one labelled strip per explained image, and an optional grid figure.

A strip is, left to right: the image; an example image of its first reference class (the class the first
contrasting mode compared against), one of the run's own images labelled with that class; then one overlay
per mode. Everything needed is in the generate_cam.py output folder (``run.json``, ``index.jsonl``, the maps)
and the images its index names.
"""

from __future__ import annotations

import fnmatch
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import checks
from .data import ImageError, load_image
from .errors import ArgumentError, FinerCamError
from .atomic import FolderLock, atomic_write_bytes, remove_stale_temporaries
from .records import MapLayout, RunRecord, mode_label
from .runstore import SkippedFile, dataset_root, entry_map, read_map_file, read_run
from .targets import Mode
from .userfiles import check_folder, claim_output, inside
from .overlay import blend, colormap_lut, compose_strip, fit_map, grid_figure, label_panel, resize_image
from .progress import BarFactory, StopRequest, open_bar
from .settings import CAM_DIR, MAX_PIXELS, RUN_DATASET_DIR, check_settings, setting

log = logging.getLogger("finer_cam")
FORMATS = ("jpg", "png")
JPEG_MAX = 65535  # pixels on a side that JPEG can hold; a wider strip is written as PNG


def _figure_file(field: str, value) -> None:
    """``--grid``: a file name whose suffix names a figure format."""
    if value is not None and Path(value).suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise ArgumentError(field, Path(value), "give a .png, .pdf, .svg or .jpg file name")


@dataclass
class VisualizeConfig:
    """What visualize.py runs: each field is its flag of the same name (:mod:`finer_cam.settings`); the colour
    map is looked up and the output folders are checked by :func:`run_visualize`."""

    cam_dir: str = CAM_DIR.field(help="a generate_cam.py output folder (run.json, index.jsonl, the .npy maps)")
    save_dir: str = setting(flags=("--save_dir", "--save_path"),
                            help="where the strips go, mirroring the dataset tree")
    dataset_dir: str | None = RUN_DATASET_DIR.field(  # None: the dataset_root of run.json
        help="the images' root folder (default: the dataset_root recorded in run.json)")
    size: int | None = setting(  # panel height in pixels; None: the image's own
        None, check=checks.AtLeast(8, "a panel height of at least 8 pixels", optional=True),
        help="panel height in pixels, aspect kept (default: each image's own resolution)")
    colormap: str = setting("jet", help="an OpenCV (jet, turbo, ...) or matplotlib (viridis, ...) colour map")
    alpha: float = setting(0.5, check=checks.Finite("a blend weight between 0 and 1", at_least=0, at_most=1),
                           help="weight of the colour map in the blend (0: image only)")
    format: str = setting("jpg", choices=FORMATS, help="file type of the strips")
    limit: int | None = setting(None, check=checks.AtLeast(1, optional=True),
                                help="at most this many images (in path order)")
    max_pixels: int | None = MAX_PIXELS.field()
    images: list[str] | None = setting(  # relative paths or glob patterns
        None, metavar="PATH",
        help="only these images: paths relative to the dataset root as in index.jsonl, or glob patterns")
    grid: str | None = setting(
        None, metavar="FILE", check=_figure_file,
        help="also write one figure of images x modes with a colour bar (.png, .pdf, .svg or .jpg)")
    grid_rows: int = setting(6, check=checks.AtLeast(1, "at least 1 image in the grid"),
                             help="images in the --grid figure (the first ones drawn)")

    def __post_init__(self) -> None:
        """Every field's value is checked here, once, against its setting."""
        check_settings(self)


@dataclass
class VisualizeSummary:
    total: int = 0
    written: int = 0
    failed: int = 0
    not_explained: int = 0  # index lines of images that generate_cam.py could not read
    errors: list[tuple[str, str]] = field(default_factory=list)


def _prob(entry: dict, cls: int) -> float | None:
    top = entry.get("top5") or {}
    for i, p in zip(top.get("indices", []), top.get("probs", [])):
        if i == cls:
            return p
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_entry(entry: dict, layout: MapLayout) -> None:
    """An index line's fields as generate_cam.py writes them, or a FinerCamError naming the first that is not
    (``top5`` indices and numeric probabilities; ``target``, ``predicted`` and ``label`` class indices;
    ``references`` per mode, a list of them per concept for a concept run)."""
    concepts = not layout.class_per_image
    top = entry.get("top5")
    if top is not None and not (isinstance(top, dict) and isinstance(top.get("indices", []), list)
                                and isinstance(top.get("probs", []), list)
                                and all(_is_int(i) for i in top.get("indices", []))
                                and all(_is_number(p) for p in top.get("probs", []))):
        raise FinerCamError(f"index.jsonl: {entry['image']}: 'top5' is not {{\"indices\": [classes], \"probs\": "
                            "[numbers]}")
    for key in ("predicted", "label") + (() if concepts else ("target",)):
        if entry.get(key) is not None and not _is_int(entry[key]):
            raise FinerCamError(f"index.jsonl: {entry['image']}: {key!r} is not a class index ({entry[key]!r})")
    refs = entry.get("references")
    per_mode = [refs] if not concepts else (refs if isinstance(refs, list) else [None])
    if refs is not None and not all(isinstance(r, dict) and all(isinstance(v, list) and all(map(_is_int, v))
                                                               for v in r.values()) for r in per_mode):
        raise FinerCamError(f"index.jsonl: {entry['image']}: 'references' is not "
                            f"{'a list per concept of ' if concepts else ''}{{mode: [classes]}}")


def _with_prob(text: str, p: float | None) -> str:
    return f"{text} p={p:.3f}" if p is not None else f"{text} (not in top 5)"


def first_reference(references: dict, modes: tuple[Mode, ...]) -> int | None:
    """The rank-1 reference of the first mode that compares against any class (None when no mode does), from
    an image's (or a concept's) ``{mode: [classes]}``."""
    for mode in modes:
        if mode.alpha and references.get(mode.name):
            return references[mode.name][0]
    return None


class Examples:
    """Example images by class: the images of the run's own index whose label is that class (nothing else is
    searched, so an example is always one of the images the run explained)."""

    def __init__(self, entries: dict[str, dict]) -> None:
        self.by_class: dict[int, list[str]] = {}
        for rel, entry in entries.items():
            label = entry.get("label")
            if isinstance(label, int) and not isinstance(label, bool) and "error" not in entry:
                self.by_class.setdefault(label, []).append(rel)

    def pick(self, cls: int, not_this: str) -> str | None:
        """A relative path of an image of ``cls`` other than ``not_this`` (first in sorted order)."""
        options = sorted(r for r in self.by_class.get(cls, []) if r != not_this)
        return options[0] if options else None


def select(entries: dict[str, dict], patterns: list[str] | None, limit: int | None) -> list[dict]:
    """Entries in path order, those matching any of ``patterns`` (exact paths or globs), at most ``limit``."""
    chosen = [entries[k] for k in sorted(entries)]
    if patterns:
        chosen = [e for e in chosen if any(e["image"] == p or fnmatch.fnmatchcase(e["image"], p) for p in patterns)]
    return chosen[:limit] if limit is not None else chosen


def _placeholder(height: int, width: int) -> np.ndarray:
    return np.full((height, max(width, 1), 3), 235, np.uint8)


def make_strips(image: np.ndarray, maps: np.ndarray, entry: dict, run: RunRecord, example: np.ndarray | None,
                lut: np.ndarray, alpha: float, height: int | None) -> tuple[np.ndarray, list[tuple[str, list[np.ndarray]]]]:
    """The figure of one image ``[H, W, 3]`` and its maps ``[*lead, h, w]`` (the run's :class:`MapLayout`): one
    labelled strip per row of panels, stacked. A row is the image (labelled with the target class and the
    prediction; for a concept run, with the concept), for an image's class an ``example`` of its first
    reference class, then one overlay per mode labelled with what it contrasts with. Also returns each row's
    grid title and heats."""
    if height is not None:
        image = resize_image(image, height)
    h, w = image.shape[:2]
    layout = run.layout
    strips, rows = [], []
    for row, row_maps, references in zip(layout.rows, layout.row_maps(maps), layout.row_references(entry)):
        heats = [fit_map(m, (w, h)) for m in row_maps]
        panels = _lead_panels(image, entry, run, row.concept, references, example, (h, w))
        for panel, heat in zip(row.panels, heats):
            refs = references.get(panel.mode.name) or []
            second = f"vs {', '.join(run.class_name(r) for r in refs)}" if panel.mode.alpha and refs else "plain CAM"
            panels.append(label_panel(blend(image, heat, lut, alpha), [panel.label, second]))
        strips.append(compose_strip(panels))
        title = run.class_name(entry.get("target"), default=entry["image"]) if row.concept is None \
            else f"{row.name} ({entry['image']})"
        rows.append((title, heats))
    gap = np.full((4, strips[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([part for strip in strips for part in (strip, gap)][:-1], axis=0), rows


def _lead_panels(image: np.ndarray, entry: dict, run: RunRecord, concept: int | None, references: dict,
                 example: np.ndarray | None, size: tuple[int, int]) -> list[np.ndarray]:
    """The panels before a row's overlays: the image labelled with its target class (and the prediction when it
    differs) and an example of its first reference class; for concept ``k``, the image labelled with it."""
    h, w = size
    if concept is not None:
        names = run.layout.concepts
        return [label_panel(image, [_with_prob(names[concept], _prob(entry, concept)),
                                    f"concept {concept + 1} of {len(names)}"])]
    target = entry.get("target")
    lines = [_with_prob(run.class_name(target), _prob(entry, target))]
    if entry.get("predicted") is not None and entry.get("predicted") != target:
        lines.append(_with_prob(f"predicted {run.class_name(entry['predicted'])}", _prob(entry, entry["predicted"])))
    else:
        lines.append("image (target class)")
    panels = [label_panel(image, lines)]
    ref = first_reference(references, run.modes)
    if ref is not None:
        ex = resize_image(example, h) if example is not None else _placeholder(h, w)
        panels.append(label_panel(ex, [_with_prob(run.class_name(ref), _prob(entry, ref)),
                                       "most similar class" if example is not None else "no example image found"]))
    return panels


def strip_name(map_rel: str, fmt: str) -> str:
    """The strip of map ``a/b.npy`` under ``--save_dir``: ``a/b.jpg`` (or ``.png``)."""
    return (map_rel[:-4] if map_rel.endswith(".npy") else map_rel) + "." + fmt


def strip_format(image: np.ndarray, fmt: str) -> str:
    """``fmt``, or ``png`` for a strip too large for JPEG."""
    return "png" if fmt == "jpg" and max(image.shape[:2]) > JPEG_MAX else fmt


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG" if fmt == "jpg" else "PNG", **({"quality": 92} if fmt == "jpg" else {}))
    return buf.getvalue()


def check_config(cfg: VisualizeConfig) -> np.ndarray:
    """What needs the machine: the colour map's table (returned) and the output folders."""
    if cfg.grid is not None:
        if Path(cfg.grid).is_dir():
            raise ArgumentError("grid", Path(cfg.grid), "a folder; give a file name")
        check_folder(Path(cfg.grid).parent, "grid")
    check_folder(cfg.save_dir, "save_dir")
    return colormap_lut(cfg.colormap)


def run_visualize(cfg: VisualizeConfig, progress: BarFactory | None = None,
                  stop: StopRequest | None = None) -> VisualizeSummary:
    """Write the strips (and the grid) for the images of ``cfg.cam_dir``, showing progress through ``progress``."""
    stop = stop or StopRequest()
    lut = check_config(cfg)
    run, entries = read_run(cfg.cam_dir)
    root = dataset_root(run, cfg.dataset_dir, cfg.cam_dir)
    summary = VisualizeSummary()
    failed_before = [e for e in entries.values() if "error" in e]
    summary.not_explained = len(failed_before)
    explained = {k: e for k, e in entries.items() if "error" not in e}
    chosen = select(explained, cfg.images, cfg.limit)
    if not chosen:
        what = f"matching {' '.join(cfg.images)}" if cfg.images else "with maps"
        raise FinerCamError(f"--cam_dir {cfg.cam_dir}: no explained images {what} in index.jsonl")
    summary.total = len(chosen)
    image_folders = {(root / e["image"]).parent for e in entries.values()}
    claim_output(cfg.save_dir, "save_dir", root=root, image_folders=image_folders,
                 writes=[strip_name(entry_map(e), f) for e in chosen for f in {cfg.format, "png"}])
    if cfg.grid is not None:
        claim_output(Path(cfg.grid).parent, "grid", root=root, image_folders=image_folders)
    examples = Examples(explained)
    grid_rows = []
    lock = FolderLock(cfg.save_dir, "save_dir")  # also marks the strips as outputs, never read as images
    try:
        if lock.existed:  # our folder: what a killed run was writing is gone
            remove_stale_temporaries(Path(cfg.save_dir))
        with open_bar(progress, "overlays", len(chosen)) as bar:
            for entry in chosen:
                _draw_one(entry, cfg, run, root, examples, lut, grid_rows, summary)
                bar.update(1)
                stop.check()
    finally:
        lock.release()
    if cfg.grid and grid_rows:
        fig = grid_figure(grid_rows, [mode_label(m) for m in run.modes], lut, cfg.alpha)
        buf = io.BytesIO()
        fig.savefig(buf, format=Path(cfg.grid).suffix.lower().lstrip(".").replace("jpg", "jpeg"))
        atomic_write_bytes(Path(cfg.grid), lambda f: f.write(buf.getvalue()))
    return summary


def _draw_one(entry: dict, cfg: VisualizeConfig, run: RunRecord, root: Path, examples: Examples, lut: np.ndarray,
              grid_rows: list, summary: VisualizeSummary) -> None:
    """One image's strip, written; a bad image or map file is logged and counted, not raised."""
    rel = entry["image"]
    layout = run.layout
    try:
        check_entry(entry, layout)
        map_rel = entry_map(entry)
        image_path = inside(root, rel, "index.jsonl: image", follow_links=True)  # the user's own data set
        map_path = inside(cfg.cam_dir, map_rel, "index.jsonl: map")
        image = np.asarray(load_image(image_path, cfg.max_pixels))
        maps = read_map_file(map_path, layout)
        example = None
        ref = first_reference(layout.row_references(entry)[0], run.modes) if layout.class_per_image else None
        if ref is not None:
            ex_rel = examples.pick(ref, not_this=rel)
            if ex_rel is not None:
                try:
                    example = np.asarray(load_image(inside(root, ex_rel, "index.jsonl: image", follow_links=True),
                                                    cfg.max_pixels))
                except ImageError as exc:
                    log.warning("%s: example image unreadable (%s)", root / ex_rel, exc)
        strip, rows = make_strips(image, maps, entry, run, example, lut, cfg.alpha, cfg.size)
        _write_strip(strip, map_rel, cfg)
        summary.written += 1
        small = resize_image(image, 160) if cfg.grid else None
        for title, heats in rows:
            if cfg.grid and len(grid_rows) < cfg.grid_rows:
                grid_rows.append((small, [fit_map(hm, small.shape[1::-1]) for hm in heats], title))
    except FinerCamError as exc:  # an index line that points outside its folder
        summary.failed += 1
        summary.errors.append((rel, str(exc)))
        log.error("%s/index.jsonl: %s (skipped)", cfg.cam_dir, exc)
    except (ImageError, SkippedFile) as exc:
        where = root / rel if isinstance(exc, ImageError) else exc.path
        summary.failed += 1
        summary.errors.append((rel, str(exc)))
        log.error("%s: %s (skipped)", where, exc)
    except OSError as exc:
        raise FinerCamError(f"--save_dir {cfg.save_dir}: cannot write ({exc.strerror or exc})") from None


def _write_strip(strip: np.ndarray, map_rel: str, cfg: VisualizeConfig) -> None:
    """The strip beside where its map lies in the run folder, mirrored under ``--save_dir``; a strip too large
    for JPEG is written as PNG, with a warning."""
    fmt = strip_format(strip, cfg.format)
    path = inside(cfg.save_dir, strip_name(map_rel, fmt), "index.jsonl: map")
    if fmt != cfg.format:
        log.warning("%s: the strip is %dx%d pixels, more than JPEG holds (%d); written as PNG", path,
                    strip.shape[1], strip.shape[0], JPEG_MAX)
    atomic_write_bytes(path, lambda f: f.write(_encode(strip, fmt)))
