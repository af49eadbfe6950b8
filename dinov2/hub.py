"""Official weights by name, fetched once with the standard library: verified, never half-written.

``dinov2_checkpoint("dinov2_vitb14")`` is the file ``torch.hub.load("facebookresearch/dinov2", ...)`` uses: the
same URL and the same place (``torch.hub.get_dir()/checkpoints``), so a cache a user already has is reused.
The download itself is :func:`finer_cam.downloads.download`.

Environment: ``FINER_CAM_DINOV2_URL`` replaces ``https://dl.fbaipublicfiles.com/dinov2`` (a mirror; the rest of
the official path is kept), and ``FINER_CAM_OFFLINE=1`` forbids every download.
"""

from __future__ import annotations

from pathlib import Path

import torch

from finer_cam.downloads import BarFactory, WrongFile, download, mirror_base

from .vision_transformer import ARCHS, CheckpointError, ViTConfig, load_dinov2

DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"
DINOV2_URL_ENV = "FINER_CAM_DINOV2_URL"
# the official names: dinov2_vit{s,b,l,g}14 and their 4-register variants
NAMES = tuple(f"dinov2_vit{size}14{reg}" for size in "sblg" for reg in ("", "_reg4"))
# what each name's file must be: width, depth, heads, feed-forward, patch 14, the 37x37 learnt grid, registers
NAMED_CONFIGS: dict[str, ViTConfig] = {
    f"dinov2_vit{size}14{reg}": ARCHS[f"{arch}{reg}"]
    for size, arch in (("s", "vit_small"), ("b", "vit_base"), ("l", "vit_large"), ("g", "vit_giant2"))
    for reg in ("", "_reg4")
}


def dinov2_url(name: str) -> str:
    """The official URL of a DINOv2 checkpoint (``FINER_CAM_DINOV2_URL`` replaces the base):
    ``<base>/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth`` for ``dinov2_vitb14_reg4``."""
    base = mirror_base(DINOV2_URL_ENV, DINOV2_URL)
    return f"{base}/{name.removesuffix('_reg4')}/{name}_pretrain.pth"


def file_name(name: str) -> str:
    return f"{name}_pretrain.pth"


def hub_checkpoints() -> Path:
    """Where ``torch.hub`` keeps downloaded weights (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def check_named(path: str | Path, name: str) -> None:
    """Raise :class:`WrongFile` unless ``path`` loads strictly and has the shapes of the official ``name``
    (:data:`NAMED_CONFIGS`): a mirror serving another model under an official name is refused."""
    found = load_dinov2(str(path)).config
    want = NAMED_CONFIGS[name]
    fields = ("embed_dim", "depth", "num_heads", "ffn", "mlp_ratio", "patch_size", "img_size", "num_register_tokens")
    if any(getattr(found, f) != getattr(want, f) for f in fields):
        def shape(c: ViTConfig) -> str:
            return (f"width {c.embed_dim}, {c.depth} blocks, {c.num_heads} heads, {c.ffn} feed-forward, patch "
                    f"{c.patch_size}, a {c.img_size // c.patch_size}-patch grid, {c.num_register_tokens} registers")
        raise WrongFile(f"the file received is not {name}: it has {shape(found)}, where {name} has {shape(want)}")


def dinov2_checkpoint(name: str, offline: bool = False, progress: BarFactory | None = None) -> Path:
    """The cached file of the official checkpoint ``name``, downloaded first when it is not there yet (checked
    to load strictly and to have the shapes of its name before it takes its final name)."""
    if name not in NAMES:
        raise CheckpointError(f"{name!r} is not a DINOv2 checkpoint name (one of {', '.join(NAMES)})")
    dest = hub_checkpoints() / file_name(name)
    if dest.is_file():
        return dest
    return download(dinov2_url(name), dest, check=lambda path: check_named(path, name), offline=offline,
                    progress=progress, what=name)
