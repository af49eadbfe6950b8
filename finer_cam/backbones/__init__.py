"""The kinds of backbone the scripts load (``--backbone``): the contract a backbone follows, the classifier on
it, and the registry, with DINOv2's and CLIP's entries.

A new kind is one :class:`BackboneKind` entry and its model (a module that follows :class:`TokenBackbone`,
or a thin wrapper that makes one follow it), added with :func:`register_backbone` before a parser is built;
:mod:`finer_cam.backbones.timm_vit` is a worked example (timm's ``VisionTransformer``). docs/internals.md
("Where to add") gives the steps.
"""

from __future__ import annotations

from . import clip, dinov2
from .base import (BACKBONES, DEFAULT_MODELS, BackboneKind, Classifier, NamedCheckpoints, TokenBackbone, TokenBlock,
                   backbone_kind, missing_members, register_backbone)

__all__ = ["BACKBONES", "DEFAULT_MODELS", "BackboneKind", "Classifier", "NamedCheckpoints", "TokenBackbone",
           "TokenBlock", "backbone_kind", "missing_members", "register_backbone"]

register_backbone(dinov2.KIND)
register_backbone(clip.KIND)
