"""``--model_path``: a checkpoint file, or an official name fetched once (see pretrained_models/README.md).

A name is one of its backbone kind's checkpoint names (:attr:`finer_cam.backbones.BackboneKind.checkpoints`).
It is looked for first where the official Finer-CAM README puts the file (``pretrained_models/dinov2/``,
``pretrained_models/clip/``), then in the cache its own library uses (``torch.hub.get_dir()/checkpoints`` for
DINOv2, ``~/.cache/clip`` for CLIP), and downloaded there when it is in neither (unless offline). A path that
is not a name is only ever read: nothing is downloaded over it.
"""

from __future__ import annotations

from pathlib import Path

from .backbones import BACKBONES
from .checkpoints import CheckpointError
from .errors import ArgumentError, FinerCamError
from .progress import BarFactory


def checkpoint_names(kind: str) -> tuple[str, ...]:
    """The names ``--model_path`` takes for a backbone kind (none for a kind read from files only)."""
    entry = BACKBONES.get(kind)
    return tuple(entry.checkpoints.names()) if entry is not None and entry.checkpoints is not None else ()


def resolve_weights(spec: str | Path | None, kind: str = "dinov2", offline: bool = False,
                    progress: BarFactory | None = None) -> Path:
    """The checkpoint file that ``spec`` (a path or an official name) stands for, downloading a named one that
    is not on disk yet (``offline`` or ``FINER_CAM_OFFLINE=1`` forbid it; ``progress`` shows the bytes).
    ``spec`` None is the default of a kind that has none (:data:`finer_cam.backbones.DEFAULT_MODELS`): refused."""
    if spec is None:
        raise ArgumentError("model_path", problem=f"a {kind} backbone has no default checkpoint: give its file")
    path = Path(spec)
    if path.is_file():
        return path
    name = str(spec)
    entry = BACKBONES.get(kind)
    names = checkpoint_names(kind)
    if name in names:
        named = entry.checkpoints
        try:
            local = named.folder / named.file_name(name)
            return local if local.is_file() else named.download(name, offline, progress)
        except (CheckpointError, *entry.errors) as exc:
            raise FinerCamError(str(exc)) from None
    if path.exists():
        raise ArgumentError("model_path", Path(name), "not a regular file")
    if not names:
        raise ArgumentError("model_path", Path(name), f"no such file (a {kind} backbone is read from a file)")
    raise ArgumentError("model_path", Path(name), f"no such file, and not a {kind} checkpoint name "
                        f"({', '.join(names)})")
