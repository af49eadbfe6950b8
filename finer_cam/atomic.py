"""Writing that never leaves half a file: strict JSON, atomic replacement, and the lock of an output folder."""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from pathlib import Path

from .errors import ArgumentError

try:
    import fcntl
except ImportError:  # not on Windows: folders are not locked there
    fcntl = None

# in every output folder of the project: the lock of the run writing there, and the sign that the folder is
# an output (image walks skip folders that hold it, so outputs inside a data set are never read as images)
OUTPUT_MARKER = ".finer_cam.lock"


def finite_json(data):
    """``data`` with every NaN or infinite float replaced by None, so that it is valid JSON."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    return data


def json_text(data, indent: int | None = None) -> str:
    """Strict JSON (never NaN or Infinity: those become null), as the project writes it."""
    return json.dumps(finite_json(data), indent=indent, ensure_ascii=False, allow_nan=False)


def current_umask() -> int:
    """The process's umask (read without changing it where /proc tells it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_HELD_LOCKS: set[int] = set()  # descriptors of the folder locks this process holds
_AT_FORK = threading.Lock()
_at_fork_registered = False


def _drop_locks_in_child() -> None:
    """In a child made by fork (loader workers): close its copies of the parent's lock descriptors, so that a
    child never holds a folder lock (which would outlive a parent killed with kill -9). Closing a copy does
    not unlock the parent's: the lock goes with the last descriptor of its open file."""
    for fd in list(_HELD_LOCKS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


def _register_at_fork() -> None:
    global _at_fork_registered
    with _AT_FORK:
        if not _at_fork_registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_drop_locks_in_child)
            _at_fork_registered = True


class FolderLock:
    """An exclusive lock on an output folder (``OUTPUT_MARKER`` in it, holding the PID), so that two runs
    never write into one folder at once. The operating system drops it when the process ends, however it
    ends: a killed run never leaves a lock behind. Child processes never hold it: its descriptor is not
    inherited across exec, and a forked child (a loader worker) closes its copy at once."""

    def __init__(self, folder: str | Path, argument: str) -> None:
        """Lock ``folder`` (made first when missing); its errors are ArgumentErrors of ``argument``."""
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArgumentError(argument, Path(folder), f"cannot create the folder ({exc.strerror or exc})") from None
        self.path = Path(folder) / OUTPUT_MARKER
        self.existed = self.path.exists()
        _register_at_fork()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise ArgumentError(argument, Path(folder), f"cannot write there ({exc.strerror or exc})") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                finally:
                    os.close(fd)
                raise ArgumentError(argument, Path(folder), f"in use by another run (process {holder}); wait for it to "
                                    "finish or use another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self.fd: int | None = fd
        _HELD_LOCKS.add(fd)

    def release(self) -> None:
        if self.fd is not None:
            _HELD_LOCKS.discard(self.fd)
            os.close(self.fd)
            self.fd = None


def atomic_write_bytes(path: Path, write) -> None:
    """Write through ``write(file)`` into a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name is kept short, so that a file name near the 255-byte limit still has a twin
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:48]}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # what open(path, "w") would give (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporary files that :func:`atomic_write_bytes` leaves when a run is killed mid-write
    (``.NAME.XXXX.tmp`` anywhere under ``folder``); returns how many."""
    removed = 0
    for path in folder.rglob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def write_json(path: Path, data: dict) -> None:
    """``data`` as strict JSON (see :func:`json_text`), atomically."""
    text = json_text(data, indent=2) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))
