"""Official weights by name, fetched once with the standard library: verified, never half-written.

``dinov2_checkpoint("dinov2_vitb14")`` is the file ``torch.hub.load("facebookresearch/dinov2", ...)`` uses: the
same URL and the same place (``torch.hub.get_dir()/checkpoints``), so a cache a user already has is reused.
The download itself is :func:`finer_cam.downloads.download`.

Environment: ``FINER_CAM_DINOV2_URL`` replaces ``https://dl.fbaipublicfiles.com/dinov2`` (a mirror; the rest of
the official path is kept), and ``FINER_CAM_OFFLINE=1`` forbids every download.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from finer_cam.downloads import BarFactory, download

from .vision_transformer import CheckpointError, load_dinov2

DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"
DINOV2_URL_ENV = "FINER_CAM_DINOV2_URL"
# the official names: dinov2_vit{s,b,l,g}14 and their 4-register variants
NAMES = tuple(f"dinov2_vit{size}14{reg}" for size in "sblg" for reg in ("", "_reg4"))


def dinov2_url(name: str) -> str:
    """The official URL of a DINOv2 checkpoint (``FINER_CAM_DINOV2_URL`` replaces the base):
    ``<base>/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth`` for ``dinov2_vitb14_reg4``."""
    base = (os.environ.get(DINOV2_URL_ENV) or DINOV2_URL).rstrip("/")
    return f"{base}/{name.removesuffix('_reg4')}/{name}_pretrain.pth"


def file_name(name: str) -> str:
    return f"{name}_pretrain.pth"


def hub_checkpoints() -> Path:
    """Where ``torch.hub`` keeps downloaded weights (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def dinov2_checkpoint(name: str, offline: bool = False, progress: BarFactory | None = None) -> Path:
    """The cached file of the official checkpoint ``name``, downloaded first when it is not there yet (checked
    to load strictly before it takes its final name)."""
    if name not in NAMES:
        raise CheckpointError(f"{name!r} is not a DINOv2 checkpoint name (one of {', '.join(NAMES)})")
    dest = hub_checkpoints() / file_name(name)
    if dest.is_file():
        return dest
    return download(dinov2_url(name), dest, check=lambda path: load_dinov2(str(path)), offline=offline,
                    progress=progress, what=name)
