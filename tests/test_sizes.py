"""Input sizes: one that leaves fewer than two patches a side is refused before any work, and run.json (or the
head's sidecar) records the size the images were actually resized to."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import save_tiny_classifier, write_image

import generate_cam
import train_classifier


@pytest.fixture
def setup(tmp_path):
    save_tiny_classifier(tmp_path, num_classes=3)  # a DINOv2 of 14 px patches
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    for c in "ab":
        for j in range(2):
            write_image(tmp_path / "data" / c / f"{j}.jpg", size=(50, 40), seed=j + 3 * (c == "b"))
    return tmp_path


def generate(tmp_path, *extra):
    return generate_cam.main(["--dataset_path", str(tmp_path / "data"), "--save_dir", str(tmp_path / "out"),
                              "--model_path", str(tmp_path / "backbone.pth"), "--classifier_path",
                              str(tmp_path / "head.pth"), "--class_names", str(tmp_path / "classes.txt"),
                              "--num_workers", "0", "--device", "cpu", "--modes", "baseline:0", *extra])


@pytest.mark.parametrize("flag, value", [("--image_size", "7"), ("--image_size", "27"), ("--max_size", "5")])
def test_a_size_of_fewer_than_two_patches_a_side_is_refused_before_any_work(setup, capsys, flag, value):
    assert generate(setup, flag, value) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag} {value}" in err[0] and "two patches" in err[0] and "28" in err[0], err
    assert not (setup / "out").exists()


def test_run_json_records_the_size_actually_used(setup, capsys):
    assert generate(setup, "--image_size", "30") == 0  # 30 px is rounded up to 42, three 14 px patches
    run_info = json.loads((setup / "out" / "run.json").read_text())
    assert run_info["preprocessing"]["image_size"] == 42
    maps = np.load(next((setup / "out").rglob("*.npy")), allow_pickle=False)
    assert maps.shape[-2:] == (42, 42)
    assert "resized to 42 px" in capsys.readouterr().err
    assert generate(setup, "--image_size", "28", "--overwrite") == 0  # a multiple: as asked
    assert json.loads((setup / "out" / "run.json").read_text())["preprocessing"]["image_size"] == 28


def test_train_refuses_the_same_sizes_and_records_the_size_used(setup, capsys):
    args = ["--data_root", str(setup / "data"), "--output_dir", str(setup / "head_out"), "--model_path",
            str(setup / "backbone.pth"), "--epochs", "1", "--num_workers", "0", "--device", "cpu",
            "--val_fraction", "0.5"]
    assert train_classifier.main([*args, "--image_size", "20"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--image_size 20" in err[0] and "two patches" in err[0], err
    assert train_classifier.main([*args, "--image_size", "30"]) == 0
    sidecar = json.loads((setup / "head_out" / "classifier_config.json").read_text())
    assert sidecar["image_size"] == 42
