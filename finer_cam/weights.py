"""``--model_path``: a checkpoint file, or an official name fetched once (see pretrained_models/README.md).

A name is looked for first where the official Finer-CAM README puts the file (``pretrained_models/dinov2/``,
``pretrained_models/clip/``), then in the cache its own library uses (``torch.hub.get_dir()/checkpoints`` for
DINOv2, ``~/.cache/clip`` for CLIP), and downloaded there when it is in neither (unless offline). A path that
is not a name is only ever read: nothing is downloaded over it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import clip
from dinov2 import CheckpointError, hub

from . import downloads
from .checkpoints import load_state_dict_file
from .errors import ArgumentError, FinerCamError
from .progress import BarFactory
from .shipped import shipped_file

# where the official Finer-CAM README puts the files, in a checkout (finer_cam.shipped)
LOCAL = {"dinov2": shipped_file("pretrained_models/dinov2"), "clip": shipped_file("pretrained_models/clip")}


def checkpoint_names(kind: str) -> tuple[str, ...]:
    """The names ``--model_path`` takes for a backbone kind."""
    return hub.NAMES if kind == "dinov2" else tuple(clip.available_models())


def resolve_weights(spec: str | Path, kind: str = "dinov2", offline: bool = False,
                    progress: BarFactory | None = None) -> Path:
    """The checkpoint file that ``spec`` (a path or an official name) stands for, downloading a named one that
    is not on disk yet (``offline`` or ``FINER_CAM_OFFLINE=1`` forbid it; ``progress`` shows the bytes)."""
    path = Path(spec)
    if path.is_file():
        return path
    name = str(spec)
    try:
        if kind == "dinov2" and name in hub.NAMES:
            local = LOCAL[kind] / hub.file_name(name)
            return local if local.is_file() else dinov2_checkpoint(name, offline, progress)
        if kind == "clip" and name in clip.available_models():
            local = LOCAL[kind] / clip.model_url(name).rsplit("/", 1)[1]
            if local.is_file():
                return local
            return clip_checkpoint(name, offline=offline, progress=progress)
    except (CheckpointError, clip.ClipCheckpointError) as exc:
        raise FinerCamError(str(exc)) from None
    if path.exists():
        raise ArgumentError("model_path", Path(name), "not a regular file")
    names = checkpoint_names(kind) if kind in LOCAL else ()
    raise ArgumentError("model_path", Path(name), f"no such file, and not a {kind} checkpoint name "
                        f"({', '.join(names)})")


def dinov2_checkpoint(name: str, offline: bool = False, progress: BarFactory | None = None) -> Path:
    """:func:`dinov2.hub.dinov2_checkpoint` with the project's download (:func:`finer_cam.downloads.download`:
    offline mode, the rate floor, locked partial files, one-line errors) and checkpoint reader."""
    def fetch(url: str, dest: Path, check: Callable[[Path], object]) -> Path:
        downloads.mirror_base(hub.DINOV2_URL_ENV, hub.DINOV2_URL)  # a setting that is not a URL: one line
        return downloads.download(url, dest, check=_wrong_model_is_wrong_file(check), offline=offline,
                                  progress=progress, what=name)

    return hub.dinov2_checkpoint(name, fetch=fetch, reader=load_state_dict_file)


def clip_checkpoint(name: str, download_root: str | Path | None = None, offline: bool = False,
                    progress: BarFactory | None = None) -> Path:
    """:func:`clip.checkpoint` with the project's download (as :func:`dinov2_checkpoint`) and its remembered
    sha256 (:func:`finer_cam.downloads.file_sha256`); a cached file of the wrong hash is not replaced offline."""
    def fetch(url: str, dest: Path, sha256: str) -> Path:
        downloads.mirror_base(clip.CLIP_URL_ENV, clip.CLIP_URL)
        if dest.is_file() and downloads.offline_requested(offline):
            raise downloads.DownloadError(
                f"{name}: {dest} does not have the sha256 that OpenAI's URL carries ({sha256}) and downloads are "
                f"off; download {url} and put it at {dest}")
        return downloads.download(url, dest, sha256=sha256, offline=offline, progress=progress, what=name)

    return clip.checkpoint(name, download_root, fetch=fetch, sha256_of=downloads.file_sha256)


def _wrong_model_is_wrong_file(check: Callable[[Path], object]) -> Callable[[Path], object]:
    """``check`` raising :class:`finer_cam.downloads.WrongFile` for a file that loads but is another model."""
    def checked(path: Path) -> object:
        try:
            return check(path)
        except hub.WrongModel as exc:
            raise downloads.WrongFile(str(exc)) from None
    return checked
