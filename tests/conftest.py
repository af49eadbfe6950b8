"""Tiny random models and small images that the tests make themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2 import DinoVisionTransformer, ViTConfig
from finer_cam.models import Classifier


def tiny_classifier(num_classes: int = 10, seed: int = 0, embed_dim: int = 64, depth: int = 3,
                    registers: int = 0, img_size: int = 224) -> Classifier:
    """A small random DINOv2 + head whose logits differ enough between classes to give distinct maps."""
    torch.manual_seed(seed)
    backbone = DinoVisionTransformer(ViTConfig(embed_dim=embed_dim, depth=depth, num_heads=max(1, embed_dim // 64),
                                               img_size=img_size, num_register_tokens=registers))
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    head = torch.nn.Linear(embed_dim, num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 1.0)
    model = Classifier(backbone, head).eval()
    model.requires_grad_(False)
    return model


@pytest.fixture
def classifier() -> Classifier:
    return tiny_classifier()


def write_image(path, size=(40, 30), seed=0, mode="RGB") -> None:
    """A random-noise image at ``path`` (``size`` = (W, H))."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
