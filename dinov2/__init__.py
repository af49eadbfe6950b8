"""DINOv2 vision transformers that load the official ``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`` files."""

from .vision_transformer import (
    ARCHS,
    CheckpointError,
    DinoVisionTransformer,
    ViTConfig,
    build,
    config_from_state_dict,
    load_dinov2,
    register_arch,
)

__all__ = ["ARCHS", "CheckpointError", "DinoVisionTransformer", "ViTConfig", "build",
           "config_from_state_dict", "load_dinov2", "register_arch"]
