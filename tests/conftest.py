"""Tiny random models and small images that the tests make themselves."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2 import DinoVisionTransformer, ViTConfig
from finer_cam.models import Classifier


def pytest_configure(config) -> None:
    """Under pytest-xdist (``make test`` runs ``-n auto``), the workers share the cores: each takes its share of
    torch's threads, and so do the scripts the tests start (``OMP_NUM_THREADS``), instead of each using all."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and "OMP_NUM_THREADS" not in os.environ:
        share = max(1, (os.cpu_count() or 1) // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """How pytest-xdist's workers share the suite (``--dist loadgroup``, pytest.ini): the tests of a module that
    share a module-scoped fixture form one group, run by one worker, which builds the fixture once; and, in a
    worker, the slow tests come first, so that the workers take them one by one while the quick ones are left to
    even out the end (instead of one worker running the last slow test alone). A plain ``pytest`` keeps the
    order of the files."""
    for item in items:
        defs = getattr(item, "_fixtureinfo", None)
        shared = defs is not None and any(d[-1].scope == "module" for d in defs.name2fixturedefs.values() if d)
        if shared and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: files in order otherwise


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


def save_tiny_classifier(folder, **kwargs) -> Classifier:
    """A :func:`tiny_classifier` saved in the official formats as ``folder/backbone.pth`` and ``folder/head.pth``."""
    model = tiny_classifier(**kwargs)
    torch.save(model.backbone.state_dict(), folder / "backbone.pth")
    torch.save(model.head.state_dict(), folder / "head.pth")
    return model


@pytest.fixture(autouse=True)
def no_downloads(tmp_path_factory, monkeypatch):
    """No test reaches beyond 127.0.0.1: weights are never downloaded (tests/test_weights.py serves its own and
    lifts this), and torch.hub's cache is an empty folder of the test's."""
    monkeypatch.setenv("FINER_CAM_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


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


def tiny_clip(seed: int = 0, width: int = 64, layers: int = 2, patch: int = 16, resolution: int = 64,
              embed_dim: int = 32, text_width: int = 64, text_layers: int = 2, context: int = 77):
    """A small random CLIP in OpenAI's layout (the real vocabulary size, so clip.tokenize's ids fit)."""
    import clip

    config = clip.ClipConfig(embed_dim=embed_dim, image_resolution=resolution, vision_layers=layers,
                             vision_width=width, vision_patch_size=patch, context_length=context, vocab_size=49408,
                             transformer_width=text_width, transformer_heads=max(1, text_width // 64),
                             transformer_layers=text_layers)
    torch.manual_seed(seed)
    model = clip.CLIP(config)
    with torch.no_grad():  # break the symmetry of zero biases and unit norms so every path matters
        for name, p in model.named_parameters():
            if name != "logit_scale":
                p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def torchscript_archive(state: dict[str, torch.Tensor], path, half: bool = True) -> None:
    """Write ``state`` as OpenAI released CLIP: a TorchScript archive (fp16 tensors, plus the
    ``input_resolution``, ``context_length`` and ``vocab_size`` entries that its state dict carries)."""

    class Node(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Node()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, Node())
            node = getattr(node, part)
        value = value.half() if half and value.is_floating_point() else value
        node.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
    resolution = state["visual.conv1.weight"].shape[-1] * round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    for name, value in (("input_resolution", resolution), ("context_length", state["positional_embedding"].shape[0]),
                        ("vocab_size", state["token_embedding.weight"].shape[0])):
        root.register_buffer(name, torch.tensor(value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(root), str(path))
