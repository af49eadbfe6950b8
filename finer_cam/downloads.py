"""Files fetched once with the standard library: verified, never half-written, each failure one line.

:func:`download` is the ``fetch`` that :mod:`finer_cam.weights` hands to ``dinov2.hub`` (the DINOv2 names) and
``clip.checkpoint`` (OpenAI's checkpoints, checked against the sha256 in their URL), so every named checkpoint
the project fetches comes through it. ``FINER_CAM_OFFLINE=1`` forbids every such download.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoints import CheckpointError
from .atomic import atomic_write_bytes

try:
    import fcntl
except ImportError:  # not on Windows: there a partial file is judged by its age alone
    fcntl = None

log = logging.getLogger("finer_cam")

OFFLINE_ENV = "FINER_CAM_OFFLINE"
TIMEOUT_S = 60.0  # one stalled socket operation (connect or read), not the whole download
CHUNK = 1 << 20
MIN_RATE = 10 * 1024  # bytes per second: a transfer slower than this over a whole window is given up
RATE_WINDOW_S = 60.0
STALE_S = 600  # where files cannot be locked: a partial file untouched this long belongs to a killed download
# (description, total, unit) -> a tqdm-like bar with update() and close(), as finer_cam.progress.BarFactory
BarFactory = Callable[[str, int, str], Any]


class DownloadError(CheckpointError):
    """Weights that could not be fetched (or may not be: offline); the message names the file, URL and why."""


class WrongFile(CheckpointError):
    """Raised by a download's ``check``: the file loads but is not what was asked for (its message says why)."""


def mirror_base(env: str, default: str) -> str:
    """The base URL of a set of weights: ``default``, or the mirror that the environment variable ``env`` names
    (an ``http://``, ``https://`` or ``file://`` URL); anything else is a :class:`DownloadError` naming ``env``."""
    value = os.environ.get(env, "").strip()
    if not value:
        return default
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port  # raises on a port that is not a number
    except ValueError as exc:
        raise DownloadError(f"{env}={value!r} is not a URL ({_why(exc)}); set it to the http(s):// address of a "
                            "mirror, or unset it") from None
    if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not parts.hostname):
        raise DownloadError(f"{env}={value!r} is not an http://, https:// or file:// URL; set it to the address "
                            f"of a mirror (a folder: file://{os.path.abspath(value)}), or unset it")
    return value.rstrip("/")


def offline_requested(offline: bool = False) -> bool:
    """``offline``, or ``FINER_CAM_OFFLINE`` set to anything but empty, 0, false or no."""
    return offline or os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


# --------------------------------------------------------------------------------------------- download

def download(url: str, dest: Path, sha256: str | None = None, check: Callable[[Path], object] | None = None,
             offline: bool = False, progress: BarFactory | None = None, what: str | None = None,
             min_rate: float = MIN_RATE, window_s: float = RATE_WINDOW_S) -> Path:
    """Fetch ``url`` into ``dest`` through a temporary file beside it, renamed only once it is complete (the
    announced size), matches ``sha256`` (when given) and passes ``check`` (a loader raising CheckpointError, or
    :class:`WrongFile` for a file that loads but is not the one named).

    Every failure (offline, no network, DNS, HTTP error, a connection cut, a transfer slower than ``min_rate``
    bytes/s over ``window_s`` seconds, wrong size or hash, a full disk, an unwritable cache) raises
    :class:`DownloadError` with one line, and leaves no partial file behind. The partial file is locked while
    it is written (an operating-system lock, dropped however the process ends), so a later download removes one
    that a killed process left, and never one still being written.
    """
    dest = Path(dest)
    what = what or dest.name
    if offline_requested(offline):
        raise DownloadError(f"{what}: {dest} is not on disk and downloads are off (--offline or {OFFLINE_ENV}); "
                            f"download {url} and put it at {dest}")
    fail = f"cannot download {what} from {url}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(dest)
        fd, tmp, lock = _new_partial(dest)
    except OSError as exc:
        raise DownloadError(f"{fail}: the cache folder {dest.parent} is not writable ({_why(exc)}); make it "
                            f"writable, or download the file yourself and give its path") from None
    try:
        digest = _fetch(url, fd, tmp, fail, progress, what, _RateFloor(min_rate, window_s))
        if sha256 is not None and digest != sha256:
            raise DownloadError(f"{fail}: its sha256 is {digest}, expected {sha256} (a corrupted or wrong file); "
                                "nothing was kept, rerun to try again")
        if check is not None:
            try:
                check(tmp)
            except WrongFile as exc:
                why = str(exc).replace(str(tmp), "the file")
                raise DownloadError(f"{fail}: {why}; nothing was kept") from None
            except CheckpointError as exc:
                why = str(exc).replace(str(tmp), "the file")
                raise DownloadError(f"{fail}: the file received is not a loadable checkpoint ({why}); nothing was "
                                    "kept") from None
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)
    remember_sha256(dest, digest)
    log.info("%s: downloaded to %s", what, dest)
    return dest


