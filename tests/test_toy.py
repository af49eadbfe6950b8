"""The toy world: deterministic, masks where the drawing is, siblings that differ only where their attributes
say, the shipped backbone's premise checks, the toy commands, the demo end to end."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import finer_cam.toy as toy
import train_classifier
from dinov2 import load_dinov2
from finer_cam.models import register_toy_arch
from finer_cam.demo import run_demo
from finer_cam.swaps import read_swaps
from finer_cam.toy import (DEFAULT_WEIGHTS, GROUPS, LABELS, PART_COLOURS, REGIONS, ToyConfig, class_attributes,
                           differing_parts, premise_checks, read_mask, render, write_dataset)

REPO = Path(__file__).resolve().parents[1]
# the demo's world at a reduced size (every step and every file it writes): two groups of four siblings, so that
# classes differ both in one part (siblings) and in body and roof (groups), at a quarter of the pixels
SMALL = ToyConfig(train_per_class=2, test_per_class=1, image_size=112, groups=("Sedan", "Van"))


def test_rendering_is_deterministic_for_a_seed():
    a, ma, attributes = render(ToyConfig(), "train", 3, 5)
    b, mb, again = render(ToyConfig(), "train", 3, 5)
    c, _, _ = render(ToyConfig(seed=1), "train", 3, 5)
    d, _, _ = render(ToyConfig(), "test", 3, 5)
    assert attributes == again
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(np.asarray(ma), np.asarray(mb))
    assert not np.array_equal(np.asarray(a), np.asarray(c)) and not np.array_equal(np.asarray(a), np.asarray(d))


def test_siblings_differ_in_the_parts_their_attributes_name():
    assert differing_parts("Sedan Standard", "Sedan Rims") == ["wheels"]
    assert differing_parts("Sedan Standard", "Sedan Badge") == ["badge"]
    assert differing_parts("Sedan Standard", "Sedan Beam") == ["light"]
    assert differing_parts("Sedan Rims", "Sedan Beam") == ["wheels", "light"]
    assert differing_parts("Sedan Rims", "Van Rims") == ["body", "roof"]
    names = ToyConfig().class_names
    assert names == sorted(names) and len(set(names)) == 16
    assert len({json.dumps(class_attributes(n), sort_keys=True) for n in names}) == 16  # every class its own look


def _inner(region: np.ndarray, steps: int = 2) -> np.ndarray:
    """``region`` shrunk by ``steps`` pixels (away from anti-aliased edges)."""
    out = region.copy()
    for _ in range(steps):
        out = out & np.roll(out, 1, 0) & np.roll(out, -1, 0) & np.roll(out, 1, 1) & np.roll(out, -1, 1)
    return out


def _close(colour: np.ndarray, expected: tuple[int, int, int]) -> bool:
    """Lighting scales colours (0.6 to 1.3) and noise adds a little: the same colour up to a brightness."""
    e = np.asarray(expected, dtype=np.float64)
    scale = float(colour @ e / max(e @ e, 1e-9))
    if np.abs(colour - e).max() < 35:  # dark colours: brightness hardly changes them
        return True
    return 0.55 < scale < 1.4 and np.abs(colour - scale * e).max() < 40


@pytest.mark.parametrize("cls", range(16))
def test_masks_align_with_what_is_drawn(cls):
    cfg = ToyConfig()
    name = cfg.class_names[cls]
    looks = class_attributes(name)
    for index in range(2):
        image, mask, drawn = render(cfg, "test", cls, index)
        rgb, labels = np.asarray(image, dtype=np.float64), np.asarray(mask)
        assert set(np.unique(labels)) == {0, *REGIONS.values()}
        obj = labels > 0
        assert 0.15 < obj.mean() < 0.6
        expected = {"badge": PART_COLOURS["badge"][looks["badge"]], "light": PART_COLOURS["light"][looks["light"]],
                    "roof": GROUPS[looks["roof"]]["roof_rgb"]}
        for part, colour in expected.items():
            inner = _inner(labels == REGIONS[part])
            assert inner.sum() > 100, part
            assert _close(rgb[inner].mean(0), colour), (name, part, rgb[inner].mean(0), colour)
        # the rims: the middle of each wheel (the tyre around them is dark)
        wheels = labels == REGIONS["wheels"]
        ys, xs = np.nonzero(wheels)
        for side in (xs < xs.mean(), xs >= xs.mean()):
            cy, cx = int(ys[side].mean()), int(xs[side].mean())
            rim = rgb[cy - 3:cy + 4, cx - 3:cx + 4].reshape(-1, 3).mean(0)
            assert _close(rim, PART_COLOURS["wheels"][looks["wheels"]]), (name, rim)
        # every part is compact and at least about two 14-px patches across in its long direction
        for part in LABELS["parts"]:
            ys, xs = np.nonzero(labels == REGIONS[part])
            extent = sorted([ys.max() - ys.min() + 1, xs.max() - xs.min() + 1])
            assert extent[0] >= 22 and extent[1] >= 26, (name, part, extent)
        assert drawn["looks"] == {k: looks[k] for k in PART_COLOURS}


@pytest.mark.parametrize("pair", [("Hatch Standard", "Hatch Rims"), ("Pickup Standard", "Pickup Badge"),
                                  ("Van Rims", "Van Beam")])
def test_two_siblings_drawn_alike_differ_only_inside_their_differing_parts(monkeypatch, pair):
    """With the same random draws (position, lighting, noise...), two siblings' images differ only inside the
    regions their attributes say they differ in, and clearly there."""
    monkeypatch.setattr(toy, "_rng", lambda seed, split, cls, index: np.random.default_rng([seed, index]))
    cfg = ToyConfig()
    a, b = (cfg.class_names.index(n) for n in pair)
    for index in range(3):
        ia, ma, _ = render(cfg, "test", a, index)
        ib, mb, _ = render(cfg, "test", b, index)
        labels = np.asarray(ma)
        assert np.array_equal(labels, np.asarray(mb))
        diff = np.abs(np.asarray(ia, dtype=np.float64) - np.asarray(ib, dtype=np.float64)).max(-1)
        where = np.isin(labels, [REGIONS[p] for p in differing_parts(*pair)])
        grown = ~_inner(~where, 4)  # the regions and 4 px around them (resampling and blur spread edges)
        assert diff[~grown].max() <= 2, pair
        assert (diff[where] > 40).mean() > 0.3, pair


def test_write_dataset_layout_and_rerun(tmp_path):
    root = tmp_path / "toy"
    cfg = ToyConfig(train_per_class=1, test_per_class=1, image_size=112)  # the layout does not depend on the size
    assert write_dataset(root, cfg, workers=1)
    names = (root / "classes.txt").read_text().splitlines()
    assert len(names) == 16 and len(set(n.split()[0] for n in names)) == 4
    assert len(list((root / "train").rglob("*.png"))) == 16 and len(list((root / "test").rglob("*.png"))) == 16
    for split in ("train", "test"):
        assert json.loads((root / "masks" / split / "labels.json").read_text()) == LABELS
    looks = json.loads((root / "class_attributes.json").read_text())["classes"]
    assert looks["Sedan Rims"] == class_attributes("Sedan Rims") and set(looks) == set(names)
    for image in (root / "test").rglob("*.png"):
        labels = read_mask(root / "masks" / "test" / image.parent.name / image.name)
        assert labels.shape == (112, 112) and (labels == REGIONS["badge"]).any()
    assert not write_dataset(root, cfg, workers=1)  # already there
    assert write_dataset(root, dataclasses.replace(cfg, train_per_class=2), workers=1)  # other settings
    assert len(list((root / "train").rglob("*.png"))) == 32 and len(list((root / "test").rglob("*.png"))) == 16
    assert write_dataset(root, cfg, workers=1) and len(list((root / "train").rglob("*.png"))) == 16  # none left over


@pytest.mark.slow
def test_the_toy_commands_run(tmp_path):
    """``python -m finer_cam.toy data`` and ``backbone`` (at a tiny size) as a user runs them."""
    root = tmp_path / "toy"

    def run(*argv):
        return subprocess.run([sys.executable, "-m", "finer_cam.toy", *argv], cwd=REPO, capture_output=True, text=True)

    done = run("data", "--root", str(root), "--train_per_class", "2", "--test_per_class", "1", "--image_size", "112",
               "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert "written to" in done.stderr and len(list((root / "test").rglob("*.png"))) == 16
    out = tmp_path / "tiny.pth"
    done = run("backbone", "--root", str(root), "--train_per_class", "2", "--test_per_class", "1",
               "--image_size", "112", "--epochs", "1", "--batch_size", "16", "--out", str(out), "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["train_images"] == 32
    again = tmp_path / "again.pth"
    done = run("backbone", "--root", str(root), "--train_per_class", "2", "--test_per_class", "1",
               "--image_size", "112", "--epochs", "1", "--batch_size", "16", "--out", str(again), "--workers", "1")
    assert done.returncode == 0 and again.read_bytes() == out.read_bytes()  # the same file, bit for bit
    register_toy_arch()  # what every loader in finer_cam does first
    tied = [tmp_path / "tied.pth", tmp_path / "tied_again.pth"]
    for path in tied:
        done = run("backbone", "--root", str(root), "--train_per_class", "2", "--test_per_class", "1",
                   "--image_size", "112", "--epochs", "1", "--batch_size", "16", "--out", str(path), "--workers", "1",
                   "--readout", "tied", "--threads", "1")
        assert done.returncode == 0, done.stderr
    assert tied[0].read_bytes() == tied[1].read_bytes() != out.read_bytes()
    backbone = load_dinov2(str(out), arch="vit_toy")
    assert backbone.embed_dim == 128 and backbone.patch_embed.proj.weight.shape[-1] == 14
    done = run("premise", "--root", str(root), "--head", str(tmp_path / "nothing.pth"))
    assert done.returncode == 2 and "--head" in done.stderr and "Traceback" not in done.stderr
    done = run("swaps", "--cam_dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "swaps.csv"))
    assert done.returncode == 2 and "--cam_dir" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_shipped_backbone_meets_the_premise(tmp_path):
    """The premise checks on a world of another seed at a reduced size (the demo measures them on the whole
    test split; this one gave 0.978, 0.979 and 0.979 for the first three): patch tokens
    tell what their patch shows, a linear head on the pooled tokens names the class, the class most like
    the true one is a sibling, and swapping the parts where they differ removes the margin between them."""
    weights = REPO / DEFAULT_WEIGHTS
    assert weights.stat().st_size < 8 * 2**20  # a few MB
    root = tmp_path / "toy"
    write_dataset(root, ToyConfig(train_per_class=24, test_per_class=6, seed=3), workers=2)
    out = tmp_path / "head"
    assert train_classifier.main(["--data_root", str(root), "--model_path", str(weights), "--arch", "vit_toy",
                                  "--output_dir", str(out), "--image_size", "224", "--num_workers", "0"]) == 0
    premise = premise_checks(root, weights, out / "best_classifier.pth", probe_images=120)
    assert premise["locality_accuracy"] >= 0.95, premise
    assert premise["head_accuracy"] >= 0.95, premise  # the thresholds, on images the backbone never saw
    assert premise["sibling_rank1_fraction"] >= 0.9, premise
    assert premise["part_use_fraction"] >= 0.9, premise
    # token_locality_fraction >= 0.8 is the one check this backbone fails (0.600 on the demo's test split)


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_reduced_size(tmp_path):
    lines = []
    paths = run_demo(out=tmp_path / "demo", data=tmp_path / "toy", toy=SMALL, steps=3, workers=1, log=lines.append,
                     probe_images=32)
    assert (paths["classifier"] / "best_classifier.pth").is_file()
    classes = len(SMALL.class_names)
    assert len(list(paths["cams"].rglob("*.npy"))) == classes * SMALL.test_per_class
    assert len(list(paths["overlays"].rglob("*.png"))) == classes and paths["grid"].stat().st_size > 10_000
    table = (paths["eval"] / "summary.md").read_text()
    assert all(f"| {mode} |" in table for mode in ("baseline", "finer", "compare"))
    assert all(name in table for name in ("energy_part", "energy_object", "energy_difference", "pointing_difference"))
    assert all(name in table for name in ("swap_rank", "swap_top", "token_rank", "token_top"))
    swaps = read_swaps(paths["swaps"])
    assert len(swaps) == classes * SMALL.test_per_class and all(set(parts) == set(REGIONS) for parts in swaps.values())
    for (image, target, reference), parts in swaps.items():
        assert image.split("/")[0] == target and target != reference
        for part, row in parts.items():  # a part both classes draw alike changes nothing
            if part not in differing_parts(target, reference):
                assert row.swapped_margin == row.token_swapped_margin == row.margin
    premise = json.loads(paths["premise"].read_text())
    assert all(0 <= premise[k] <= 1 for k in ("locality_accuracy", "head_accuracy", "sibling_rank1_fraction",
                                              "part_use_fraction", "token_locality_fraction"))
    assert premise["holds"] == {k: premise[k] >= t for k, t in premise["thresholds"].items()}
    assert any(line.startswith("$ python generate_cam.py") for line in lines)
    assert any(line.startswith("$ python -m finer_cam.toy premise") for line in lines)
    assert any(line.startswith("$ python -m finer_cam.toy swaps") for line in lines)
    assert len(list(paths["strip"].rglob("*.png"))) == 1 and any(line.startswith("the strip: ") for line in lines)
    assert any("premise checks" in line for line in lines)
    assert (paths["guide"] / "index.html").is_file() and (paths["guide"] / "guide.json").is_file()
    assert any(str(paths["guide"]) in line and "index.html" in line for line in lines)


@pytest.mark.parametrize("name,region,other", [("Sedan Rims", "wheels", "Sedan Beam"),
                                               ("Hatch Badge", "badge", "Hatch Standard"),
                                               ("Van Beam", "light", "Van Rims"),
                                               ("Pickup Standard", "roof", "Sedan Standard"),
                                               ("Sedan Rims", "body", "Hatch Rims")])
def test_a_counterfactual_differs_only_inside_the_swapped_region(name, region, other):
    """Drawn again with one region in another class's look, an image changes inside that region (and the few
    pixels around it that resampling and blur reach) and nowhere else; its label map stays."""
    cfg = ToyConfig()
    cls = cfg.class_names.index(name)
    for index in range(2):
        image, mask, _ = render(cfg, "test", cls, index)
        swapped, swapped_mask, drawn = render(cfg, "test", cls, index, swap={region: other})
        labels = np.asarray(mask)
        assert np.array_equal(labels, np.asarray(swapped_mask))
        diff = np.abs(np.asarray(image, dtype=np.float64) - np.asarray(swapped, dtype=np.float64)).max(-1)
        where = labels == REGIONS[region]
        assert diff[_inner(~where, 4)].max() <= 2  # outside the region grown by 4 px
        assert (diff[_inner(where)] > 25).mean() > 0.3
        if region in PART_COLOURS:
            assert drawn["looks"][region] == class_attributes(other)[region]


@pytest.mark.parametrize("name,region,other", [("Sedan Standard", "wheels", "Sedan Rims"),
                                               ("Pickup Standard", "light", "Pickup Beam"),
                                               ("Van Badge", "badge", "Van Standard")])
def test_a_counterfactual_takes_the_other_class_look(monkeypatch, name, region, other):
    """With every class drawing the same random numbers, a class's image with the one region where it differs
    from a sibling drawn in the sibling's look is the sibling's image, pixel for pixel."""
    monkeypatch.setattr(toy, "_rng", lambda seed, split, cls, index: np.random.default_rng([seed, index]))
    assert differing_parts(name, other) == [region]
    cfg = ToyConfig()
    a, b = cfg.class_names.index(name), cfg.class_names.index(other)
    for index in range(2):
        swapped, _, _ = render(cfg, "test", a, index, swap={region: other})
        theirs, _, _ = render(cfg, "test", b, index)
        assert np.array_equal(np.asarray(swapped), np.asarray(theirs))
    same, _, _ = render(cfg, "test", a, 0, swap={"roof": other})  # a region both look alike in: nothing changes
    assert np.array_equal(np.asarray(same), np.asarray(render(cfg, "test", a, 0)[0]))


class _PatchColours(torch.nn.Module):
    """A model whose tokens are the patches' mean colours (one prefix token: the image's mean colour) and
    whose logits are a linear readout of either the mean patch token (local evidence) or the prefix token
    (evidence held off the patches): the token swap's answer is known without the code."""

    num_prefix_tokens, patch_size = 1, 14

    def __init__(self, weights: torch.Tensor, read_prefix: bool) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(weights)  # [C, 3]
        self.read_prefix = read_prefix

    def forward_to_target(self, x):
        patches = torch.nn.functional.avg_pool2d(x, 14).flatten(2).transpose(1, 2)  # [B, N, 3]
        tokens = torch.cat([x.mean((2, 3))[:, None], patches], 1)
        return tokens, tokens * 2

    def forward_from_target(self, residual, activation):
        pooled = activation[:, 0] if self.read_prefix else activation[:, 1:].mean(1)
        return pooled @ self.w.T


