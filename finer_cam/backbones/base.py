"""The backbone contract, the classifier built on it, and the registry of backbone kinds.

A backbone is any module that follows :class:`TokenBackbone` (images to ViT tokens, then blocks that run whole
or split around their attention input). :class:`Classifier` puts a linear head on it and runs it in two parts
at the CAM target layer, which is what the CAM engine (:mod:`finer_cam.cam`) uses. Everything else that
differs between kinds of backbone (checkpoint names and files, loading, the input size and normalisation,
what run.json and a head's sidecar record, the classifier's pooling) is a field of its :class:`BackboneKind`
entry in :data:`BACKBONES`; :func:`register_backbone` adds one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..data import NORMALIZATIONS
from ..errors import FinerCamError
from ..progress import BarFactory


# ------------------------------------------------------------------------------------------- the contract

@runtime_checkable
class TokenBlock(Protocol):
    """One transformer block ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, run whole or in its two
    residual halves (the CAM target layer is the last block's first norm, between them)."""

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """The whole block: ``[B, T, D] -> [B, T, D]``."""

    def attention_residual(self, x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        """``x`` plus the attention branch run on ``normed`` (the block's first norm of ``x``):
        ``[B, T, D] x 2 -> [B, T, D]``."""

    def mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus the feed-forward branch (with its own norm): ``[B, T, D] -> [B, T, D]``."""


@runtime_checkable
class TokenBackbone(Protocol):
    """What :class:`Classifier` and the CAM engine use of a ViT backbone.

    Tokens are ``[B, T, D]`` with ``T = num_prefix_tokens + h * w``: the prefix tokens (class, registers) first,
    then the ``h x w = (H / patch_size) x (W / patch_size)`` patch tokens in row-major order. The default
    :class:`Classifier` also reads the last block's ``norm1`` (the CAM target layer) and the final ``norm``
    (DINOv2's and timm's names); a kind that names them otherwise brings a :class:`Classifier` subclass that
    overrides :meth:`Classifier.target_norm` and :meth:`Classifier.pool` (CLIP's, in
    :mod:`finer_cam.backbones.clip`), or a thin wrapper module (:mod:`finer_cam.backbones.timm_vit`).
    """

    patch_size: int  # s: inputs are H x W with H and W multiples of s
    num_prefix_tokens: int  # tokens before the patch tokens
    blocks: Sequence[TokenBlock]  # indexable and sliceable (an nn.ModuleList or nn.Sequential)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, T, D]``: patch embedding, prefix tokens and positions, ready for ``blocks[0]``."""


def _members(protocol: type) -> tuple[str, ...]:
    """The attributes and public methods ``protocol`` declares."""
    methods = (name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_"))
    return tuple(dict.fromkeys((*vars(protocol).get("__annotations__", {}), *methods)))


def missing_members(backbone: nn.Module) -> list[str]:
    """The members of :class:`TokenBackbone` (and of :class:`TokenBlock`, for the last block) that ``backbone``
    lacks; empty when it follows the contract. (Looked up with ``hasattr``: ``isinstance`` against a protocol
    does not see a module's submodules on every Python version.)"""
    gaps = [name for name in _members(TokenBackbone) if not hasattr(backbone, name)]
    if "blocks" not in gaps:
        try:
            last = backbone.blocks[-1]
        except (IndexError, TypeError):
            return [*gaps, "blocks[-1]"]
        gaps += [f"blocks[-1].{name}" for name in _members(TokenBlock) if not hasattr(last, name)]
    return gaps


# ----------------------------------------------------------------------------------------- the classifier

class Classifier(nn.Module):
    """``[B, 3, H, W] -> logits [B, C]``: a :class:`TokenBackbone`, its final norm, the mean of the patch
    tokens, a linear head (the official DINOv2 linear classifier's layout).

    For CAMs it runs in two parts, split at the target layer (the last block's first norm output):
    :meth:`forward_to_target` (no gradients needed) and :meth:`forward_from_target` (the small differentiable
    tail).
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        if head.in_features != self.feature_dim:
            raise FinerCamError(f"the head takes {head.in_features}-dim features but the backbone gives "
                                f"{self.feature_dim}-dim ones: head and backbone do not belong together")

    @property
    def feature_dim(self) -> int:
        """The width of the head's input."""
        return backbone_kind(self.backbone).feature_dim(self.backbone)

    def target_norm(self, block: nn.Module) -> nn.Module:
        """The LayerNorm whose output is the CAM target layer."""
        return block.norm1

    target_layer_name = "blocks[-1].norm1"  # where :attr:`target_layer` sits in the backbone, for run.json

    @property
    def target_layer(self) -> nn.Module:
        """The module whose output is the CAM target layer (the last block's first LayerNorm)."""
        return self.target_norm(self.backbone.blocks[-1])

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return self.backbone.num_prefix_tokens

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final norm, then the mean of the patch tokens: ``[B, T, D] -> [B, D]``."""
        return self.backbone.norm(tokens)[:, self.num_prefix_tokens:].mean(dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input: mean normalised patch tokens ``[B, D]``."""
        tokens = self.backbone.prepare_tokens(x)
        for block in self.backbone.blocks:
            tokens = block(tokens)
        return self.pool(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_to_target(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything up to the target layer: ``(residual, activation)``, both ``[B, T, D]``.

        ``residual`` is the last block's input, ``activation`` its ``norm1`` output (the CAM target layer).
        """
        tokens = self.backbone.prepare_tokens(x)
        for block in self.backbone.blocks[:-1]:
            tokens = block(tokens)
        return tokens, self.target_norm(self.backbone.blocks[-1])(tokens)

    def forward_from_target(self, residual: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
        """The rest of the network from the target layer: ``[B, T, D] x 2 -> logits [B, C]``."""
        last = self.backbone.blocks[-1]
        tokens = last.mlp_residual(last.attention_residual(residual, activation))
        return self.head(self.pool(tokens))


# ---------------------------------------------------------------------------------------- the kind entry

@dataclass(frozen=True)
class NamedCheckpoints:
    """The official checkpoints of a kind, by name (``--model_path NAME``): a name's file is
    ``folder / file_name(name)`` when it is there (where the official Finer-CAM README puts it), else
    ``download(name, offline, progress)``, which returns the file in the kind's own cache, fetched once."""

    names: Callable[[], Sequence[str]]  # the names, read when asked (a test or a mirror may change them)
    folder: Path
    file_name: Callable[[str], str]
    download: Callable[[str, bool, BarFactory | None], Path]


def _asked_arch(backbone: nn.Module, asked: str) -> str:
    return asked


def _plain_classifier(backbone: nn.Module, head: nn.Linear, pool: str) -> Classifier:
    return Classifier(backbone, head)


def _no_pooling(pool: str) -> dict:
    return {}


def _mean_patch_tokens(pool: str) -> str:
    return "mean of the final-norm patch tokens"


@dataclass(frozen=True)
class BackboneKind:
    """Everything the scripts know about one kind of backbone; a kind is one entry in :data:`BACKBONES`.

    ``pool`` below is the ``--clip_pool`` setting, handed to every kind; a kind with one pooling ignores it.
    The defaults are those of the plain :class:`Classifier` (mean of the final-norm patch tokens).
    """

    name: str  # --backbone NAME, and "kind" in run.json and the head's sidecar
    backbone_class: type[nn.Module]  # what load returns: a loaded backbone's kind is found by its class
    normalize: str  # the normalisation it was trained with (data.NORMALIZATIONS), the default for its heads
    load: Callable[[str, str], nn.Module]  # (checkpoint file, --arch) -> a TokenBackbone on the CPU
    native_size: Callable[[nn.Module], int]  # the input size it was trained at, the default image size
    feature_dim: Callable[[nn.Module], int]  # the width of a head's input
    shape: Callable[[nn.Module], dict]  # what a head trained on it depends on (run.json; checked against sidecars)
    default_model: str | None = None  # --model_path's default (a name of checkpoints); None: a file is needed
    checkpoints: NamedCheckpoints | None = None  # the names --model_path takes; None: files only
    errors: tuple[type[Exception], ...] = ()  # what load and download raise for a bad file, beside CheckpointError
    arch_name: Callable[[nn.Module, str], str] = _asked_arch  # (backbone, --arch) -> the name run.json records
    classifier: Callable[[nn.Module, nn.Linear, str], Classifier] = _plain_classifier  # (backbone, head, pool)
    pooling: Callable[[str], dict] = _no_pooling  # (pool) -> what run.json and the sidecar add to the shape
    features: Callable[[str], str] = _mean_patch_tokens  # (pool) -> what the head reads, in the sidecar's words


# ------------------------------------------------------------------------------------------ the registry

BACKBONES: dict[str, BackboneKind] = {}  # filled with dinov2 and clip by finer_cam.backbones
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def register_backbone(kind: BackboneKind) -> BackboneKind:
    """Add ``kind`` to :data:`BACKBONES` (``--backbone`` offers it in every parser built afterwards) and return
    it; the same entry again is a no-op. Refused: a name that is taken or not ``[a-z][a-z0-9_]*``, a backbone
    class that another kind's class is or derives from (a loaded backbone would not know its kind), a
    normalisation that :data:`finer_cam.data.NORMALIZATIONS` does not have."""
    if BACKBONES.get(kind.name) == kind:
        return kind
    if not _NAME.fullmatch(kind.name):
        raise FinerCamError(f"backbone kind {kind.name!r}: a name is lower-case letters, digits and _")
    if kind.name in BACKBONES:
        raise FinerCamError(f"backbone kind {kind.name!r} is registered already")
    for other in BACKBONES.values():
        if issubclass(kind.backbone_class, other.backbone_class) or issubclass(other.backbone_class,
                                                                                kind.backbone_class):
            raise FinerCamError(f"backbone kind {kind.name!r}: its class {kind.backbone_class.__name__} is also "
                                f"that of kind {other.name!r}; give it a class of its own (a wrapper module)")
    if kind.normalize not in NORMALIZATIONS:
        raise FinerCamError(f"backbone kind {kind.name!r}: normalisation {kind.normalize!r} is not one of "
                            f"{', '.join(NORMALIZATIONS)}")
    BACKBONES[kind.name] = kind
    return kind


def backbone_kind(backbone: nn.Module) -> BackboneKind:
    """The registry entry of a loaded backbone."""
    for kind in BACKBONES.values():
        if isinstance(backbone, kind.backbone_class):
            return kind
    raise FinerCamError(f"a {type(backbone).__name__} is not a backbone kind this project knows "
                        f"({', '.join(BACKBONES)})")


class _DefaultModels(Mapping):
    """Kind name -> its default ``--model_path`` (None: a file must be given), read off :data:`BACKBONES` when
    asked, so that a kind registered later has its default too."""

    def __getitem__(self, name: str) -> str | None:
        return BACKBONES[name].default_model

    def __iter__(self) -> Iterator[str]:
        return iter(BACKBONES)

    def __len__(self) -> int:
        return len(BACKBONES)


DEFAULT_MODELS: Mapping[str, str | None] = _DefaultModels()
