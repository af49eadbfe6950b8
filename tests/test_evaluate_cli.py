"""evaluate.py on maps that generate_cam.py wrote for a tiny random model."""

from __future__ import annotations

import csv
import json
import math
import shutil

import cv2
import numpy as np
import pytest
import torch
from conftest import save_tiny_classifier, tiny_classifier, write_image
from PIL import Image

import evaluate
import finer_cam.perturbations
import generate_cam
from finer_cam.evaluate import EvaluateConfig
from finer_cam.perturbations import evaluate_group

CLASSES = ["a", "b", "c", "d", "e"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    save_tiny_classifier(tmp, num_classes=5, img_size=56)
    (tmp / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for i, name in enumerate(CLASSES[:3]):
        for j in range(2):
            write_image(tmp / "data" / name / f"{j}.png", size=(40 + 10 * j, 30), seed=7 * i + j)
            mask = np.zeros((30, 40 + 10 * j), np.uint8)
            mask[5:20, 5:20] = 128
            mask[8:12, 8:12] = 255
            (tmp / "masks" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(tmp / "masks" / name / f"{j}.png")
    for size in ("input", "grid"):
        assert generate_cam.main(["--dataset_path", str(tmp / "data"), "--save_dir", str(tmp / f"cams_{size}"),
                                  "--model_path", str(tmp / "backbone.pth"), "--classifier_path", str(tmp / "head.pth"),
                                  "--class_names", str(tmp / "classes.txt"), "--num_workers", "0",
                                  "--image_size", "56", "--save_size", size]) == 0
    return tmp


@pytest.mark.parametrize("size", ["input", "grid"])
def test_tables_and_figures(world, tmp_path, size, capsys):
    out = tmp_path / "eval"
    rc = evaluate.main(["--cam_dir", str(world / f"cams_{size}"), "--out", str(out), "--masks", str(world / "masks"),
                        "--mask_format", "levels",
                        "--steps", "5", "--num_workers", "0", "--percent", "5", "10", "25"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| baseline |" in printed and "rd@25" in printed
    for name in ("summary.csv", "summary.json", "summary.md", "per_image.csv", "curves.png", "rd_bars.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 6 * 3 and {r["mode"] for r in rows} == {"baseline", "finer", "compare"}
    for r in rows:
        assert 0 <= float(r["energy_part"]) <= float(r["energy_object"]) + 1e-6 <= 1 + 1e-6
        assert 0 <= float(r["deletion_auc"]) <= 1 and r["pointing_part"] in ("0.0", "1.0")
        assert r["reference"] != r["target"]
    summary = json.loads((out / "summary.json").read_text())
    finer = summary["modes"]["finer"]["rd@5"]
    values = [float(r["rd@5"]) for r in rows if r["mode"] == "finer"]
    assert finer["n"] == 6 and finer["mean"] == pytest.approx(np.mean(values), abs=1e-6)
    assert len(summary["mean_curves"]["deletion"]["baseline"]) == 6


def test_boxes(world, tmp_path):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x1,y1,x2,y2\na/0.png,0,0,20,15\na/0.png,20,15,40,30\n")
    out = tmp_path / "eval"
    assert evaluate.main(["--cam_dir", str(world / "cams_input"), "--out", str(out), "--boxes", str(boxes),
                          "--steps", "0", "--num_workers", "0", "--limit", "2"]) == 0
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    with_box = [r for r in rows if r["image"] == "a/0.png"]
    assert with_box and all(r["energy_box"] != "" for r in with_box)
    assert all(r["energy_box"] == "" for r in rows if r["image"] != "a/0.png")


def test_bad_maps_are_named_skipped_and_counted(world, tmp_path, capsys):
    cams = tmp_path / "cams"
    shutil.copytree(world / "cams_input", cams)
    (cams / "a" / "0.npy").unlink()
    (cams / "b" / "1.npy").write_bytes(b"junk")
    rc = evaluate.main(["--cam_dir", str(cams), "--out", str(tmp_path / "eval"), "--steps", "0", "--num_workers", "0"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "a/0.npy: map file missing" in err and "b/1.npy: not a readable" in err and "Traceback" not in err
    assert len(list(csv.DictReader(open(tmp_path / "eval" / "per_image.csv")))) == 4 * 3


def test_the_reference_is_rank_1_of_the_ranking_generate_recorded(world, tmp_path, capsys):
    """RD's reference class is read from index.jsonl (rank 1 of the ``ranking`` generate_cam.py recorded), not
    ranked again: a line whose ranking is edited to another class is measured against that class. Only a line
    without a ranking (written before the field existed) is ranked here, which gives generate_cam.py's choice
    on this float32 CPU run; a ranking that names no class of the run is skipped and counted."""
    cams = tmp_path / "cams"
    shutil.copytree(world / "cams_input", cams)
    index = cams / "index.jsonl"
    entries = [json.loads(line) for line in index.read_text().splitlines()]
    assert all(e["ranking"] and e["references"]["compare"] == e["ranking"][:1] for e in entries)
    expected = {}
    for i, e in enumerate(entries):
        expected[e["image"]] = e["ranking"][0]
        if i % 2 == 0:  # another class than the one generate_cam.py chose, and than the target
            other = next(c for c in range(len(CLASSES)) if c not in (e["target"], e["ranking"][0]))
            e["ranking"] = [other] + [c for c in e["ranking"] if c != other]
            expected[e["image"]] = other
        else:
            del e["ranking"]
    index.write_text("".join(json.dumps(e) + "\n" for e in entries))
    argv = ["--cam_dir", str(cams), "--steps", "0", "--num_workers", "0"]
    assert evaluate.main([*argv, "--out", str(tmp_path / "eval")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "eval" / "per_image.csv")))
    assert len(rows) == 6 * 3 and len({r["reference"] for r in rows}) > 1
    for r in rows:
        assert int(r["reference"]) == expected[r["image"]], r
    entries[0]["ranking"] = ["b"]
    index.write_text("".join(json.dumps(e) + "\n" for e in entries))
    capsys.readouterr()
    assert evaluate.main([*argv, "--out", str(tmp_path / "eval2")]) == 1
    err = capsys.readouterr().err
    assert f"{entries[0]['image']}: ranking ['b'] is not a list of class indices" in err and "Traceback" not in err
    assert len(list(csv.DictReader(open(tmp_path / "eval2" / "per_image.csv")))) == 5 * 3


@pytest.mark.parametrize("argv, says", [(["--percent", "0"], "--percent"), (["--steps", "-1"], "--steps"),
                                        (["--masks", "/nonexistent"], "--masks")])
def test_usage_errors_are_one_line(world, tmp_path, capsys, argv, says):
    assert evaluate.main(["--cam_dir", str(world / "cams_input"), "--out", str(tmp_path / "e"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("evaluate.py: error:") and says in err[0]


def test_blurred_fill_is_what_the_flag_asks_for(world, tmp_path, monkeypatch):
    blurs = []
    real = finer_cam.perturbations.blurred
    monkeypatch.setattr(finer_cam.perturbations, "blurred", lambda x: blurs.append(x.shape) or real(x))
    for fill in ("mean", "blur"):
        blurs.clear()
        assert evaluate.main(["--cam_dir", str(world / "cams_input"), "--out", str(tmp_path / fill), "--fill", fill,
                              "--steps", "0", "--num_workers", "0", "--limit", "3"]) == 0
        assert sum(shape[0] for shape in blurs) == (3 if fill == "blur" else 0)  # every image, or none
    mean, blur = (json.loads((tmp_path / f / "summary.json").read_text()) for f in ("mean", "blur"))
    assert mean["settings"]["fill"] == "mean" and blur["settings"]["fill"] == "blur"


def test_blurred_fill_drop_against_an_independent_computation():
    """The confidence drop with the blurred fill, recomputed with OpenCV's Gaussian blur and numpy's percentile."""
    model = tiny_classifier(num_classes=5, img_size=56)
    gen = torch.Generator().manual_seed(3)
    x, maps = torch.randn(2, 3, 56, 42, generator=gen), torch.rand(2, 1, 56, 42, generator=gen)
    targets, refs = torch.tensor([1, 4]), torch.tensor([0, 2])
    cfg = EvaluateConfig(cam_dir="unused", out="unused", percent=[10.0], fill="blur", steps=0)
    got = evaluate_group(model, x, maps, targets, refs, cfg)["drop@10"][:, 0]
    sigma = 56 / 20
    k = 2 * math.ceil(3 * sigma) + 1
    for b in range(2):
        img = x[b].permute(1, 2, 0).numpy()
        fill = cv2.GaussianBlur(img, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
        m = maps[b, 0].numpy()
        keep = ~(m >= np.percentile(m, 90))
        masked = np.where(keep[..., None], img, fill)
        with torch.no_grad():
            p = torch.softmax(model(torch.from_numpy(np.stack([img, masked])).permute(0, 3, 1, 2)), dim=1)
        want = (p[0, targets[b]] - p[1, targets[b]]).item()
        assert got[b].item() == pytest.approx(want, abs=1e-5)


def test_not_a_cam_folder(tmp_path, capsys):
    assert evaluate.main(["--cam_dir", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "no run.json" in capsys.readouterr().err


def test_part_level_pointing_game(world, tmp_path):
    """Parts (image,part,x,y) cover discs of --part_radius times the shorter side: a disc around the centre that
    reaches every corner holds the whole map, one far outside the image holds none of it."""
    rows = ["image,part,x,y"]
    for j, width in enumerate((40, 50)):
        rows.append(f"a/{j}.png,crown,{width / 2},15")  # radius 0.99 * 30 reaches the corners (<= 25 px away)
        rows.append(f"b/{j}.png,beak,-1000,-1000")
    (tmp_path / "parts.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "eval"
    assert evaluate.main(["--cam_dir", str(world / "cams_input"), "--out", str(out), "--parts",
                          str(tmp_path / "parts.csv"), "--part_radius", "0.99", "--steps", "0", "--num_workers", "0"]) == 0
    got = {(r["image"][0], r["mode"]): (r["pointing_parts"], r["energy_parts"])
           for r in csv.DictReader(open(out / "per_image.csv"))}
    for mode in ("baseline", "finer", "compare"):
        assert float(got[("a", mode)][0]) == 1.0 and float(got[("a", mode)][1]) == pytest.approx(1.0)
        assert float(got[("b", mode)][0]) == 0.0 and float(got[("b", mode)][1]) == 0.0
        assert got[("c", mode)] == ("", "")  # no parts listed: left out
    assert json.loads((out / "summary.json").read_text())["modes"]["finer"]["pointing_parts"]["n"] == 4


def test_part_discs_are_the_pixels_near_a_part():
    from finer_cam.ground_truth import part_discs

    region = part_discs([(2.0, 1.0), (9.5, 5.5)], (10, 7), 1.5)
    want = np.array([[(x + 0.5 - px) ** 2 + (y + 0.5 - py) ** 2 <= 2.25 for x in range(10)] for y in range(7)
                     for px, py in [(2.0, 1.0)]]) | np.array([[(x + 0.5 - 9.5) ** 2 + (y + 0.5 - 5.5) ** 2 <= 2.25
                                                               for x in range(10)] for y in range(7)])
    assert region.shape == (7, 10) and (region == want).all() and region.sum() > 4


@pytest.mark.parametrize("steps", [0, 20, 100])
def test_masked_variants_of_a_group_stay_within_the_budget_whatever_the_steps(steps):
    """The group size follows --steps and --percent: with 100 curve steps a group is smaller, and every
    group's masks (images x modes x variants x pixels) fit the budget."""
    from finer_cam.evaluate import VARIANT_BUDGET, EvaluateConfig, _by_shape, _Ready, _variants_per_mode

    cfg = EvaluateConfig(cam_dir="x", out="y", steps=steps, percent=[5.0, 10.0])
    variants = _variants_per_mode(cfg)
    assert variants == 2 + (2 * (steps + 1) if steps else 0)
    ready = [_Ready({"image": torch.zeros(3, 224, 224)}, {}, np.zeros((3, 1, 1)), None, None) for _ in range(200)]
    groups = _by_shape(ready, 3, variants)
    assert sum(len(g) for g in groups) == 200
    assert all(len(g) * 3 * 224 * 224 * variants <= VARIANT_BUDGET for g in groups)
