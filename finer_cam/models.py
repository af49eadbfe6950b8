"""Backbone + linear head = the classifier that Finer-CAM explains; loading backbones, heads and their sidecars.

The backbone kinds, the contract a backbone follows and the classifiers on it are in :mod:`finer_cam.backbones`
(re-exported here): the DINOv2 classifier is exactly the official wrapper (DINOv2 -> mean of the normalised
patch tokens -> Linear); the CLIP one pools CLIP's image embedding (class token or mean patch token, then the
projection): with a trained head on that embedding, or zero-shot, where the "head" is the prompts' normalised
text embeddings times the logit scale and the embedding is normalised (cosine similarity, as CLIP classifies).
For CAMs both run in two parts, split at the target layer (the last block's first LayerNorm output):
``forward_to_target`` (no gradients needed) and ``forward_from_target`` (the small differentiable tail).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import clip

from .backbones import BACKBONES, DEFAULT_MODELS, BackboneKind, Classifier, backbone_kind, missing_members
from .backbones.clip import CLIP_POOLS, ClipClassifier
from .backbones.dinov2 import TOY_ARCH, TOY_CONFIG, register_toy_arch
from .checkpoints import CheckpointError, load_state_dict_file
from .errors import ArgumentError, FinerCamError
from .userfiles import is_special
from .kernels import pack_linears
from .records import HeadRecord
from .weights import resolve_weights

__all__ = [  # the kinds' names, re-exported from finer_cam.backbones, and this module's own
    "BACKBONES", "CLIP_POOLS", "DEFAULT_MODELS", "TOY_ARCH", "TOY_CONFIG", "BackboneKind", "Classifier",
    "ClipClassifier", "backbone_kind", "register_toy_arch",
    "CLASS_LIST", "SIDECAR", "arch_name", "backbone_shape", "feature_dim", "freeze_and_pack", "load_backbone",
    "load_classifier", "load_concept_classifier", "load_head", "make_classifier", "read_sidecar",
]

SIDECAR = "classifier_config.json"
CLASS_LIST = "class_names.txt"


def feature_dim(backbone: nn.Module) -> int:
    """The width of a head's input on this backbone: DINOv2's token width, CLIP's embedding size."""
    return backbone_kind(backbone).feature_dim(backbone)


def backbone_shape(backbone: nn.Module) -> dict:
    """What a head trained on this backbone depends on: its kind, width, depth and patch size (DINOv2: and
    register tokens; CLIP: the embedding size)."""
    return backbone_kind(backbone).shape(backbone)


def arch_name(backbone: nn.Module, asked: str = "auto") -> str:
    """The name of the backbone's architecture as run.json records it: DINOv2's (``vit_base``, ...), whether it
    was named or read off the checkpoint; ``asked`` for a CLIP tower or a shape that has no name."""
    return backbone_kind(backbone).arch_name(backbone, asked)


def load_backbone(model_path: str | Path, kind: str = "dinov2", arch: str = "auto") -> nn.Module:
    """A backbone of ``kind`` as its entry's loader gives it (DINOv2: ``arch`` checked or read off the file;
    CLIP: the image tower), on the CPU, checked to follow :class:`~finer_cam.backbones.TokenBackbone`;
    ``model_path`` is a file or an official name (:func:`finer_cam.weights.resolve_weights`)."""
    if kind not in BACKBONES:
        raise FinerCamError(f"backbone kind {kind!r}: expected one of {', '.join(BACKBONES)}")
    entry = BACKBONES[kind]
    model_path = _checkpoint_file(model_path, kind)
    try:
        backbone = entry.load(str(model_path), arch)
    except (CheckpointError, *entry.errors) as exc:
        raise FinerCamError(str(exc)) from None
    _check_contract(backbone, entry)
    return backbone


def _check_contract(backbone: nn.Module, kind: BackboneKind) -> None:
    """A kind's loader that gives another class than its entry says, or a module that does not follow
    :class:`~finer_cam.backbones.TokenBackbone`, is a bug of that kind: say which, in one line."""
    if not isinstance(backbone, kind.backbone_class):
        raise FinerCamError(f"backbone kind {kind.name!r}: its loader gave a {type(backbone).__name__}, not the "
                            f"{kind.backbone_class.__name__} of its entry")
    gaps = missing_members(backbone)
    if gaps:
        raise FinerCamError(f"backbone kind {kind.name!r}: a {type(backbone).__name__} has no {', '.join(gaps)}, "
                            "so it is not a TokenBackbone (finer_cam.backbones)")


def _check_regular(path: str | Path) -> None:
    """A checkpoint path that is a FIFO or a device would block the loader for ever: refuse it."""
    if is_special(path):
        raise FinerCamError(f"{path}: not a regular file (a FIFO, device or socket)")


