"""A generate_cam.py output folder: one ``.npy`` of maps per image, ``run.json``, ``index.jsonl``; the map
files' names, format and checked reading, resume, and the writer threads."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from .atomic import FolderLock, atomic_write_bytes, json_text, remove_stale_temporaries
from .errors import ArgumentError, FinerCamError
from .records import MapLayout, RunRecord
from .userfiles import is_special, safe_relative

log = logging.getLogger("finer_cam")
RUN_FILE = "run.json"
INDEX_FILE = "index.jsonl"
SHARD_INDEX = "index.rank{}.jsonl"  # one per rank of a torchrun run, merged into INDEX_FILE at its end


def save_maps(path: Path, maps: np.ndarray) -> None:
    """``[M, H, W]`` maps as a plain ``.npy`` (no pickle), atomically."""
    atomic_write_bytes(path, lambda f: np.save(f, np.ascontiguousarray(maps), allow_pickle=False))


def load_maps(path: str | Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


class SkippedFile(Exception):
    """A file (an image or its map file) that cannot be used; the run goes on without it."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


def read_map_file(path: Path, layout: MapLayout) -> np.ndarray:
    """``[*lead, h, w]`` maps of one image (``lead``: the run's :attr:`~MapLayout.lead_shape`), checked to be
    finite floats."""
    lead = layout.lead_shape
    if not path.is_file():
        raise SkippedFile(path, "map file missing")
    try:
        maps = load_maps(path)
    except (OSError, ValueError, EOFError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SkippedFile(path, f"not a readable .npy map file ({why})") from None
    if maps.ndim != len(lead) + 2 or tuple(maps.shape[:len(lead)]) != tuple(lead) or min(maps.shape[-2:]) < 1:
        want = ", ".join(map(str, lead))
        raise SkippedFile(path, f"maps of shape {maps.shape}, expected [{want}, H, W] for the run's {layout.dims}")
    if not np.issubdtype(maps.dtype, np.floating) or not np.isfinite(maps).all():
        raise SkippedFile(path, f"maps must be finite floats (dtype {maps.dtype})")
    return maps


NAME_MAX = 255  # bytes in one file name on the usual file systems


def map_names(relative_images: list[str]) -> dict[str, str]:
    """Image path -> map path, both relative, unique per image by construction.

    An image keeps the documented ``<stem>.npy`` (``a/b.jpg -> a/b.npy``) when no other image of its folder has
    that stem and no other image is called ``<stem>``; otherwise its map is ``<file name>.npy`` (``a/b.jpg.npy``).
    Two stem names differ (their stems do), two file names differ (the images do), and a stem name equals a
    file name only when one image's stem is another's name, which takes the file name. A file name that the
    suffix would push past 255 bytes is cut and made unique with a hash of the image path (the index names
    each image's map file, so nothing depends on the name's form).
    """
    names = set(relative_images)
    stems: dict[str, int] = {}
    for rel in relative_images:
        stem = _stem(rel)
        stems[stem] = stems.get(stem, 0) + 1
    out = {}
    for rel in relative_images:
        stem = _stem(rel)
        keep = stems[stem] == 1 and (stem == rel or stem not in names)
        out[rel] = _fit_name((stem if keep else rel) + ".npy", rel)
    return out


def _stem(rel: str) -> str:
    """``a/b.jpg -> a/b``: the path without the file name's last suffix (a name without one is its own stem)."""
    folder, _, name = rel.rpartition("/")
    base = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{folder}/{base}" if folder else base


def entry_map(entry: dict) -> str:
    """The map file of an index line, relative to the run folder: its ``map`` (every index the project writes
    names it), else the documented ``<stem>.npy`` of an index written before maps were named there."""
    return entry["map"] if "map" in entry else _stem(entry["image"]) + ".npy"


def _fit_name(path: str, key: str) -> str:
    folder, _, name = path.rpartition("/")
    if len(name.encode("utf-8")) <= NAME_MAX - 4:  # room for visualize.py's .jpg/.png twin
        return path
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]
    short = name.encode("utf-8")[:180].decode("utf-8", errors="ignore")
    return f"{folder}/{short}~{digest}.npy" if folder else f"{short}~{digest}.npy"