def test_counterfactual_margins_against_models_with_a_known_answer():
    cfg = ToyConfig()
    rims, standard = cfg.class_names.index("Sedan Rims"), cfg.class_names.index("Sedan Standard")
    weights = torch.zeros(16, 3)
    weights[rims] = torch.tensor([1.0, 0.5, -2.0])  # gold rims are yellow: red and green up, blue down
    cases = [toy.Case(rims, i, standard, ("wheels",)) for i in range(3)] + [toy.Case(rims, 0, standard, ())]
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    local = toy.counterfactual_margins(_PatchColours(weights, False), cfg, "test", cases, mean, std, batch_size=2)
    far = toy.counterfactual_margins(_PatchColours(weights, True), cfg, "test", cases, mean, std)
    for i, (m, f) in enumerate(zip(local[:3], far[:3])):
        image, mask, _ = render(cfg, "test", rims, i)
        swapped, _, _ = render(cfg, "test", rims, i, swap={"wheels": "Sedan Standard"})
        expect = [2 * (np.asarray(im, dtype=np.float64) / 255).mean((0, 1)) @ weights[rims].double().numpy()
                  for im in (image, swapped)]  # the readout's input is twice the image's mean colour
        assert m.margin == pytest.approx(expect[0], abs=1e-4) and m.swapped == pytest.approx(expect[1], abs=1e-4)
        assert m.swapped < m.margin  # silver rims are less yellow
        # the evidence is in the patches: the tokens touching the wheels carry all of it (up to the few
        # blurred pixels that spill into the next patches)
        assert m.token_swapped == pytest.approx(m.swapped, abs=0.02 * abs(m.margin - m.swapped))
        # the evidence is off the patches: swapping the patches' tokens changes nothing
        assert f.token_swapped == pytest.approx(f.margin, abs=1e-6) and f.swapped != pytest.approx(f.margin)
    assert local[3].margin == local[3].swapped == local[3].token_swapped  # nothing swapped


