"""evaluate.py's ground truth: explicit mask encodings, label maps with class attributes (the pair-level
"difference" regions), and unreadable mask files named, skipped and counted."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from conftest import save_tiny_classifier, write_image
from PIL import Image

import evaluate
import generate_cam
from finer_cam.errors import FinerCamError
from finer_cam.ground_truth import GroundTruth

CLASSES = ["a", "b", "c"]
LEGEND = {"background": 0, "regions": {"body": 1, "left": 2, "right": 3}, "parts": ["left", "right"]}
# a and b differ in the left part, a and c in the right one, b and c in both
LOOKS = {"classes": {"a": {"body": "x", "left": "red", "right": "red"},
                     "b": {"body": "x", "left": "blue", "right": "red"},
                     "c": {"body": "x", "left": "red", "right": "blue"}}}


def label_map(width: int = 40, height: int = 30) -> np.ndarray:
    values = np.zeros((height, width), np.uint8)
    values[5:25, 5:35] = 1
    values[10:20, 8:16] = 2
    values[10:20, 24:32] = 3
    return values


def test_difference_regions_by_hand(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps(LEGEND))
    (tmp_path / "looks.json").write_text(json.dumps(LOOKS))
    Image.fromarray(label_map()).save(tmp_path / "x.png")
    truth = GroundTruth(str(tmp_path), None, "auto", str(tmp_path / "looks.json"), CLASSES)
    assert truth.format == "labels" and truth.regions == ["part", "object", "difference"]
    regions, labels = truth("x.jpg", (40, 30))
    assert regions["part"].sum() == 2 * 80 and regions["object"].sum() == 20 * 30
    assert np.array_equal(truth.difference(labels, 0, [1]), labels == 2)  # a vs b: the left part
    assert np.array_equal(truth.difference(labels, 0, [2]), labels == 3)  # a vs c: the right part
    assert np.array_equal(truth.difference(labels, 1, [2]), (labels == 2) | (labels == 3))  # b vs c: both
    assert np.array_equal(truth.difference(labels, 0, [1, 2]), (labels == 2) | (labels == 3))  # a vs {b, c}
    assert truth.difference(labels, 0, [0]) is None  # nothing differs from itself


def test_the_mask_encoding_is_one_for_the_folder_not_guessed_per_image(tmp_path):
    # an anti-aliased binary mask: 0, 255 and values in between along the edge
    values = np.zeros((30, 40), np.uint8)
    values[5:25, 5:35] = 255
    values[5:25, 4] = 128
    values[5:25, 35] = 64
    Image.fromarray(values).save(tmp_path / "x.png")
    binary = GroundTruth(str(tmp_path), None)
    assert binary.format == "binary" and binary.regions == ["object"]
    regions, _ = binary("x.png", (40, 30))
    assert set(regions) == {"object"} and regions["object"].sum() == 20 * 31
    levels = GroundTruth(str(tmp_path), None, "levels")
    regions, _ = levels("x.png", (40, 30))
    assert regions["part"].sum() == 20 * 30 and regions["object"].sum() == 20 * 32
    with pytest.raises(FinerCamError, match="labels.json"):
        GroundTruth(str(tmp_path), None, "labels")
    with pytest.raises(FinerCamError, match="^attributes .*: needs masks"):
        GroundTruth(str(tmp_path), None, "binary", str(tmp_path / "looks.json"), CLASSES)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("truth")
    save_tiny_classifier(tmp, num_classes=3, img_size=56)
    (tmp / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (tmp / "masks").mkdir()
    (tmp / "masks" / "labels.json").write_text(json.dumps(LEGEND))
    (tmp / "looks.json").write_text(json.dumps(LOOKS))
    for i, name in enumerate(CLASSES):
        for j in range(2):
            write_image(tmp / "data" / name / f"{j}.png", size=(40, 30), seed=5 * i + j)
            (tmp / "masks" / name).mkdir(exist_ok=True)
            Image.fromarray(label_map()).save(tmp / "masks" / name / f"{j}.png")
    assert generate_cam.main(["--dataset_path", str(tmp / "data"), "--save_dir", str(tmp / "cams"),
                              "--model_path", str(tmp / "backbone.pth"), "--classifier_path", str(tmp / "head.pth"),
                              "--class_names", str(tmp / "classes.txt"), "--num_workers", "0", "--image_size", "56",
                              "--save_size", "original"]) == 0
    return tmp


def test_difference_metrics_on_hand_made_maps(world, tmp_path):
    """Maps drawn by hand: each mode's map is the indicator of the regions where the target differs from that
    mode's references, so energy_difference is 1 and the peak falls inside; everything else scores below."""
    index = [json.loads(line) for line in (world / "cams" / "index.jsonl").read_text().splitlines()]
    modes = [m["name"] for m in json.loads((world / "cams" / "run.json").read_text())["modes"]]
    labels = label_map()
    looks = [LOOKS["classes"][c] for c in CLASSES]
    value = {"left": 2, "right": 3}
    expected = {}
    # the baseline's reference is its rank-1 class, which evaluate.py ranks itself: read it from a first pass
    first = tmp_path / "first"
    assert evaluate.main(["--cam_dir", str(world / "cams"), "--out", str(first), "--steps", "0", "--num_workers", "0",
                          "--masks", str(world / "masks"), "--attributes", str(world / "looks.json")]) == 0
    rank1 = {r["image"]: int(r["reference"]) for r in csv.DictReader(open(first / "per_image.csv"))}
    for entry in index:
        t = entry["target"]
        maps = []
        for mode in modes:
            refs = entry["references"].get(mode) or [rank1[entry["image"]]]
            differ = {p for r in refs for p in ("left", "right") if looks[t][p] != looks[r][p]}
            region = np.isin(labels, [value[p] for p in differ])
            expected[entry["image"], mode] = bool(differ)
            maps.append(region.astype(np.float16))
        np.save(world / "cams" / entry["map"], np.stack(maps))
    out = tmp_path / "eval"
    assert evaluate.main(["--cam_dir", str(world / "cams"), "--out", str(out), "--steps", "0", "--num_workers", "0",
                          "--masks", str(world / "masks"), "--attributes", str(world / "looks.json")]) == 0
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 6 * len(modes)
    for r in rows:
        if expected[r["image"], r["mode"]]:
            assert float(r["energy_difference"]) == pytest.approx(1.0, abs=1e-3)
            assert float(r["pointing_difference"]) == 1.0
            assert float(r["energy_object"]) == pytest.approx(1.0, abs=1e-3)
        else:  # the target differs from nothing it is compared with: no ground truth, left out
            assert r["energy_difference"] == "nan" or r["energy_difference"] == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["mask_format"] == "labels"
    assert "energy_difference" in summary["modes"]["baseline"]


def test_an_unreadable_mask_is_named_skipped_and_counted(world, tmp_path, capsys):
    masks = tmp_path / "masks"
    import shutil

    shutil.copytree(world / "masks", masks)
    (masks / "b" / "1.png").write_bytes(b"not a png")
    (masks / "a" / "0.png").unlink()
    os.mkfifo(masks / "a" / "0.png")  # named and skipped, never waited on
    out = tmp_path / "eval"
    rc = evaluate.main(["--cam_dir", str(world / "cams"), "--out", str(out), "--steps", "0", "--num_workers", "0",
                        "--masks", str(masks), "--attributes", str(world / "looks.json")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "b/1.png: unreadable mask" in err and "Traceback" not in err and "2 images skipped" in err
    assert "a/0.png: not a regular file" in err
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert {r["image"] for r in rows} == {f"{c}/{j}.png" for c in CLASSES for j in range(2)} - {"b/1.png", "a/0.png"}
    assert json.loads((out / "summary.json").read_text())["failed"] == 2
