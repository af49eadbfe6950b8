"""Files fetched once with the standard library: verified, never half-written, each failure one line.

:func:`download` serves the DINOv2 names (``dinov2.hub``) and ``clip.load`` (OpenAI's checkpoints, checked against
the sha256 in their URL). ``FINER_CAM_OFFLINE=1`` forbids every download.
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
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkpoints import CheckpointError
from .io import atomic_write_bytes

log = logging.getLogger("finer_cam")

OFFLINE_ENV = "FINER_CAM_OFFLINE"
TIMEOUT_S = 60.0  # one stalled socket operation (connect or read), not the whole download
CHUNK = 1 << 20
STALE_S = 600  # a partial file untouched this long belongs to a download that was killed
# (description, total, unit) -> a tqdm-like bar with update() and close(), as finer_cam.progress.BarFactory
BarFactory = Callable[[str, int, str], Any]


class DownloadError(CheckpointError):
    """Weights that could not be fetched (or may not be: offline); the message names the file, URL and why."""


def offline_requested(offline: bool = False) -> bool:
    """``offline``, or ``FINER_CAM_OFFLINE`` set to anything but empty, 0, false or no."""
    return offline or os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


# --------------------------------------------------------------------------------------------- download

def download(url: str, dest: Path, sha256: str | None = None, check: Callable[[Path], object] | None = None,
             offline: bool = False, progress: BarFactory | None = None, what: str | None = None) -> Path:
    """Fetch ``url`` into ``dest`` through a temporary file beside it, renamed only once it is complete (the
    announced size), matches ``sha256`` (when given) and passes ``check`` (a loader raising CheckpointError).

    Every failure (offline, no network, DNS, HTTP error, a connection cut, wrong size or hash, a full disk, an
    unwritable cache) raises :class:`DownloadError` with one line, and leaves no partial file behind.
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
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise DownloadError(f"{fail}: the cache folder {dest.parent} is not writable ({_why(exc)}); make it "
                            f"writable, or download the file yourself and give its path") from None
    tmp = Path(tmp_name)
    try:
        digest = _fetch(url, fd, tmp, fail, progress, what)
        if sha256 is not None and digest != sha256:
            raise DownloadError(f"{fail}: its sha256 is {digest}, expected {sha256} (a corrupted or wrong file); "
                                "nothing was kept, rerun to try again")
        if check is not None:
            try:
                check(tmp)
            except CheckpointError as exc:
                why = str(exc).replace(str(tmp), "the file")
                raise DownloadError(f"{fail}: the file received is not a loadable checkpoint ({why}); nothing was "
                                    "kept") from None
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    remember_sha256(dest, digest)
    log.info("%s: downloaded to %s", what, dest)
    return dest


def _fetch(url: str, fd: int, tmp: Path, fail: str, progress: BarFactory | None, what: str) -> str:
    """Stream ``url`` into the open file ``fd``; returns the sha256 of what was written."""
    digest, done, total = hashlib.sha256(), 0, None
    bar = None
    with os.fdopen(fd, "wb") as out:
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "finer-cam"})
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                free = shutil.disk_usage(tmp.parent).free
                if total is not None and total > free:
                    raise DownloadError(f"{fail}: it takes {total / 2**20:.0f} MiB and {tmp.parent} has "
                                        f"{free / 2**20:.0f} MiB free; free some space and rerun")
                bar = progress(what, total or 0, "B") if progress is not None else None
                while True:
                    chunk = response.read(CHUNK)
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
            out.flush()
            os.fsync(out.fileno())
        except _WriteFailed as exc:
            hint = "free some space" if exc.error.errno == errno.ENOSPC else "check the cache folder"
            raise DownloadError(f"{fail}: writing {tmp.parent} failed after {done} bytes ({_why(exc.error)}); "
                                f"{hint} and rerun (nothing was kept)") from None
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{fail}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise DownloadError(f"{fail}: {_network_why(exc.reason)}") from None
        except (http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout) as exc:
            of = f" of {total}" if total else ""
            raise DownloadError(f"{fail}: the connection broke after {done}{of} bytes ({_why(exc)}); nothing was "
                                "kept, rerun to try again") from None
        except OSError as exc:
            raise DownloadError(f"{fail}: {_why(exc)}") from None
        finally:
            if bar is not None:
                bar.close()
    if total is not None and done != total:
        raise DownloadError(f"{fail}: the connection broke after {done} of the {total} bytes announced; nothing "
                            "was kept, rerun to try again")
    return digest.hexdigest()


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


def _remove_stale_partials(dest: Path) -> None:
    """Partial files of ``dest`` that a killed download left (a live one writes continuously)."""
    now = time.time()
    for part in dest.parent.glob(f".{dest.name}.*.part"):
        try:
            if now - part.stat().st_mtime > STALE_S:
                part.unlink()
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
