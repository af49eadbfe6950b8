"""CLIP's image tower as a backbone kind: OpenAI's ViTs by name (``ViT-B/16``, ...) or from a checkpoint file
(TorchScript archive or state dict), with a head on CLIP's image embedding.

The embedding is pooled as ``--clip_pool`` says: ``cls`` (OpenAI's: ``ln_post`` of the class token) or ``mean``
(the mean patch token after ``ln_post``), then the projection. The zero-shot concept classifier
(:func:`finer_cam.models.load_concept_classifier`) is the same :class:`ClipClassifier` with the prompts' text
embeddings as its head.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import clip

from .. import downloads
from ..checkpoints import load_state_dict_file
from ..errors import ArgumentError
from ..progress import BarFactory
from ..shipped import shipped_file
from .base import BackboneKind, Classifier, NamedCheckpoints

CLIP_POOLS = ("cls", "mean")  # CLIP's image embedding: OpenAI's class token, or the mean patch token


class ClipClassifier(Classifier):
    """``[B, 3, H, W] -> logits [B, C]`` through CLIP's image tower and a linear head on its embedding.

    ``pool``: ``cls`` (OpenAI's embedding) or ``mean`` (mean patch token after ``ln_post``); ``normalize``:
    unit-length embeddings, for the zero-shot head of text embeddings.
    """

    def __init__(self, backbone: clip.VisionTransformer, head: nn.Linear, pool: str = "cls",
                 normalize: bool = False) -> None:
        if pool not in CLIP_POOLS:
            raise ArgumentError("clip_pool", pool, f"expected one of {', '.join(CLIP_POOLS)}")
        super().__init__(backbone, head)
        self.pooling = pool
        self.normalize = normalize

    target_layer_name = "visual.transformer.resblocks[-1].ln_1"

    def target_norm(self, block: nn.Module) -> nn.Module:
        return block.ln_1

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post``, class token or mean patch token, projection (unit length if ``normalize``): ``[B, E]``."""
        x = self.backbone.pool(tokens, self.pooling)
        return F.normalize(x, dim=-1) if self.normalize else x


def clip_checkpoint(name: str, download_root: str | Path | None = None, offline: bool = False,
                    progress: BarFactory | None = None) -> Path:
    """:func:`clip.checkpoint` with the project's download (as :func:`finer_cam.backbones.dinov2.dinov2_checkpoint`)
    and its remembered sha256 (:func:`finer_cam.downloads.file_sha256`); a cached file of the wrong hash is not
    replaced offline."""
    def fetch(url: str, dest: Path, sha256: str) -> Path:
        downloads.mirror_base(clip.CLIP_URL_ENV, clip.CLIP_URL)
        if dest.is_file() and downloads.offline_requested(offline):
            raise downloads.DownloadError(
                f"{name}: {dest} does not have the sha256 that OpenAI's URL carries ({sha256}) and downloads are "
                f"off; download {url} and put it at {dest}")
        return downloads.download(url, dest, sha256=sha256, offline=offline, progress=progress, what=name)

    return clip.checkpoint(name, download_root, fetch=fetch, sha256_of=downloads.file_sha256)


def _shape(backbone: clip.VisionTransformer) -> dict:
    return {"kind": "clip", "embed_dim": backbone.output_dim, "width": backbone.conv1.out_channels,
            "depth": len(backbone.blocks), "patch_size": backbone.patch_size}


KIND = BackboneKind(
    name="clip", backbone_class=clip.VisionTransformer, normalize="clip",
    load=lambda path, arch: clip.load_model(path, reader=load_state_dict_file).visual,
    native_size=lambda backbone: backbone.input_resolution, feature_dim=lambda backbone: backbone.output_dim,
    shape=_shape, default_model="ViT-B/16",
    checkpoints=NamedCheckpoints(
        names=lambda: tuple(clip.available_models()), folder=shipped_file("pretrained_models/clip"),
        file_name=lambda name: clip.model_url(name).rsplit("/", 1)[1],
        download=lambda name, offline, progress: clip_checkpoint(name, offline=offline, progress=progress)),
    errors=(clip.ClipCheckpointError,),
    classifier=ClipClassifier, pooling=lambda pool: {"pool": pool},
    features=lambda pool: f"CLIP image embedding ({pool} pooling)")