@dataclass
class _RateFloor:
    """Gives up a transfer that brings fewer than ``min_rate`` bytes/s over a whole window of ``window_s``."""

    min_rate: float
    window_s: float
    start: float = field(default_factory=time.monotonic)
    start_bytes: int = 0

    def check(self, done: int, fail: str, total: int | None) -> None:
        now = time.monotonic()
        elapsed = now - self.start
        if elapsed < self.window_s:
            return
        rate = (done - self.start_bytes) / elapsed
        if rate < self.min_rate:
            of = f" of {total}" if total else ""
            raise DownloadError(f"{fail}: it arrived at {rate:.0f} bytes/s over {elapsed:.0f} s, below the floor of "
                                f"{self.min_rate:.0f} bytes/s (after {done}{of} bytes); nothing was kept, rerun "
                                "later or download the file yourself and give its path")
        self.start, self.start_bytes = now, done


def _fetch(url: str, fd: int, tmp: Path, fail: str, progress: BarFactory | None, what: str,
           floor: _RateFloor) -> str:
    """Stream ``url`` into the open file ``fd``; returns the sha256 of what was written."""
    digest, done, total = hashlib.sha256(), 0, None
    bar = None
    with os.fdopen(fd, "wb") as out:
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "finer-cam"})
            with urllib.request.urlopen(request, timeout=min(TIMEOUT_S, floor.window_s)) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                free = shutil.disk_usage(tmp.parent).free
                if total is not None and total > free:
                    raise DownloadError(f"{fail}: it takes {total / 2**20:.0f} MiB and {tmp.parent} has "
                                        f"{free / 2**20:.0f} MiB free; free some space and rerun")
                bar = progress(what, total or 0, "B") if progress is not None else None
                floor.start = time.monotonic()
                while True:
                    chunk = _read_some(response)
                    if not chunk:
                        break
                    try:
                        _write(out, chunk)
                    except OSError as exc:
                        raise _WriteFailed(exc) from None
                    digest.update(chunk)
                    done += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                    floor.check(done, fail, total)
            out.flush()
            os.fsync(out.fileno())
        except DownloadError:
            raise
        except _WriteFailed as exc:
            hint = "free some space" if exc.error.errno == errno.ENOSPC else "check the cache folder"
            raise DownloadError(f"{fail}: writing {tmp.parent} failed after {done} bytes ({_why(exc.error)}); "
                                f"{hint} and rerun (nothing was kept)") from None
        except urllib.error.HTTPError as exc:
            if "infinite loop" in str(exc.reason):  # urllib's redirect handler, in three lines of its own
                raise DownloadError(f"{fail}: the server redirects in a loop (HTTP {exc.code}); check the URL or "
                                    "the mirror") from None
            raise DownloadError(f"{fail}: HTTP {exc.code} {' '.join(str(exc.reason).split())}") from None
        except urllib.error.URLError as exc:
            raise DownloadError(f"{fail}: {_network_why(exc.reason)}") from None
        except (http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout) as exc:
            if isinstance(exc, (TimeoutError, socket.timeout)) and done:
                floor.check(done, fail, total)  # a trickle that stopped altogether
            of = f" of {total}" if total else ""
            raise DownloadError(f"{fail}: the connection broke after {done}{of} bytes ({_why(exc)}); nothing was "
                                "kept, rerun to try again") from None
        except ValueError as exc:  # a URL urllib cannot use
            raise DownloadError(f"{fail}: not a URL that can be fetched ({_why(exc)})") from None
        except OSError as exc:
            raise DownloadError(f"{fail}: {_why(exc)}") from None
        finally:
            if bar is not None:
                bar.close()
    if total is not None and done != total:
        raise DownloadError(f"{fail}: the connection broke after {done} of the {total} bytes announced; nothing "
                            "was kept, rerun to try again")
    return digest.hexdigest()


