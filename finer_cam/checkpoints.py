"""Reading checkpoint files safely: the project's weights-only state-dict reader, which it hands to the DINOv2
and CLIP loaders (``dinov2.load_dinov2(..., reader=)``, ``clip.load_model(..., reader=)``) and uses for heads.
It adds to their own small readers the refusal, by its first bytes, of a file that is no checkpoint (an HTML
page saved under the file's name) and of a TorchScript archive given as a state dict.

Nothing is unpickled but tensors and plain containers (``torch.load(..., weights_only=True)``), so a file
cannot run code when it is read.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clip.torchscript import is_torchscript
from dinov2 import CheckpointError
from dinov2.vision_transformer import read_state_dict

__all__ = ["CheckpointError", "is_torchscript", "load_state_dict_file"]


def load_state_dict_file(path: str, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """``torch.load`` with ``weights_only=True`` (memory-mapped where the file allows it); unwraps
    ``{"model": ...}``/``{"state_dict": ...}`` wrappers.

    A file whose pickle holds anything but tensors and plain containers (which could run code when
    unpickled) is refused before any of it runs; so is a TorchScript archive (only CLIP's loader reads
    those, keeping their tensors).
    """
    if Path(path).is_file() and is_torchscript(path):
        raise CheckpointError(f"{path}: a TorchScript archive, not a state dict (only CLIP checkpoints are read "
                              "from TorchScript archives, by clip.read_state_dict)")
    _check_looks_like_a_checkpoint(path)
    return read_state_dict(path, map_location)  # memory-mapped, weights-only, unwrapped (dinov2's reader)


def _check_looks_like_a_checkpoint(path: str) -> None:
    """Refuse, by its first bytes, a file that is neither a zip (``torch.save``) nor a pickle (the legacy
    format): an HTML page (a mirror's login or error page saved under the file's name) or any other file."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return  # torch.load says what is wrong with it
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x80")) or not head:
        return
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in text:
        raise CheckpointError(f"{path}: not a checkpoint: it looks like an HTML page (an error or login page "
                              "saved under the file's name?)")
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (it starts with {head[:12]!r}, neither a zip nor a "
                          "pickle)")