def read_index(path: Path) -> dict[str, dict]:
    """``index.jsonl`` as image -> entry (the last line of an image wins; torn lines are dropped).

    An entry's ``image`` and ``map`` must be relative paths that stay inside their folders
    (:func:`safe_relative`); a line naming anything else is left out, with a warning.
    """
    entries: dict[str, dict] = {}
    if not path.exists():
        return entries
    if is_special(path):
        raise FinerCamError(f"{path}: not a regular file (a FIFO, device or socket)")
    refused = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except (ValueError, RecursionError):
                continue  # a line torn by a kill
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
                continue
            if safe_relative(entry["image"]) is None or ("map" in entry and safe_relative(entry["map"]) is None):
                refused += 1
                continue
            entries[entry["image"]] = entry
    if refused:
        log.warning("%s: %d lines name an image or map that is not a relative path inside the folder; left out",
                    path, refused)
    return entries


def read_run(cam_dir: str | Path, argument: str = "cam_dir") -> tuple[RunRecord, dict[str, dict]]:
    """A generate_cam.py output folder: its ``run.json`` (every field checked) and its index entries (see
    :func:`read_index`)."""
    folder = Path(cam_dir)
    if not folder.is_dir():
        raise ArgumentError(argument, Path(cam_dir), "no such folder")
    run_path = folder / RUN_FILE
    if not run_path.exists():
        raise ArgumentError(argument, Path(cam_dir), f"no {RUN_FILE} (not a folder written by generate_cam.py)")
    return RunRecord.read(run_path), read_index(folder / INDEX_FILE)


def dataset_root(run: RunRecord, dataset_dir: str | None, cam_dir: str | Path) -> Path:
    """The images' root: ``--dataset_dir`` when given, else the one run.json recorded; it must exist."""
    if dataset_dir:
        if not Path(dataset_dir).is_dir():
            raise ArgumentError("dataset_dir", Path(dataset_dir), "no such folder")
        return Path(dataset_dir)
    root = run.dataset_root
    if not root or not Path(root).is_dir():
        raise FinerCamError(f"{Path(cam_dir) / RUN_FILE}: its dataset root {root!r} does not exist (moved?); "
                            "pass --dataset_dir")
    return Path(root)


