"""Backbone + linear head = the classifier that Finer-CAM explains; loading heads and their sidecars.

The DINOv2 classifier is exactly the official wrapper: DINOv2 -> mean of the normalised patch tokens ->
Linear. The CLIP one pools CLIP's image embedding (class token or mean patch token, then the projection):
with a trained head on that embedding, or zero-shot, where the "head" is the prompts' normalised text
embeddings times the logit scale and the embedding is normalised (cosine similarity, as CLIP classifies).
For CAMs both run in two parts, split at the target layer (the last block's first LayerNorm output):
``forward_to_target`` (no gradients needed) and ``forward_from_target`` (the small differentiable tail).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import clip
from dinov2 import ARCHS, DinoVisionTransformer, ViTConfig, load_dinov2, register_arch

from .checkpoints import CheckpointError, load_state_dict_file
from .errors import ArgumentError, FinerCamError
from .userfiles import is_special
from .kernels import pack_linears
from .records import HeadRecord
from .weights import resolve_weights

SIDECAR = "classifier_config.json"
CLASS_LIST = "class_names.txt"
CLIP_POOLS = ("cls", "mean")  # CLIP's image embedding: OpenAI's class token, or the mean patch token


class Classifier(nn.Module):
    """``[B, 3, H, W] -> logits [B, C]`` through a DINOv2 backbone and a linear head on mean patch tokens."""

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
        return feature_dim(self.backbone)

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


# ------------------------------------------------------------------------------------- the backbone kinds

@dataclass(frozen=True)
class BackboneKind:
    """Everything the scripts know about one kind of backbone; adding a kind is one entry in :data:`BACKBONES`."""

    name: str
    backbone_class: type[nn.Module]
    default_model: str  # a checkpoint name that weights.py resolves (downloaded once)
    normalize: str  # the normalisation it was trained with (data.NORMALIZATIONS), the default for its heads
    load: Callable[[str, str], nn.Module]  # (checkpoint file, arch) -> the backbone on the CPU
    native_size: Callable[[nn.Module], int]  # the input size it was trained at, the default image size
    feature_dim: Callable[[nn.Module], int]  # the width of a head's input
    shape: Callable[[nn.Module], dict]  # what a head trained on it depends on (checked against sidecars)
    classifier: Callable[[nn.Module, nn.Linear, str], Classifier]  # (backbone, head, pooling)


def _dinov2_shape(backbone: nn.Module) -> dict:
    c = backbone.config
    return {"kind": "dinov2", "embed_dim": c.embed_dim, "depth": c.depth, "registers": c.num_register_tokens,
            "patch_size": c.patch_size}


def _clip_shape(backbone: nn.Module) -> dict:
    return {"kind": "clip", "embed_dim": backbone.output_dim, "width": backbone.conv1.out_channels,
            "depth": len(backbone.blocks), "patch_size": backbone.patch_size}


# The toy world's backbone (finer_cam/toy.py) is one more DINOv2 size. It is registered by the functions that
# load or name a DINOv2 backbone (every script's loading goes through them), never at import: importing this
# module leaves dinov2's registry as it is.
TOY_ARCH = "vit_toy"
TOY_CONFIG = ViTConfig(embed_dim=128, depth=4, num_heads=2, img_size=224)  # a 16x16 grid at 224


def register_toy_arch() -> None:
    """Add ``vit_toy`` to :data:`dinov2.ARCHS` (again is a no-op), so that it is built and loaded by name
    (``--arch vit_toy``) or read off its checkpoint."""
    register_arch(TOY_ARCH, TOY_CONFIG)


def _load_dinov2(path: str, arch: str) -> DinoVisionTransformer:
    register_toy_arch()
    return load_dinov2(path, arch=arch, map_location="cpu", reader=load_state_dict_file)


BACKBONES: dict[str, BackboneKind] = {
    "dinov2": BackboneKind(
        name="dinov2", backbone_class=DinoVisionTransformer, default_model="dinov2_vitb14", normalize="imagenet",
        load=_load_dinov2,
        native_size=lambda backbone: 224, feature_dim=lambda backbone: backbone.embed_dim, shape=_dinov2_shape,
        classifier=lambda backbone, head, pool: Classifier(backbone, head)),
    "clip": BackboneKind(
        name="clip", backbone_class=clip.VisionTransformer, default_model="ViT-B/16", normalize="clip",
        load=lambda path, arch: clip.load_model(path, reader=load_state_dict_file).visual,
        native_size=lambda backbone: backbone.input_resolution, feature_dim=lambda backbone: backbone.output_dim,
        shape=_clip_shape, classifier=lambda backbone, head, pool: ClipClassifier(backbone, head, pool)),
}
DEFAULT_MODELS = {name: kind.default_model for name, kind in BACKBONES.items()}


def backbone_kind(backbone: nn.Module) -> BackboneKind:
    """The registry entry of a loaded backbone."""
    for kind in BACKBONES.values():
        if isinstance(backbone, kind.backbone_class):
            return kind
    raise FinerCamError(f"a {type(backbone).__name__} is not a backbone kind this project knows "
                        f"({', '.join(BACKBONES)})")


def feature_dim(backbone: nn.Module) -> int:
    """The width of a head's input on this backbone: DINOv2's token width, CLIP's embedding size."""
    return backbone_kind(backbone).feature_dim(backbone)


def backbone_shape(backbone: nn.Module) -> dict:
    """What a head trained on this backbone depends on: its kind, width, depth and patch size (DINOv2: and
    register tokens; CLIP: the embedding size)."""
    return backbone_kind(backbone).shape(backbone)


def arch_name(backbone: nn.Module, asked: str = "auto") -> str:
    """The name of a DINOv2 backbone's architecture (``vit_base``, ...), whether it was named or read off
    the checkpoint; ``asked`` for a CLIP tower or a shape that has no name."""
    if backbone_kind(backbone).name != "dinov2":
        return asked
    register_toy_arch()
    c = backbone.config
    return next((name for name, a in ARCHS.items() if (a.embed_dim, a.depth, a.num_register_tokens, a.ffn)
                 == (c.embed_dim, c.depth, c.num_register_tokens, c.ffn)), asked)


def load_backbone(model_path: str | Path, kind: str = "dinov2", arch: str = "auto") -> nn.Module:
    """A backbone of ``kind`` (DINOv2: ``arch`` checked or read off the file; CLIP: the image tower), on the
    CPU; ``model_path`` is a file or an official name (:func:`finer_cam.weights.resolve_weights`)."""
    if kind not in BACKBONES:
        raise FinerCamError(f"backbone kind {kind!r}: expected one of {', '.join(BACKBONES)}")
    model_path = _checkpoint_file(model_path, kind)
    try:
        return BACKBONES[kind].load(str(model_path), arch)
    except (CheckpointError, clip.ClipCheckpointError) as exc:
        raise FinerCamError(str(exc)) from None


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
    _check_sidecar_backbone(read_sidecar(classifier_path), model, classifier_path, model_path)
    return freeze_and_pack(model, device)


def _check_sidecar_backbone(sidecar: HeadRecord, model: Classifier, head_path: str | Path,
                            model_path: str | Path) -> None:
    """A head trained on another backbone of the same width would load but explain nonsense: refuse it."""
    if sidecar.backbone is None:
        return
    trained = sidecar.backbone.to_json()
    have = backbone_shape(model.backbone)
    if isinstance(model, ClipClassifier):
        have["pool"] = model.pooling
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