def _checkpoint_file(model_path: str | Path, kind: str) -> Path:
    """The file a ``--model_path`` (a file, or a checkpoint name downloaded once) stands for, checked to be a
    regular file."""
    path = resolve_weights(model_path, kind)
    _check_regular(path)
    return path


def make_classifier(backbone: nn.Module, head: nn.Linear, clip_pool: str = "cls") -> Classifier:
    """The classifier for this kind of backbone with a trained head."""
    return backbone_kind(backbone).classifier(backbone, head, clip_pool)


def load_head(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Linear:
    """A head file (state dict ``{"weight": [C, D], "bias": [C]}``, the official format) as ``nn.Linear``;
    a head with NaN or infinite weights (a diverged training) is refused."""
    _check_regular(path)
    try:
        state = load_state_dict_file(str(path), map_location)
    except CheckpointError as exc:
        raise FinerCamError(str(exc)) from None
    if set(state) != {"weight", "bias"}:
        raise FinerCamError(f"{path}: a head file holds exactly 'weight' and 'bias', found "
                            f"{', '.join(sorted(state)[:6])}")
    weight, bias = state["weight"], state["bias"]
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise FinerCamError(f"{path}: weight {tuple(weight.shape)} and bias {tuple(bias.shape)} are not a "
                            "linear layer's [C, D] and [C]")
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise FinerCamError(f"{path}: the head holds NaN or infinite weights (its training diverged); train it "
                            "again, e.g. with a lower --lr")
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict({"weight": weight.float(), "bias": bias.float()})
    return head


def read_sidecar(head_path: str | Path) -> HeadRecord:
    """The sidecar that train_classifier.py writes beside its heads, every field checked (an empty record when
    there is none)."""
    path = Path(head_path).with_name(SIDECAR)
    if not path.exists():
        return HeadRecord()
    return HeadRecord.read(path)


def load_classifier(model_path: str | Path, classifier_path: str | Path, arch: str = "auto",
                    device: str | torch.device = "cpu", backbone: str = "dinov2", clip_pool: str = "cls") -> Classifier:
    """The backbone checkpoint and the head file, checked against each other, on ``device`` in eval mode."""
    features = load_backbone(model_path, backbone, arch)
    head = load_head(classifier_path)
    try:
        model = make_classifier(features, head, clip_pool)
    except FinerCamError as exc:  # the width check lives in Classifier; add which files disagree
        raise FinerCamError(f"{classifier_path} with {model_path}: {exc}") from None
    _check_sidecar_backbone(read_sidecar(classifier_path), model, clip_pool, classifier_path, model_path)
    return freeze_and_pack(model, device)


def _check_sidecar_backbone(sidecar: HeadRecord, model: Classifier, pool: str, head_path: str | Path,
                            model_path: str | Path) -> None:
    """A head trained on another backbone of the same width would load but explain nonsense: refuse it."""
    if sidecar.backbone is None:
        return
    trained = sidecar.backbone.to_json()
    have = {**backbone_shape(model.backbone), **backbone_kind(model.backbone).pooling(pool)}
    differ = [f"{k} {trained[k]} vs {v}" for k, v in have.items() if k in trained and trained[k] != v]
    if differ:
        raise FinerCamError(f"{head_path}: trained on another backbone than {model_path} "
                            f"({'; '.join(differ)}, per its {SIDECAR})")


def load_concept_classifier(model_path: str | Path, texts: list[str], device: str | torch.device = "cpu",
                            clip_pool: str = "cls", truncate: bool = False) -> ClipClassifier:
    """CLIP zero-shot: class ``i`` is ``texts[i]``; logits are the cosine similarities of the image and text
    embeddings times CLIP's logit scale. The text embeddings are computed here, once."""
    model_path = _checkpoint_file(model_path, "clip")
    try:
        model = clip.load_model(model_path, reader=load_state_dict_file)
        tokens = clip.tokenize(texts, context_length=model.context_length, truncate=truncate)
    except clip.ClipCheckpointError as exc:
        raise FinerCamError(str(exc)) from None
    except clip.ContextLengthError as exc:
        raise ArgumentError("concepts", problem=f"{exc}; shorten it or pass --truncate") from None
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokens), dim=-1) * model.logit_scale.exp()
    head = nn.Linear(text.shape[1], text.shape[0], bias=False)
    head.weight = nn.Parameter(text)
    return freeze_and_pack(ClipClassifier(model.visual, head, clip_pool, normalize=True), device)


def freeze_and_pack(model: Classifier, device: str | torch.device) -> Classifier:
    """``model`` moved to ``device`` in eval mode with no parameter needing a gradient; on the CPU its
    ``nn.Linear`` layers are then swapped for :class:`~finer_cam.kernels.PackedLinear` (oneDNN products with
    packed weights, where this PyTorch build has them; the parameters and state dict stay the same)."""
    model = model.to(device).eval()
    model.requires_grad_(False)
    if torch.device(device).type == "cpu":
        pack_linears(model)
    return model
