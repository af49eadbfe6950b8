"""The swap-effects file and the counterfactual agreement evaluate.py computes from it, on hand-made cases
whose answer is known without the code: maps all inside one part, effects written by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import save_tiny_classifier, write_image
from PIL import Image
from scipy.stats import spearmanr

import evaluate
import generate_cam
from finer_cam.errors import FinerCamError
from finer_cam.ground_truth import part_densities, swap_agreement
from finer_cam.swaps import HEADER, SwapRow, agreement, rank_correlation, read_swaps, write_swaps

CLASSES = ["a", "b", "c", "d"]


def test_rank_correlation_is_spearman():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 4, 6).astype(float), rng.normal(size=6)  # ties in a
        if np.ptp(a) == 0:
            continue
        assert rank_correlation(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert np.isnan(rank_correlation(np.ones(4), np.arange(4.0)))


def test_effects():
    row = SwapRow("x.png", "a", "b", "wheels", margin=2.0, swapped_margin=-1.0, token_swapped_margin=1.5)
    assert row.effect == pytest.approx(1.5) and row.token_effect == pytest.approx(0.25)
    assert SwapRow("x.png", "a", "b", "wheels", -0.5, 1.0).effect is None  # the model does not prefer the target
    assert SwapRow("x.png", "a", "b", "wheels", 1.0, 0.0).token_effect is None  # not measured


def test_the_file_round_trips_and_bad_files_say_where(tmp_path):
    rows = [SwapRow("a/0.png", "a", "b", "left", 2.0, 0.5, None), SwapRow("a/0.png", "a", "b", "right", 2.0, 2.0, 1.0)]
    path = tmp_path / "swaps.csv"
    write_swaps(path, rows)
    assert path.read_text().splitlines()[0] == ",".join(HEADER)
    read = read_swaps(path)
    assert read == {("a/0.png", "a", "b"): {"left": rows[0], "right": rows[1]}}
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a byte-order mark
    assert read_swaps(path) == read
    for text, problem in ((("image,target\n"), "header"),
                          (",".join(HEADER) + "\na/0.png,a,b,left,x,1,\n", "line 2"),
                          (",".join(HEADER) + "\na/0.png,a,b,left,1,1,\na/0.png,a,b,left,1,0,\n", "twice"),
                          (",".join(HEADER) + "\na/0.png,a,b,left,1\n", "fields")):
        path.write_text(text)
        with pytest.raises(FinerCamError, match=problem):
            read_swaps(path)


def test_a_map_all_inside_one_part():
    labels = np.zeros((10, 10), np.uint8)
    labels[:, :5] = 1  # left half
    labels[:, 5:] = 2
    labels[0, :] = 3  # a thin top row
    maps = np.zeros((2, 10, 10))
    maps[0, 1:, :5] = 1.0  # all of map 0 inside "left"
    maps[1] = 1.0  # uniform
    regions = {"left": 1, "right": 2, "top": 3}
    d = part_densities(maps, labels, regions)
    assert d[0] == pytest.approx({"left": 100 / 45, "right": 0.0, "top": 0.0})  # mean over left / mean overall
    assert d[1] == pytest.approx({"left": 1.0, "right": 1.0, "top": 1.0})
    rows = {p: SwapRow("x", "a", "b", p, 2.0, s) for p, s in (("left", 0.0), ("right", 1.8), ("top", 2.0))}
    agreed = swap_agreement(maps, labels, regions, rows)
    assert agreed[0]["swap_top"] == 1.0  # the densest part, left, is the decisive one (effect 1)
    assert agreed[0]["swap_rank"] == pytest.approx(spearmanr([100 / 45, 0, 0], [1.0, 0.1, 0.0]).statistic)
    assert np.isnan(agreed[1]["swap_top"]) and np.isnan(agreed[1]["swap_rank"])  # a uniform map ranks nothing
    assert np.isnan(agreed[0]["token_rank"])  # no token swaps in these rows
    wrong = {p: SwapRow("x", "a", "b", p, 2.0, s) for p, s in (("left", 2.0), ("right", 0.0), ("top", 2.0))}
    assert swap_agreement(maps, labels, regions, wrong)[0]["swap_top"] == 0.0
    assert np.isnan(swap_agreement(maps, labels, regions, None)[0]["swap_rank"])
    assert agreement({"left": 1.0}, {"left": 1.0}).rank != agreement({"left": 1.0}, {"left": 1.0}).rank  # NaN


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny generate_cam.py run whose maps are then replaced by hand-made ones: baseline all in the left half
    of the input, finer all in the right half, compare uniform; label masks: left 1, right 2."""
    tmp = tmp_path_factory.mktemp("swaps")
    save_tiny_classifier(tmp, num_classes=len(CLASSES), img_size=56)
    (tmp / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    masks = tmp / "masks"
    for i, name in enumerate(CLASSES[:2]):
        for j in range(3):
            write_image(tmp / "data" / name / f"{j}.png", size=(56, 56), seed=5 * i + j)
            labels = np.ones((56, 56), np.uint8)
            labels[:, 28:] = 2
            (masks / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels).save(masks / name / f"{j}.png")
    (masks / "labels.json").write_text(json.dumps({"background": 0, "regions": {"left": 1, "right": 2},
                                                   "parts": ["left", "right"]}))
    cams = tmp / "cams"
    assert generate_cam.main(["--dataset_path", str(tmp / "data"), "--save_dir", str(cams), "--model_path",
                              str(tmp / "backbone.pth"), "--classifier_path", str(tmp / "head.pth"), "--class_names",
                              str(tmp / "classes.txt"), "--num_workers", "0", "--image_size", "56"]) == 0
    entries = [json.loads(line) for line in (cams / "index.jsonl").read_text().splitlines()]
    for e in entries:
        maps = np.zeros((3, 56, 56), np.float16)
        maps[0, :, :20] = 1
        maps[1, :, 36:] = 1
        maps[2] = 1
        np.save(cams / e["map"], maps)
    return tmp, entries


def test_evaluate_swaps(run, tmp_path, capsys):
    """Left is decisive (effect 1) and right is not (0.1) for every image but one, whose margin is negative
    (left out): the map in the left half agrees (top 1, rank 1), the one in the right half disagrees (0, -1),
    the uniform one is undefined."""
    tmp, entries = run
    lines = [",".join(HEADER)]
    for k, e in enumerate(sorted(entries, key=lambda e: e["image"])):
        target, ref = CLASSES[e["target"]], CLASSES[e["references"]["compare"][0]]
        margin = -1.0 if k == 0 else 2.0
        lines += [f"{e['image']},{target},{ref},left,{margin},0,0.2", f"{e['image']},{target},{ref},right,{margin},1.8,"]
    (tmp_path / "swaps.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    assert evaluate.main(["--cam_dir", str(tmp / "cams"), "--out", str(out), "--masks", str(tmp / "masks"),
                          "--swaps", str(tmp_path / "swaps.csv"), "--steps", "0", "--num_workers", "0",
                          "--percent", "10"]) == 0
    summary = json.loads((out / "summary.json").read_text())["modes"]
    assert summary["baseline"]["swap_top"] == {"mean": 1.0, "ci95": 0.0, "n": 5}
    assert summary["baseline"]["swap_rank"]["mean"] == pytest.approx(1.0)
    assert summary["finer"]["swap_top"]["mean"] == 0.0 and summary["finer"]["swap_rank"]["mean"] == pytest.approx(-1.0)
    assert summary["compare"]["swap_top"]["n"] == 0
    assert summary["baseline"]["token_top"]["n"] == 0  # right has no token swap: one part only, undefined
    assert "swap_top" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert {r["swap_top"] for r in rows if r["mode"] == "baseline"} == {"1.0", "nan"}


def test_evaluate_swaps_bad_input(run, tmp_path, capsys):
    tmp, _ = run
    (tmp_path / "swaps.csv").write_text(",".join(HEADER) + "\na/0.png,a,b,wheels,1,0,\n")
    rc = evaluate.main(["--cam_dir", str(tmp / "cams"), "--out", str(tmp_path / "e"), "--masks", str(tmp / "masks"),
                        "--swaps", str(tmp_path / "swaps.csv"), "--steps", "0", "--num_workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--swaps" in err and "'wheels'" in err and "Traceback" not in err
    rc = evaluate.main(["--cam_dir", str(tmp / "cams"), "--out", str(tmp_path / "e"), "--swaps",
                        str(tmp_path / "swaps.csv"), "--steps", "0", "--num_workers", "0"])
    assert rc == 2 and "--masks" in capsys.readouterr().err
