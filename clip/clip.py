"""``clip.load``: OpenAI's checkpoints from a local file, as a plain float32 module, with its preprocessing."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from finer_cam.checkpoints import CheckpointError, is_torchscript, load_state_dict_file

from .model import CLIP, ClipCheckpointError, build_model

MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's normalisation
STD = (0.26862954, 0.26130258, 0.27577711)
ARCHS = ("ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px")  # the released ViTs; any ViT layout loads


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a CLIP checkpoint: a TorchScript archive (only its tensors are taken; none of its code
    runs) or a plain state dict (``torch.load`` with ``weights_only=True``: :mod:`finer_cam.checkpoints`)."""
    path = Path(path)
    if not path.is_file():
        raise ClipCheckpointError(f"{path}: no such file")
    if not is_torchscript(path):
        try:
            state = load_state_dict_file(str(path))
        except CheckpointError as exc:
            raise ClipCheckpointError(str(exc)) from None
    else:
        try:
            with warnings.catch_warnings():  # torch.jit's deprecation notice is not the user's concern here
                warnings.simplefilter("ignore", FutureWarning)
                archive = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, OSError, ValueError) as exc:
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            raise ClipCheckpointError(f"{path}: unreadable TorchScript archive ({lines[0][:200]})") from None
        state = {k: v.detach() for k, v in archive.state_dict().items()}
        del archive
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> CLIP:
    """A CLIP checkpoint as a float32 :class:`CLIP` on ``device`` in eval mode."""
    try:
        model = build_model(read_state_dict(path))
    except ClipCheckpointError as exc:
        message = str(exc)
        raise ClipCheckpointError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    return model.to(device).eval()


def preprocess_for(resolution: int):
    """OpenAI's preprocessing: bicubic resize of the short side, centre crop, RGB, tensor, normalise
    (a torchvision ``Compose``; torchvision is imported here, not with the package: it takes a second)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(resolution),
        lambda image: image.convert("RGB"),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])


def load(name: str | Path, device: str | torch.device = "cuda" if torch.cuda.is_available() else "cpu",
         jit: bool = False, download_root: str | None = None) -> tuple[CLIP, object]:
    """``(model, preprocess)`` from a local checkpoint file, as OpenAI's ``clip.load``.

    Weights are never downloaded here: ``name`` is a path (``download_root`` may name the folder it is in).
    The model is float32 on every device (use autocast for lower precision), and ``jit=True`` is refused:
    the archive's TorchScript code is never run, only its tensors are used.
    """
    if jit:
        raise ValueError("jit=True is not supported: the checkpoint is rebuilt as a plain module (jit=False)")
    path = Path(download_root) / name if download_root and not Path(name).is_file() else Path(name)
    model = load_model(path, device)
    return model, preprocess_for(model.visual.input_resolution)
