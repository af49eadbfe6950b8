"""A worked example of a new backbone kind: timm's ``VisionTransformer``, in this module and one entry, with no
edit anywhere else. It is not registered by default; user code adds it before building a parser::

    from finer_cam.backbones import register_backbone
    from finer_cam.backbones.timm_vit import KIND
    register_backbone(KIND)  # --backbone timm_vit in every script's parser built afterwards

    train_classifier.main(["--backbone", "timm_vit", "--arch", "vit_small_patch16_224",
                           "--model_path", "vit_s16.pth", "--data_root", "data/"])

``--arch`` names the timm model (``vit_small_patch16_224``, ``test_vit``, ...; ``auto`` is
:data:`DEFAULT_ARCH`) and ``--model_path`` is a state dict file of it in timm's key names (a classification
head in it is dropped: the head is trained here). The model is built by ``timm.create_model`` without weights
and loaded strictly. timm is a test dependency of finer_cam, not a runtime one: it is imported when this kind
loads a checkpoint, never when this module is imported.

:class:`TimmViT` adapts the model to :class:`~finer_cam.backbones.TokenBackbone` without copying any of its
code: ``prepare_tokens`` is the start of timm's ``forward_features`` and each block is split into its two
residual halves (:class:`SplitBlock`). The classifier is the plain one: timm's final ``norm``, the mean of the
patch tokens, a linear head; the CAM target layer is the last block's ``norm1``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..checkpoints import CheckpointError, load_state_dict_file
from ..errors import ArgumentError
from .base import BackboneKind

DEFAULT_ARCH = "vit_base_patch16_224"


class SplitBlock(nn.Module):
    """A timm ``Block`` (``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``, each through its drop
    path) as a :class:`~finer_cam.backbones.TokenBlock`: whole, or in its two residual halves."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    @property
    def norm1(self) -> nn.Module:
        """The block's first norm (on the last block: the CAM target layer)."""
        return self.block.norm1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)

    def attention_residual(self, x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        """``[B, T, D] x 2 -> [B, T, D]``: ``x`` plus the attention branch on ``normed`` (``norm1(x)``)."""
        b = self.block
        return x + b.drop_path1(b.ls1(b.attn(normed)))

    def mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, D] -> [B, T, D]``: ``x`` plus the feed-forward branch."""
        b = self.block
        return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x))))


class TimmViT(nn.Module):
    """A timm ``VisionTransformer`` as a :class:`~finer_cam.backbones.TokenBackbone`: ``[B, 3, H, W]`` (H, W
    multiples of the patch) -> tokens ``[B, num_prefix_tokens + h * w, D]`` after the final norm.

    Its blocks become :class:`SplitBlock` s in place (``vit.blocks``), so timm's own ``forward_features`` runs
    the same computation through them.
    """

    def __init__(self, vit: nn.Module, model_name: str) -> None:
        super().__init__()
        vit.blocks = nn.Sequential(*(SplitBlock(block) for block in vit.blocks))
        self.vit = vit
        self.model_name = model_name

    @property
    def patch_size(self) -> int:
        return self.vit.patch_embed.patch_size[0]

    @property
    def num_prefix_tokens(self) -> int:
        """The class token and any register tokens."""
        return self.vit.num_prefix_tokens

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def blocks(self) -> nn.Sequential:
        return self.vit.blocks

    @property
    def norm(self) -> nn.Module:
        return self.vit.norm

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, T, D]``: timm's patch embedding, prefix tokens and positions (resampled to the
        grid), patch dropout (none in eval) and pre-norm."""
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size {self.patch_size}")
        v = self.vit
        return v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.prepare_tokens(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


def load_timm_vit(path: str, arch: str, default: str = DEFAULT_ARCH) -> TimmViT:
    """The timm model ``arch`` (``auto``: ``default``) with the weights of the state dict file ``path``, loaded
    strictly (a ``head.*`` classifier in the file is dropped), on the CPU in eval mode."""
    import timm  # only when this kind is used: timm is not a runtime dependency of finer_cam
    from timm.models.vision_transformer import Block, VisionTransformer

    name = default if arch == "auto" else arch
    try:
        vit = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
    except (RuntimeError, TypeError) as exc:  # an unknown name; a model that takes no dynamic_img_size
        raise ArgumentError("arch", name, f"not a timm VisionTransformer ({str(exc).splitlines()[0]})") from None
    if not isinstance(vit, VisionTransformer) or not all(type(b) is Block for b in vit.blocks):
        raise ArgumentError("arch", name, "not a timm VisionTransformer of plain Blocks, which this kind splits "
                            "at the last block's norm1")
    if vit.patch_embed.patch_size[0] != vit.patch_embed.patch_size[1]:
        raise ArgumentError("arch", name, f"patches {vit.patch_embed.patch_size} are not square")
    state = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith("head.")}
    try:
        missing, unexpected = vit.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise CheckpointError(f"{path}: not a {name} state dict ({str(exc).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        said = "; ".join(f"{what} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                         for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys)
        raise CheckpointError(f"{path}: not a {name} state dict ({said})")
    return TimmViT(vit.eval(), name)


def _shape(backbone: TimmViT) -> dict:
    return {"kind": "timm_vit", "embed_dim": backbone.embed_dim, "depth": len(backbone.blocks),
            "heads": backbone.blocks[0].block.attn.num_heads, "prefix_tokens": backbone.num_prefix_tokens,
            "patch_size": backbone.patch_size}


KIND = BackboneKind(
    name="timm_vit", backbone_class=TimmViT, normalize="imagenet", load=partial(load_timm_vit, default=DEFAULT_ARCH),
    native_size=lambda backbone: backbone.vit.patch_embed.img_size[0], feature_dim=lambda backbone: backbone.embed_dim,
    shape=_shape, arch_name=lambda backbone, asked: backbone.model_name)
