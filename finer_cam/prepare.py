"""The work of prepare_dataset.py: a downloaded data set (archive or folder) into the layout the scripts read.

``OUT/train/<class>/<image>`` and ``OUT/test/<class>/<image>`` (Birds-525 also ``OUT/valid/``), images never
re-encoded: moved out of an unpacked archive, hard-linked from a folder (copied where a link is impossible).
CUB-200-2011 also gets ``OUT/boxes.csv`` (evaluate.py's ``--boxes``) and ``OUT/parts.csv`` (its ``--parts``: the
visible part locations), torchvision's Stanford Cars layout ``OUT/boxes.csv``; both key images by
``<class>/<file>``, their path under ``OUT/train`` or ``OUT/test``. Everything is built in a temporary folder
beside ``OUT`` and renamed into place at the end: a failure leaves nothing half-written.

Sources:

- ``stanford_cars``: the class-folder archive the official Finer-CAM README downloads (Kaggle
  ``cyizhuo/stanford-cars-by-classes-folder``: ``train/<class>/``, ``test/<class>/``), or torchvision's
  ``StanfordCars`` layout (``devkit/cars_meta.mat``, ``devkit/cars_train_annos.mat``,
  ``cars_test_annos_withlabels.mat``, ``cars_train/``, ``cars_test/``), read with ``scipy.io.loadmat`` (scipy
  comes with scikit-learn, a runtime requirement);
- ``cub``: ``CUB_200_2011.tgz`` or its unpacked ``CUB_200_2011/`` (``images.txt``, ``train_test_split.txt``,
  ``bounding_boxes.txt``, ``parts/parts.txt``, ``parts/part_locs.txt``, ``images/<class>/``);
- ``birds525``: the Kaggle Birds-525 archive or folder (``train/``, ``valid/``, ``test/`` class folders).
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .data import IMAGE_EXTENSIONS, walk_images
from .errors import FinerCamError
from .atomic import current_umask, json_text
from .userfiles import inside, safe_relative
from .progress import BarFactory, StopRequest, open_bar

log = logging.getLogger("finer_cam")
DATASETS = ("stanford_cars", "cub", "birds525")
ARCHIVE_SUFFIXES = (".zip", ".tgz", ".tar.gz", ".tar", ".tar.bz2", ".tar.xz")
SEARCH_DEPTH = 3  # how deep under the source the data set's own top folder may sit
# in every prepared folder: what was prepared, from where; --overwrite replaces only a folder that holds it
RECORD = ".finer_cam_prepared.json"


@dataclass
class PrepareResult:
    out: Path
    images: dict[str, int] = field(default_factory=dict)  # split -> images
    classes: int = 0
    extras: list[str] = field(default_factory=list)  # boxes.csv, parts.csv


@dataclass
class _Plan:
    """What goes where: ``(source file, split, class, file name)``, the splits that must not end up empty,
    and extra CSV files. Every source file and output name in it has passed :func:`finer_cam.userfiles.inside`."""

    items: list[tuple[Path, str, str, str]] = field(default_factory=list)
    csvs: dict[str, tuple[list[str], list[list]]] = field(default_factory=dict)  # name -> (header, rows)
    splits: tuple[str, ...] = ("train", "test")


@dataclass(frozen=True)
class _Source:
    """Where the images come from: an unpacked archive (moved out of it) or the user's folder (linked or
    copied, never moved). ``top`` is the folder they may come from: what the archive was unpacked into, or
    the folder given as --source."""

    path: Path  # what --source named
    top: Path
    move: bool

    def file(self, root: Path, relative: str, what: str) -> Path:
        """``root / relative`` for a path an annotation or a walk names: a relative path inside ``root``
        (:func:`inside`) that no symbolic link leads out of the source (``top``)."""
        path = inside(root, relative, what, follow_links=True)
        inside(self.top, path.relative_to(self.top).as_posix(), what)
        return path


def run_prepare(name: str, source: str | Path, out: str | Path, overwrite: bool = False,
                progress: BarFactory | None = None, stop: StopRequest | None = None) -> PrepareResult:
    """Prepare data set ``name`` from ``source`` (an archive or a folder) into ``out``; ``stop`` is checked after
    every image (nothing is kept then either)."""
    if name not in DATASETS:
        raise FinerCamError(f"{name!r}: not a data set this prepares (one of {', '.join(DATASETS)})")
    source, out = Path(source), Path(out)
    if not source.exists():
        raise FinerCamError(f"--source {source}: no such file or folder")
    _claim(source, out, overwrite)
    remove_stale_builds(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
        os.chmod(build, 0o777 & ~current_umask())  # a prepared folder gets the umask's mode, not mkdtemp's 0700
    except OSError as exc:
        raise FinerCamError(f"--out {out}: cannot write beside it ({exc.strerror or exc})") from None
    try:
        if source.is_dir():
            root, where = source, _Source(source, source, move=False)
        else:
            root = _unpack(source, build / ".source")
            where = _Source(source, root, move=True)
        plan = PLANNERS[name](root, where)
        result = _carry_out(plan, build, where.move, progress, name, stop or StopRequest())
        shutil.rmtree(build / ".source", ignore_errors=True)
        (build / RECORD).write_text(json_text({"dataset": name, "source": str(source.resolve()),
                                               "images": result.images, "classes": result.classes}, indent=2) + "\n",
                                    encoding="utf-8")
        _swap_into_place(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    result.out = out
    return result


def _claim(source: Path, out: Path, overwrite: bool) -> None:
    """The writer rule for ``--out``: never the source or a folder holding it or inside it, and an existing
    folder with files is replaced only with ``overwrite`` and only when this prepared it (its record)."""
    src, dst = source.resolve(), out.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise FinerCamError(f"--out {out}: {'is' if dst == src else 'holds' if dst in src.parents else 'lies inside'} "
                            f"--source {source}; the source is never written into or replaced (use another folder)")
    if out.exists() and not out.is_dir():
        raise FinerCamError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FinerCamError(f"--out {out}: already holds files; remove it or pass --overwrite to replace it")
        if not (out / RECORD).is_file():
            raise FinerCamError(f"--out {out}: holds files that prepare_dataset.py did not write (no {RECORD}); "
                                "--overwrite replaces only a folder it prepared: remove it yourself or use another")


def remove_stale_builds(out: Path) -> int:
    """Remove the temporary folders that runs killed while preparing ``out`` left beside it
    (``.OUT.PID.XXXX.tmp`` of a process that no longer runs, and ``.OUT.old-PID``); returns how many."""
    removed = 0
    parent = out.parent
    if not parent.is_dir():
        return 0
    for path in parent.glob(f".{glob.escape(out.name)}.*"):
        pid = _build_pid(path.name[len(out.name) + 2:])
        if pid is None or not path.is_dir() or path.is_symlink() or _alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    if removed:
        log.info("%s: removed %d temporary folders that interrupted runs left beside it", out, removed)
    return removed


def _build_pid(rest: str) -> int | None:
    """The process ID in ``PID.XXXX.tmp`` or ``old-PID`` (None for any other name)."""
    if rest.startswith("old-") and rest[4:].isdigit():
        return int(rest[4:])
    head, _, tail = rest.partition(".")
    return int(head) if head.isdigit() and tail.endswith(".tmp") else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _carry_out(plan: _Plan, build: Path, move: bool, progress: BarFactory | None, name: str,
               stop: StopRequest) -> PrepareResult:
    result = PrepareResult(out=build)
    if not plan.items:
        raise FinerCamError(f"{name}: the source holds no images")
    counts = {split: sum(1 for item in plan.items if item[1] == split) for split in plan.splits}
    empty = [split for split, n in counts.items() if not n]
    if empty:
        raise FinerCamError(f"{name}: no images for the {' and '.join(empty)} split in the source (see the warnings "
                            "above); nothing was written")
    classes = set()
    with open_bar(progress, f"prepare {name}", len(plan.items)) as bar:
        for src, split, cls, file in plan.items:
            dst = inside(build, f"{split}/{cls}/{file}", f"{name}: output")
            dst.parent.mkdir(parents=True, exist_ok=True)
            _place(src, dst, move)
            result.images[split] = result.images.get(split, 0) + 1
            classes.add(cls)
            bar.update(1)
            stop.check()
    result.classes = len(classes)
    for file, (header, rows) in plan.csvs.items():
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        (build / file).write_text(buf.getvalue(), encoding="utf-8")
        result.extras.append(file)
    return result


def _place(src: Path, dst: Path, move: bool) -> None:
    """The same bytes at ``dst``: moved (out of the unpacked archive), else hard-linked, else copied. A link is
    never moved or reproduced: its target, already confined, is linked or copied, so nothing outside the
    unpacked archive moves and the prepared folder holds no links."""
    try:
        if move and not src.is_symlink():
            os.replace(src, dst)
            return
        target = src.resolve(strict=True)  # (os.link would link the link itself)
        try:
            os.link(target, dst)
        except OSError:  # another file system, or links not supported
            shutil.copy2(target, dst)
    except FileNotFoundError:
        raise FinerCamError(f"{src}: listed by the annotations but missing; nothing was written") from None
    except IsADirectoryError:
        raise FinerCamError(f"{src}: listed by the annotations as an image but a folder; nothing was written") from None
    except OSError as exc:
        raise FinerCamError(f"{dst}: cannot write ({exc.strerror or exc}); nothing was written") from None


def _swap_into_place(build: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(build, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(build, out)


# ---------------------------------------------------------------------------------------------- archives

def _unpack(archive: Path, into: Path) -> Path:
    """Unpack a zip or tar archive (tar members through the ``data`` filter: no paths leaving ``into``, no
    devices or links outside it)."""
    lower = archive.name.lower()
    try:
        if lower.endswith(".zip") or (not lower.endswith(ARCHIVE_SUFFIXES) and zipfile.is_zipfile(archive)):
            with zipfile.ZipFile(archive) as z:
                z.extractall(into)
        elif lower.endswith(ARCHIVE_SUFFIXES) or tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                t.extractall(into, filter="data")
        else:
            raise FinerCamError(f"--source {archive}: neither a folder nor a zip or tar archive")
    except tarfile.FilterError as exc:  # a member that would leave the folder: refused, not damaged
        raise FinerCamError(f"--source {archive}: refused member ({_first_line(exc)}): an archive member may not be "
                            "an absolute path, leave the archive through '..' or a link, or be a device; nothing was "
                            "written") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise FinerCamError(f"--source {archive}: truncated or damaged archive ({_first_line(exc)}); nothing was "
                            "written") from None
    except OSError as exc:
        if exc.errno is None:  # gzip/bz2/lzma report a cut stream as a bare OSError
            raise FinerCamError(f"--source {archive}: truncated or damaged archive ({_first_line(exc)}); nothing "
                                "was written") from None
        raise FinerCamError(f"--source {archive}: cannot unpack ({exc.strerror or exc}); nothing was written") from None
    return into


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _find(root: Path, test, what: str, source: Path) -> Path:
    """The shallowest folder under ``root`` (``root`` included, up to SEARCH_DEPTH deep) where ``test`` holds."""
    level = [root]
    for _ in range(SEARCH_DEPTH + 1):
        for folder in level:
            if test(folder):
                return folder
        level = sorted(c for f in level for c in f.iterdir() if c.is_dir() and c.name != "__MACOSX")
    raise FinerCamError(f"--source {source}: no {what} found")


def _class_folders(split: Path, name: str, where: _Source) -> list[tuple[Path, str, str, str]]:
    """The images of a split's class folders; images directly in the split folder (no class) are skipped,
    with a warning that names how many."""
    items = []
    for folder in sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for img in walk_images(folder):
            rel = img.relative_to(folder).as_posix()
            src = where.file(folder, rel, f"--source {where.path}: {name}/{folder.name}")
            items.append((src, name, folder.name, rel))
    loose = [p for p in split.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()]
    if loose:
        log.warning("%s/: %d images lie directly in the split folder, not in a class folder; skipped (first: %s)",
                    name, len(loose), sorted(loose)[0].name)
    return items


def _has_splits(*names: str):
    return lambda folder: all((folder / n).is_dir() for n in names)


# -------------------------------------------------------------------------------------------- data sets

def _plan_class_folders(root: Path, where: _Source, splits: tuple[str, ...], optional: tuple[str, ...] = ()) -> _Plan:
    top = _find(root, _has_splits(*splits), f"{'/, '.join(splits)}/ class folders", where.path)
    plan = _Plan(splits=splits + tuple(s for s in optional if (top / s).is_dir()))
    for split in plan.splits:
        plan.items += _class_folders(top / split, split, where)
    return plan


def plan_stanford_cars(root: Path, where: _Source) -> _Plan:
    """The Kaggle class-folder layout, or torchvision's StanfordCars layout (devkit .mat annotations)."""
    def devkit(folder: Path) -> bool:
        return (folder / "devkit").is_dir() or (folder / "cars_train").is_dir()

    def class_folders(folder: Path) -> bool:
        return _has_splits("train", "test")(folder)

    top = _find(root, lambda f: devkit(f) or class_folders(f), "Stanford Cars layout (train/ and test/ class "
                "folders, or torchvision's devkit/, cars_train/, cars_test/)", where.path)
    if class_folders(top) and not devkit(top):
        return _plan_class_folders(top, where, ("train", "test"))
    return _plan_torchvision_cars(top, where)


