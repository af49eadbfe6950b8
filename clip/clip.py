"""``clip.load``: OpenAI's checkpoints by name (downloaded once, sha256 checked) or from a local file, as a plain
float32 module, with its preprocessing. Needs only torch (and torchvision for the preprocessing): the download
is torch.hub's ``download_url_to_file`` unless :func:`checkpoint`'s caller brings its own."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import torch

from .model import CLIP, ClipCheckpointError, build_model
from .torchscript import is_torchscript, read_torchscript_state_dict

MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's normalisation
STD = (0.26862954, 0.26130258, 0.27577711)
ARCHS = ("ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px")  # the released ViTs; any ViT layout loads
CLIP_URL = "https://openaipublic.azureedge.net/clip/models"
CLIP_URL_ENV = "FINER_CAM_CLIP_URL"  # a mirror: replaces CLIP_URL, keeping <sha256>/<file>
# OpenAI's released ViTs: <sha256 of the file>/<file>, as in OpenAI's clip/clip.py (the ResNets are not supported)
_MODELS = {
    "ViT-B/32": "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}
log = logging.getLogger(__name__)
# (url, dest, sha256) -> dest: fetch url into dest, kept only when its sha256 is the one given
Fetch = Callable[[str, Path, str], Path]


def available_models() -> list[str]:
    """The names :func:`load` downloads, as OpenAI's ``clip.available_models()`` (its ViTs)."""
    return list(_MODELS)


def model_url(name: str) -> str:
    """OpenAI's URL of a released model (``FINER_CAM_CLIP_URL`` replaces the base)."""
    base = (os.environ.get(CLIP_URL_ENV, "").strip() or CLIP_URL).rstrip("/")
    return f"{base}/{_MODELS[name]}"


def default_download_root() -> Path:
    return Path(os.path.expanduser("~/.cache/clip"))


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_file(url: str, dest: Path, sha256: str) -> Path:
    """``url`` into ``dest`` with torch.hub's ``download_url_to_file`` (a temporary file beside it, moved into
    place only when its sha256 is ``sha256``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(dest), hash_prefix=sha256, progress=False)
    except Exception as exc:
        raise ClipCheckpointError(f"cannot download {url} (expected sha256 {sha256}): {exc}") from None
    return dest


def checkpoint(name: str, download_root: str | Path | None = None, fetch: Fetch = fetch_file,
               sha256_of: Callable[[Path], str] = sha256_file) -> Path:
    """The file of the released model ``name`` in ``download_root`` (default ``~/.cache/clip``, OpenAI's), used
    only when its sha256 is the one OpenAI's URL carries; fetched (and checked) when missing or different."""
    if name not in _MODELS:
        raise ClipCheckpointError(f"{name!r} is not a released CLIP model (one of {', '.join(_MODELS)})")
    expected, file = _MODELS[name].split("/")
    dest = Path(download_root) if download_root else default_download_root()
    dest = dest / file
    if dest.exists() and not dest.is_file():
        raise ClipCheckpointError(f"{dest} exists and is not a regular file")
    if dest.is_file():
        if sha256_of(dest) == expected:
            return dest
        log.warning("%s: its sha256 is not %s", dest, expected)
    return fetch(model_url(name), dest, expected)


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save`` state dict read with ``weights_only=True`` (a ``{"state_dict": ...}`` wrapper undone)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ClipCheckpointError(f"{path}: refused: it holds pickled objects other than tensors, which could run "
                                  "code when loaded (only weights-only checkpoints are read)") from None
    except Exception as exc:
        raise ClipCheckpointError(f"{path}: not a loadable weights-only PyTorch checkpoint "
                                  f"({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClipCheckpointError(f"{path}: expected a state dict of tensors")
    return state


def read_state_dict(path: str | Path, reader: Callable[[str], dict] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a CLIP checkpoint: a TorchScript archive (read as data by
    :func:`clip.torchscript.read_torchscript_state_dict`: none of its code is compiled or run) or a plain state
    dict (``torch.load`` with ``weights_only=True``, or ``reader`` when an application brings its own; its
    ``ValueError`` becomes a :class:`ClipCheckpointError`)."""
    path = Path(path)
    if not path.is_file():
        raise ClipCheckpointError(f"{path}: no such file")
    if is_torchscript(path):
        state = read_torchscript_state_dict(path)
    elif reader is None:
        state = _read_torch_file(path)
    else:
        try:
            state = reader(str(path))
        except ValueError as exc:
            raise ClipCheckpointError(str(exc)) from None
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_model(path: str | Path, device: str | torch.device = "cpu",
               reader: Callable[[str], dict] | None = None) -> CLIP:
    """A CLIP checkpoint as a float32 :class:`CLIP` on ``device`` in eval mode (``reader``: as
    :func:`read_state_dict`)."""
    try:
        model = build_model(read_state_dict(path, reader))
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
    """``(model, preprocess)`` as OpenAI's ``clip.load``: ``name`` is one of :func:`available_models`
    (downloaded once into ``download_root``, default ``~/.cache/clip``, its sha256 checked before use) or a
    checkpoint file.

    The model is float32 on every device (use autocast for lower precision), and ``jit=True`` is refused:
    the archive's TorchScript code is never run, only its tensors are used.
    """
    if jit:
        raise ValueError("jit=True is not supported: the checkpoint is rebuilt as a plain module (jit=False)")
    if str(name) in _MODELS and not Path(name).is_file():
        path = checkpoint(str(name), download_root)
    elif Path(name).is_file() or not download_root:
        path = Path(name)
    else:
        path = Path(download_root) / name
    if not path.is_file():
        raise ClipCheckpointError(f"{name}: no such file, and not a released model (one of {', '.join(_MODELS)})")
    model = load_model(path, device)
    return model, preprocess_for(model.visual.input_resolution)
