"""The toy world: deterministic, masks where the drawing is, the shipped backbone, the demo end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import train_classifier
from dinov2 import load_dinov2
from finer_cam.demo import run_demo
from finer_cam.toy import (DEFAULT_WEIGHTS, MASK_OBJECT, MASK_PART, ToyConfig, stripe_colour, read_mask, render,
                           write_dataset)

REPO = Path(__file__).resolve().parents[1]
SMALL = ToyConfig(train_per_class=6, test_per_class=3)


def test_rendering_is_deterministic_for_a_seed():
    a, ma, attributes = render(ToyConfig(), "train", 3, 5)
    b, mb, again = render(ToyConfig(), "train", 3, 5)
    c, _, _ = render(ToyConfig(seed=1), "train", 3, 5)
    d, _, _ = render(ToyConfig(), "test", 3, 5)
    assert attributes == again
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(np.asarray(ma), np.asarray(mb))
    assert not np.array_equal(np.asarray(a), np.asarray(c)) and not np.array_equal(np.asarray(a), np.asarray(d))


@pytest.mark.parametrize("cls", range(16))
def test_masks_align_with_what_is_drawn(cls):
    cfg = ToyConfig()
    group, stripe = cfg.class_names[cls].split()
    for index in range(3):
        image, mask, _ = render(cfg, "test", cls, index)
        rgb, m = np.asarray(image, dtype=np.float64), np.asarray(mask)
        part, obj = m == MASK_PART, m >= MASK_OBJECT
        assert part.any() and (obj | ~part).all()  # the stripe lies on the car
        assert part.mean() < 0.06 and 0.1 < obj.mean() < 0.6  # a small part of a large object
        # the interior of the stripe has its class's colour (lighting and noise aside)
        inner = part & np.roll(part, 1, 0) & np.roll(part, -1, 0) & np.roll(part, 1, 1) & np.roll(part, -1, 1)
        colour = rgb[inner].mean(0)
        expected = np.array(stripe_colour(group, stripe), dtype=np.float64)
        assert np.corrcoef(colour, expected)[0, 1] > 0.8 or np.abs(colour - expected).max() < 60, (colour, expected)
        # and differs from the background next to the car
        assert np.abs(colour - rgb[~obj].mean(0)).max() > 30


def test_write_dataset_layout_and_rerun(tmp_path):
    root = tmp_path / "toy"
    assert write_dataset(root, ToyConfig(train_per_class=2, test_per_class=1), workers=1)
    names = (root / "classes.txt").read_text().splitlines()
    assert len(names) == 16 and len(set(n.split()[0] for n in names)) == 4
    assert len(list((root / "train").rglob("*.png"))) == 32 and len(list((root / "test").rglob("*.png"))) == 16
    for image in (root / "test").rglob("*.png"):
        part, obj = read_mask(root / "masks" / "test" / image.parent.name / image.name)
        assert part.shape == (112, 112) and part.any() and obj.sum() > part.sum()
    assert not write_dataset(root, ToyConfig(train_per_class=2, test_per_class=1), workers=1)  # already there


@pytest.mark.slow
def test_shipped_backbone_loads_and_classifies_the_toy_world(tmp_path):
    weights = REPO / DEFAULT_WEIGHTS
    assert weights.stat().st_size < 8 * 2**20  # a few MB
    backbone = load_dinov2(str(weights), arch="vit_toy")
    assert backbone.embed_dim == 128 and len(backbone.blocks) == 4
    root = tmp_path / "toy"
    write_dataset(root, ToyConfig(train_per_class=12, test_per_class=6), workers=1)
    out = tmp_path / "head"
    assert train_classifier.main(["--data_root", str(root), "--model_path", str(weights), "--arch", "vit_toy",
                                  "--output_dir", str(out), "--image_size", "112", "--num_workers", "0",
                                  "--epochs", "30", "--lr", "0.01"]) == 0
    accuracy = json.loads((out / "classifier_config.json").read_text())["accuracy"]["best"]
    assert accuracy > 0.6  # chance is 1/16


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_reduced_size(tmp_path):
    lines = []
    paths = run_demo(out=tmp_path / "demo", data=tmp_path / "toy", toy=SMALL, steps=4, workers=1, log=lines.append)
    assert (paths["classifier"] / "best_classifier.pth").is_file()
    assert len(list(paths["cams"].rglob("*.npy"))) == 16 * 3
    assert len(list(paths["overlays"].rglob("*.png"))) == 16 and paths["grid"].stat().st_size > 10_000
    table = (paths["eval"] / "summary.md").read_text()
    assert all(f"| {mode} |" in table for mode in ("baseline", "finer", "compare")) and "energy_part" in table
    assert any(line.startswith("$ python generate_cam.py") for line in lines)
    assert any(str(paths["eval"]) in line for line in lines)