class RunFolder:
    """``save_dir`` with its ``run.json`` and append-only ``index.jsonl``.

    On opening, an existing run must have the same configuration (else FinerCamError, unless ``overwrite``);
    index lines of finished images are kept (one per image, the last wins), a torn last line is dropped.
    """

    def __init__(self, save_dir: str | Path, record: RunRecord, overwrite: bool = False) -> None:
        self.dir = Path(save_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArgumentError("save_dir", Path(save_dir), f"cannot create the folder ({exc.strerror})") from None
        if not os.access(self.dir, os.W_OK):
            raise ArgumentError("save_dir", Path(save_dir), "the folder is not writable")
        self.lock = FolderLock(self.dir, "save_dir")  # held until close(): one run at a time per folder
        try:
            self._open(record, overwrite)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, record: RunRecord, overwrite: bool) -> None:
        self.record = record
        self.entries: dict[str, dict] = {}
        self._lock = threading.Lock()  # index lines come from MapWriter's threads
        run_path = self.dir / RUN_FILE
        if run_path.exists():  # our folder: what a killed run was writing is gone
            remove_stale_temporaries(self.dir)
        if run_path.exists() and not overwrite:
            try:
                old = RunRecord.read(run_path)
            except FinerCamError as exc:
                raise FinerCamError(f"{exc}; use another --save_dir or --overwrite") from None
            changed = old.resume_differences(record)
            if changed:
                raise FinerCamError(f"{run_path}: this folder holds a run with a different {', '.join(changed)}; "
                                    "use another --save_dir, or --overwrite to replace it")
            self.entries = self._read_entries()
        record.write(run_path)
        # the index compacted: one line per finished image, no torn line, the shard files of a killed
        # multi-process run folded in; errors and lost maps are redone
        self._rewrite_index(keep_errors=False)
        self._index = open(self.dir / INDEX_FILE, "a", encoding="utf-8")

    @classmethod
    def attach(cls, save_dir: str | Path, record: RunRecord, rank: int) -> RunFolder:
        """The folder as another rank sees it once rank 0 has opened it: its finished images, and this
        rank's own index file to append to."""
        self = cls.__new__(cls)
        self.dir, self.record, self._lock, self.lock = Path(save_dir), record, threading.Lock(), None
        self.entries = read_index(self.dir / INDEX_FILE)
        self._index = open(self.dir / SHARD_INDEX.format(rank), "a", encoding="utf-8")
        return self

    def write_to_shard(self, rank: int) -> None:
        """Append index lines to this rank's own file from now on (rank 0 of a multi-process run)."""
        self._index.close()
        self._index = open(self.dir / SHARD_INDEX.format(rank), "a", encoding="utf-8")

    def merge_shards(self) -> None:
        """Fold every rank's index file into the index (rank 0, once all ranks have finished)."""
        self.close()
        self.entries = self._read_entries()
        self._rewrite_index(keep_errors=True)
        self._index = open(self.dir / INDEX_FILE, "a", encoding="utf-8")

    def _shard_files(self) -> list[Path]:
        return sorted(self.dir.glob(SHARD_INDEX.format("*")))

    def _read_entries(self) -> dict[str, dict]:
        entries = read_index(self.dir / INDEX_FILE)
        for shard in self._shard_files():
            entries.update(read_index(shard))
        return entries

    def _rewrite_index(self, keep_errors: bool) -> None:
        self.entries = {k: v for k, v in self.entries.items() if self.is_done(k) or (keep_errors and "error" in v)}
        lines = "".join(json_text(e) + "\n" for e in self.entries.values())
        atomic_write_bytes(self.dir / INDEX_FILE, lambda f: f.write(lines.encode("utf-8")))
        for shard in self._shard_files():
            shard.unlink()

    def is_done(self, image: str, map_name: str | None = None) -> bool:
        """Whether ``image`` is finished: its index line and its map file are in place (and, given
        ``map_name``, the map has that name: an image whose map a run named otherwise is redone)."""
        entry = self.entries.get(image)
        if not entry or "error" in entry or (map_name is not None and entry.get("map") != map_name):
            return False
        return (self.dir / entry.get("map", "")).is_file()

    def add(self, entry: dict) -> None:
        """Append one image's index line (after its map file is in place); safe from several threads."""
        line = json_text(entry) + "\n"
        with self._lock:
            self.entries[entry["image"]] = entry
            try:
                self._index.write(line)
                self._index.flush()
            except OSError as exc:
                raise FinerCamError(f"{self.dir / INDEX_FILE}: cannot write ({exc.strerror or exc})") from None

    def finish(self, summary: dict) -> None:
        self._index.close()
        replace(self.record, summary=summary).write(self.dir / RUN_FILE)
        self.release()

    def close(self) -> None:
        if not self._index.closed:
            self._index.close()

    def release(self) -> None:
        """Let another run open the folder (after :meth:`finish`, or when the run stops)."""
        self.close()
        if self.lock is not None:
            self.lock.release()


class MapWriter:
    """Writes each image's map file, then its index line, on a small thread pool off the main loop.

    Writes stay atomic and in that order, so a killed run still leaves only finished images in the index.
    A failed write (disk full, ...) is raised as a FinerCamError by a later :meth:`submit` or by
    :meth:`close`; at most ``max_pending`` writes wait, which bounds the memory they hold.
    """

    def __init__(self, folder: RunFolder, threads: int = 2, max_pending: int = 64) -> None:
        self.folder = folder
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="finer-cam-writer")
        self._pending: deque[Future] = deque()

    def submit(self, relative_map: str, maps: np.ndarray, entry: dict) -> None:
        """Write ``maps`` to ``folder/relative_map``, then append ``entry`` to the index."""
        while self._pending and (self._pending[0].done() or len(self._pending) >= self.max_pending):
            self._pending.popleft().result()  # raises the write's error, if any
        self._pending.append(self._pool.submit(self._write, self.folder.dir / relative_map, maps, entry))

    def _write(self, path: Path, maps: np.ndarray, entry: dict) -> None:
        try:
            save_maps(path, maps)
        except OSError as exc:
            raise FinerCamError(f"{path}: cannot write ({exc.strerror or exc})") from None
        self.folder.add(entry)

    def close(self, raise_errors: bool = True) -> None:
        """Wait for every pending write; raise the first error unless ``raise_errors`` is false."""
        first = None
        while self._pending:
            try:
                self._pending.popleft().result()
            except FinerCamError as exc:
                first = first or exc
        self._pool.shutdown(wait=True)
        if first is not None and raise_errors:
            raise first