def _loadmat(path: Path, source: Path, top: Path):
    if not path.is_file():
        raise FinerCamError(f"--source {source}: missing annotation file {path.relative_to(top).as_posix()}; "
                            "nothing was written")
    from scipy.io import loadmat  # scipy comes with scikit-learn

    try:
        return loadmat(str(path), squeeze_me=True)
    except Exception as exc:  # scipy raises several types for a damaged file
        raise FinerCamError(f"{path}: not a readable .mat annotation file ({_first_line(exc)})") from None


def _plan_torchvision_cars(top: Path, where: _Source) -> _Plan:
    import numpy as np

    source = where.path
    meta = _loadmat(top / "devkit" / "cars_meta.mat", source, top)
    try:
        names = [str(n).replace("/", "-") for n in np.atleast_1d(meta["class_names"])]  # "Ram C/V" is "Ram C-V"
    except KeyError:
        raise FinerCamError(f"{top / 'devkit' / 'cars_meta.mat'}: no class_names") from None
    for name in names:
        if safe_relative(name) is None:
            raise FinerCamError(f"{top / 'devkit' / 'cars_meta.mat'}: class name {name!r} cannot be a folder name; "
                                "nothing was written")
    plan = _Plan()
    boxes = []
    for split, mat, images in (("train", top / "devkit" / "cars_train_annos.mat", top / "cars_train"),
                               ("test", top / "cars_test_annos_withlabels.mat", top / "cars_test")):
        if not mat.is_file() and (top / "devkit" / mat.name).is_file():
            mat = top / "devkit" / mat.name
        annotations = np.atleast_1d(_loadmat(mat, source, top)["annotations"])
        if not images.is_dir():
            raise FinerCamError(f"--source {source}: missing image folder {images.name}/; nothing was written")
        for a in annotations:
            try:
                cls, file = names[int(a["class"]) - 1], str(a["fname"])
                box = [float(a[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")]
            except (ValueError, IndexError, KeyError, TypeError):
                raise FinerCamError(f"{mat}: an annotation without a valid class, fname and bbox") from None
            if int(a["class"]) < 1:
                raise FinerCamError(f"{mat}: an annotation of class {int(a['class'])} (classes count from 1)")
            src = where.file(images, file, f"{mat.name}: fname")
            plan.items.append((src, split, cls, file))
            boxes.append([f"{cls}/{file}", *box])
    plan.csvs["boxes.csv"] = (["image", "x1", "y1", "x2", "y2"], boxes)
    return plan


def _read_table(path: Path, source: Path, columns: int, top: Path) -> list[list[str]]:
    """A CUB text table: one record a line, ``columns`` fields split on white space (the last takes the rest)."""
    if not path.is_file():
        raise FinerCamError(f"--source {source}: missing annotation file {path.relative_to(top).as_posix()}; "
                            "nothing was written")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=columns - 1)
        if len(fields) != columns:
            raise FinerCamError(f"{path.name}: line {n}: expected {columns} fields, found {len(fields)}")
        rows.append(fields)
    return rows


def plan_cub(root: Path, where: _Source) -> _Plan:
    """CUB-200-2011: class folders split by train_test_split.txt, boxes and visible part locations."""
    source = where.path
    top = _find(root, lambda f: (f / "images.txt").is_file() or (f / "images").is_dir(),
                "CUB_200_2011 folder (images.txt, images/)", source)
    images = dict(_read_table(top / "images.txt", source, 2, top))
    split = {i: s for i, s in _read_table(top / "train_test_split.txt", source, 2, top)}
    boxes = _read_table(top / "bounding_boxes.txt", source, 5, top)
    part_names = dict(_read_table(top / "parts" / "parts.txt", source, 2, top))
    locations = _read_table(top / "parts" / "part_locs.txt", source, 5, top)
    plan = _Plan()
    key = {}
    for image_id, rel in images.items():
        if image_id not in split:
            raise FinerCamError(f"train_test_split.txt: image {image_id} ({rel}) has no split")
        if "/" not in rel:
            raise FinerCamError(f"images.txt: image {image_id}: {rel!r} is not CLASS/FILE (a path under images/); "
                                "nothing was written")
        src = where.file(top / "images", rel, f"images.txt: image {image_id}")
        cls, file = rel.split("/", 1)
        plan.items.append((src, "train" if split[image_id] == "1" else "test", cls, file))
        key[image_id] = rel
    try:
        box_rows = [[key[i], float(x), float(y), float(x) + float(w), float(y) + float(h)] for i, x, y, w, h in boxes]
        part_rows = [[key[i], part_names[p], float(x), float(y)] for i, p, x, y, visible in locations
                     if visible == "1"]
    except KeyError as exc:
        raise FinerCamError(f"--source {source}: the annotations name an unknown image or part ({exc})") from None
    except ValueError as exc:
        raise FinerCamError(f"--source {source}: a coordinate that is not a number ({exc})") from None
    plan.csvs["boxes.csv"] = (["image", "x1", "y1", "x2", "y2"], box_rows)
    plan.csvs["parts.csv"] = (["image", "part", "x", "y"], part_rows)
    return plan


def plan_birds525(root: Path, where: _Source) -> _Plan:
    return _plan_class_folders(root, where, ("train", "test"), optional=("valid",))


PLANNERS = {"stanford_cars": plan_stanford_cars, "cub": plan_cub, "birds525": plan_birds525}
