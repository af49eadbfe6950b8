"""Backbone + linear head = the classifier that Finer-CAM explains; loading heads and their sidecars.

The classifier is exactly the official wrapper: DINOv2 -> mean of the normalised patch tokens -> Linear.
For CAMs it runs in two parts, split at the target layer (the last block's ``norm1`` output):
``forward_to_target`` (no gradients needed) and ``forward_from_target`` (the small differentiable tail).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from dinov2 import CheckpointError, DinoVisionTransformer, load_dinov2
from dinov2.vision_transformer import load_state_dict_file

from .errors import FinerCamError
from .kernels import pack_linears

SIDECAR = "classifier_config.json"
CLASS_LIST = "class_names.txt"


class Classifier(nn.Module):
    """``[B, 3, H, W] -> logits [B, C]`` through a DINOv2 backbone and a linear head on mean patch tokens."""

    def __init__(self, backbone: DinoVisionTransformer, head: nn.Linear) -> None:
        super().__init__()
        if head.in_features != backbone.embed_dim:
            raise FinerCamError(f"the head takes {head.in_features}-dim features but the backbone gives "
                                f"{backbone.embed_dim}-dim ones: head and backbone do not belong together")
        self.backbone = backbone
        self.head = head

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
        return tokens, self.backbone.blocks[-1].norm1(tokens)

    def forward_from_target(self, residual: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
        """The rest of the network from the target layer: ``[B, T, D] x 2 -> logits [B, C]``."""
        last = self.backbone.blocks[-1]
        tokens = last.mlp_residual(last.attention_residual(residual, activation))
        return self.head(self.pool(tokens))


def backbone_shape(backbone: DinoVisionTransformer) -> dict:
    """What a head trained on this backbone depends on: width, depth, register tokens and patch size."""
    c = backbone.config
    return {"embed_dim": c.embed_dim, "depth": c.depth, "registers": c.num_register_tokens, "patch_size": c.patch_size}


def autocast(device: torch.device, precision: str):
    """The model's precision: ``bf16`` runs it under autocast, ``fp32`` as it is."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def load_head(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Linear:
    """A head file (state dict ``{"weight": [C, D], "bias": [C]}``, the official format) as ``nn.Linear``."""
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
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict({"weight": weight.float(), "bias": bias.float()})
    return head


def read_sidecar(head_path: str | Path) -> dict:
    """The JSON that train_classifier.py writes beside its heads (empty when there is none)."""
    path = Path(head_path).with_name(SIDECAR)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FinerCamError(f"{path}: unreadable classifier sidecar ({exc})") from None
    if not isinstance(data, dict):
        raise FinerCamError(f"{path}: the classifier sidecar must be a JSON object")
    return data


def load_classifier(model_path: str | Path, classifier_path: str | Path, arch: str = "auto",
                    device: str | torch.device = "cpu") -> Classifier:
    """The backbone checkpoint and the head file, checked against each other, on ``device`` in eval mode."""
    try:
        backbone = load_dinov2(str(model_path), arch=arch, map_location="cpu")
    except CheckpointError as exc:
        raise FinerCamError(str(exc)) from None
    head = load_head(classifier_path)
    try:
        model = Classifier(backbone, head)
    except FinerCamError as exc:  # the width check lives in Classifier; add which files disagree
        raise FinerCamError(f"{classifier_path} with {model_path}: {exc}") from None
    return frozen(model, device)


def frozen(model: Classifier, device: str | torch.device) -> Classifier:
    """``model`` on ``device`` in eval mode with no parameter needing a gradient; on the CPU its linear
    layers run through oneDNN (:mod:`finer_cam.kernels`)."""
    model = model.to(device).eval()
    model.requires_grad_(False)
    if torch.device(device).type == "cpu":
        pack_linears(model)
    return model
