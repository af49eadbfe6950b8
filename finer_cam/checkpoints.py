"""Reading checkpoint files safely: the project's weights-only state-dict reader, which it hands to the DINOv2
and CLIP loaders (``dinov2.load_dinov2(..., reader=)``, ``clip.load_model(..., reader=)``) and uses for heads.
It adds to their own small readers the refusal, by its first bytes, of a file that is no checkpoint (an HTML
page saved under the file's name) and of a TorchScript archive given as a state dict.

Nothing is unpickled but tensors and plain containers (``torch.load(..., weights_only=True)``), so a file
cannot run code when it is read.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from clip.torchscript import is_torchscript
from dinov2 import CheckpointError

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
    try:
        try:  # memory-mapped: the weights are read from the page cache as used, never copied (0.2 s less for ViT-B)
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location=map_location, weights_only=True)  # the legacy (tar) format
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: refused: it holds pickled objects other than tensors, which could run "
                              "code when loaded (only weights-only checkpoints are read)") from None
    except Exception as exc:  # truncated zip, not a torch file...
        raise CheckpointError(f"{path}: not a loadable weights-only PyTorch checkpoint ({_first_line(exc)})") from None
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return state


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