def _read_some(response) -> bytes:
    """Up to CHUNK bytes, as soon as some arrive (``read1``: one trickling byte returns at once, so the rate
    floor sees it, where ``read(CHUNK)`` would wait for the whole chunk)."""
    read1 = getattr(response, "read1", None)
    return read1(CHUNK) if read1 is not None else response.read(CHUNK)


def _write(out, chunk: bytes) -> None:
    out.write(chunk)


class _WriteFailed(Exception):
    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _network_why(reason: object) -> str:
    if isinstance(reason, socket.gaierror):
        return f"the host name does not resolve ({_why(reason)}): no network or no DNS"
    if isinstance(reason, ConnectionRefusedError):
        return "the connection was refused (no network, or the server is down)"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {TIMEOUT_S:g} s"
    return _why(reason) if isinstance(reason, BaseException) else str(reason)


def _new_partial(dest: Path) -> tuple[int, Path, int | None]:
    """A new partial file beside ``dest``: ``(fd open for writing, its path, fd holding its lock)``. The lock is
    taken on a second descriptor, so it outlives the writing one until the file is renamed or removed."""
    while True:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        if fcntl is None:
            return fd, Path(name), None
        lock = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a file system without locks: judged by its age, as on Windows
            os.close(lock)
            return fd, Path(name), None
        try:
            if os.fstat(lock).st_ino == os.stat(name).st_ino:
                return fd, Path(name), lock
        except FileNotFoundError:
            pass
        # another download removed it as stale between its creation and the lock: make another
        os.close(lock)
        os.close(fd)


def _remove_stale_partials(dest: Path) -> None:
    """Partial files of ``dest`` that a killed download left: unlocked ones (a live download holds the lock of
    its own), or, where files cannot be locked, ones untouched for ``STALE_S`` seconds."""
    now = time.time()
    for part in dest.parent.glob(f".{dest.name}.*.part"):
        try:
            if not stat.S_ISREG(part.lstat().st_mode):
                continue
            if fcntl is None:
                if now - part.stat().st_mtime > STALE_S:
                    part.unlink()
                continue
            fd = os.open(part, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # being written by a live download
                except OSError:  # no locks on this file system
                    if now - part.stat().st_mtime > STALE_S:
                        part.unlink()
                    continue
                part.unlink()
                log.info("%s: removed the partial file of a download that was killed", part)
            finally:
                os.close(fd)
        except OSError:
            pass


# ----------------------------------------------------------------------------------------------- sha256

def _sha_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def remember_sha256(path: Path, digest: str) -> None:
    """Keep ``digest`` beside ``path`` (``NAME.sha256.json``, valid while its size and mtime stay the same);
    silently skipped where the folder is read-only."""
    st = path.stat()
    text = json.dumps({"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}) + "\n"
    try:
        atomic_write_bytes(_sha_file(path), lambda f: f.write(text.encode("utf-8")))
    except OSError:
        log.debug("%s: cannot keep its sha256 beside it", path)


def file_sha256(path: str | Path, remember: bool = True) -> str:
    """The sha256 of a file, read from ``NAME.sha256.json`` beside it while its size and mtime match, else
    computed (1 MiB at a time) and, with ``remember``, kept there."""
    path = Path(path)
    st = path.stat()
    try:
        cached = json.loads(_sha_file(path).read_text(encoding="utf-8"))
        if cached.get("size") == st.st_size and cached.get("mtime_ns") == st.st_mtime_ns:
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    if remember:
        remember_sha256(path, digest.hexdigest())
    return digest.hexdigest()