def test_touched_patches():
    labels = np.zeros((28, 42), np.uint8)
    labels[13, 14] = 2  # one pixel in patch (0, 1)
    labels[20:, 30:] = 3
    assert toy.touched_patches(labels, [2], 14).tolist() == [False, True, False, False, False, False]
    assert toy.touched_patches(labels, [2, 3], 14).tolist() == [False, True, False, False, False, True]


def test_the_strip_is_chosen_by_its_rule():
    from finer_cam.demo import choose_strip
    from finer_cam.swaps import SwapRow

    def rows(image, target, reference, margin):
        return {(image, target, reference): {"badge": SwapRow(image, target, reference, "badge", margin, 0.0)}}

    swaps = {}
    for k, m in enumerate([3.0, 1.0, 2.0, 9.0]):  # median (lower middle) 2.0
        swaps |= rows(f"A/{k}.png", "A", "B", m)
    for k, m in enumerate([1.5, 2.5, 2.6]):  # median 2.5
        swaps |= rows(f"C/{k}.png", "C", "D", m)
    swaps |= rows("E/0.png", "E", "F", 0.1)  # the smallest margin, but a pair of one image
    assert choose_strip(swaps) == "A/2.png"
    assert choose_strip(rows("E/0.png", "E", "F", 0.1)) == "E/0.png"


def test_part_scale_grows_the_parts():
    """``--part_scale 1.4``: the same car with wheels, badge and headlight about 1.4 times as large (about
    1.96 times the area; the headlight is cut at the car's front)."""
    for cls in (0, 9):
        small = np.asarray(render(ToyConfig(), "test", cls, 1)[1])
        large = np.asarray(render(ToyConfig(part_scale=1.4), "test", cls, 1)[1])
        for part, low in (("wheels", 1.7), ("badge", 1.7), ("light", 1.4)):
            ratio = (large == REGIONS[part]).sum() / (small == REGIONS[part]).sum()
            assert low < ratio < 2.2, (part, ratio)
        assert (large == REGIONS["roof"]).sum() == (small == REGIONS["roof"]).sum()
