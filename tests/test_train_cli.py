"""train_classifier.py on a tiny random backbone and small generated class folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_classifier
from PIL import Image

import finer_cam.train
import generate_cam
import train_classifier
from finer_cam.models import Classifier, load_head, read_sidecar
from finer_cam.train import find_split

COLOURS = {"red café": (200, 40, 40), "green (v2)": (40, 190, 60), "blue, dark/ish".replace("/", "-"): (30, 50, 200)}


def write_colour(path: Path, rgb, seed: int, size=(36, 28)) -> None:
    """A noisy image of one colour: the class is its colour (a separable toy task)."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb)[None, None] + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_data(root: Path, train=10, test=4, test_name="test") -> Path:
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for j in range(train):
            write_colour(root / "train" / name / f"{j:03d}.png", rgb, seed=100 * c + j)
        for j in range(test):
            write_colour(root / test_name / name / f"{j:03d}.png", rgb, seed=100 * c + 50 + j)
    return root


@pytest.fixture
def backbone(tmp_path) -> Path:
    path = tmp_path / "backbone.pth"
    torch.save(tiny_classifier(num_classes=3, embed_dim=64, depth=2, img_size=56).backbone.state_dict(), path)
    return path


def train(backbone: Path, data: Path, out: Path, *extra) -> int:
    return train_classifier.main(["--data_root", str(data), "--model_path", str(backbone), "--output_dir", str(out),
                                  "--image_size", "56", "--epochs", "25", "--lr", "0.02", "--num_workers", "0",
                                  "--batch_size", "8", *extra])


def test_head_trains_and_loads_in_generate_cam(tmp_path, backbone):
    data = make_data(tmp_path / "data")
    out = tmp_path / "head"
    assert train(backbone, data, out, "--normalize", "clip") == 0
    for name in ("best_classifier.pth", "last_classifier.pth", "class_names.txt", "classifier_config.json",
                 "metrics.json"):
        assert (out / name).is_file(), name
    names = (out / "class_names.txt").read_text(encoding="utf-8").splitlines()
    assert names == sorted(COLOURS)
    head = load_head(out / "best_classifier.pth")
    assert tuple(head.weight.shape) == (3, 64)
    side = read_sidecar(out / "best_classifier.pth")
    assert side.normalize == "clip" and side.image_size == 56 and side.backbone.shape["embed_dim"] == 64
    assert side.accuracy.best >= 0.9, side.accuracy
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 25 and metrics["epochs"][-1]["loss"] < metrics["epochs"][0]["loss"]
    # generate_cam.py reads the head, its class list and its preprocessing without being told
    rc = generate_cam.main(["--dataset_path", str(data / "test"), "--save_dir", str(tmp_path / "cams"),
                            "--model_path", str(backbone), "--classifier_path", str(out / "best_classifier.pth"),
                            "--num_workers", "0", "--modes", "baseline:0", "finer:0.6:1"])
    assert rc == 0
    run = json.loads((tmp_path / "cams" / "run.json").read_text())
    assert run["class_names"] == names
    assert run["preprocessing"]["normalize"] == "clip" and run["preprocessing"]["image_size"] == 56
    index = [json.loads(line) for line in (tmp_path / "cams" / "index.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sum(e["predicted"] == e["label"] for e in index) >= 0.9 * len(index)


def test_feature_cache_runs_the_backbone_once_per_image(tmp_path, backbone, monkeypatch):
    data = make_data(tmp_path / "data", train=4, test=2)
    seen = []
    original = Classifier.features

    def counting(self, x):
        seen.append(len(x))
        return original(self, x)

    monkeypatch.setattr(Classifier, "features", counting)
    cache = tmp_path / "cache"
    assert train(backbone, data, tmp_path / "a", "--feature_cache", str(cache), "--epochs", "2") == 0
    assert sum(seen) == 18
    seen.clear()
    assert train(backbone, data, tmp_path / "b", "--feature_cache", str(cache), "--epochs", "2") == 0
    assert sum(seen) == 0
    # another preprocessing is another cache entry
    assert train(backbone, data, tmp_path / "c", "--feature_cache", str(cache), "--epochs", "2",
                 "--normalize", "clip") == 0
    assert sum(seen) == 18
    assert torch.equal(load_head(tmp_path / "a" / "last_classifier.pth").weight,
                       load_head(tmp_path / "b" / "last_classifier.pth").weight)


@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_head(tmp_path, backbone, monkeypatch):
    data = make_data(tmp_path / "data", train=4, test=2)
    assert train(backbone, data, tmp_path / "straight", "--epochs", "6") == 0
    calls = []
    real_scores = finer_cam.train.head_scores

    def interrupt_in_epoch_4(*args):
        calls.append(1)
        if len(calls) == 7:  # two calls per epoch: the 4th epoch's evaluation
            raise KeyboardInterrupt
        return real_scores(*args)

    monkeypatch.setattr(finer_cam.train, "head_scores", interrupt_in_epoch_4)
    assert train(backbone, data, tmp_path / "resumed", "--epochs", "6") == 130
    monkeypatch.setattr(finer_cam.train, "head_scores", real_scores)
    state = torch.load(tmp_path / "resumed" / "train_state.pth", weights_only=True)
    assert state["epoch"] == 3
    assert train(backbone, data, tmp_path / "resumed", "--epochs", "6", "--resume") == 0
    a, b = (load_head(tmp_path / d / "last_classifier.pth") for d in ("straight", "resumed"))
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-6)
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3, 4, 5, 6]
    assert train(backbone, data, tmp_path / "nothing", "--resume") == 2


def test_refuses_an_existing_output_without_overwrite(tmp_path, backbone, capsys):
    data = make_data(tmp_path / "data", train=3, test=1)
    out = tmp_path / "head"
    assert train(backbone, data, out, "--epochs", "1") == 0
    before = (out / "best_classifier.pth").read_bytes()
    assert train(backbone, data, out, "--epochs", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--output_dir" in err and "--overwrite" in err
    assert (out / "best_classifier.pth").read_bytes() == before
    assert train(backbone, data, out, "--epochs", "1", "--overwrite") == 0


def test_layouts(tmp_path):
    # train + valid
    data = make_data(tmp_path / "tv", train=3, test=2, test_name="valid")
    split = find_split(data)
    assert split.layout == "train+valid" and len(split.train) == 9 and len(split.val) == 6
    assert split.class_names == sorted(COLOURS)
    # one ImageFolder: a seeded, deterministic split per class
    flat = tmp_path / "flat"
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for j in range(10):
            write_colour(flat / name / f"{j}.png", rgb, seed=j)
    a, b, other = find_split(flat, 0.3, seed=1), find_split(flat, 0.3, seed=1), find_split(flat, 0.3, seed=2)
    assert a.train == b.train and a.val == b.val and a.val != other.val
    assert len(a.val) == 9 and len(a.train) == 21 and not set(a.val) & set(a.train)
    assert {label for _, label in a.val} == {0, 1, 2}
    # a lone train folder is split the same way
    lone = tmp_path / "lone"
    lone.mkdir()
    flat.rename(lone / "train")
    c = find_split(lone, 0.3, seed=1)
    assert c.val_name == "held-out" and len(c.val) == 9 and "train" in c.layout


def test_bad_data_is_named_skipped_and_counted(tmp_path, backbone, capsys):
    data = make_data(tmp_path / "data", train=4, test=2)
    (data / "train" / "empty class").mkdir()
    (data / "train" / "red café" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (data / "test" / "green (v2)" / "000.png").unlink()
    (data / "test" / "green (v2)" / "001.png").unlink()
    write_colour(data / "test" / "only in test" / "0.png", (0, 0, 0), seed=0)
    out = tmp_path / "head"
    assert train(backbone, data, out, "--epochs", "2") == 1  # something failed, the head is still written
    err = capsys.readouterr().err
    assert "empty class" in err and "left out of the head" in err
    assert "broken.png" in err and "not a readable image" in err
    assert "'green (v2)' has no images" in err and "only in test" in err
    assert "Traceback" not in err
    assert (out / "class_names.txt").read_text(encoding="utf-8").splitlines() == sorted(COLOURS)
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["failed_images"]) == [str(data / "train" / "red café" / "broken.png")]


@pytest.mark.parametrize("problem", ["arch", "missing_root", "no_classes", "bad_flag"])
def test_usage_errors_are_one_line(tmp_path, backbone, capsys, problem):
    data = make_data(tmp_path / "data", train=2, test=1)
    extra = {"arch": ["--arch", "vit_small"], "missing_root": [], "no_classes": [], "bad_flag": ["--epochs", "0"]}[problem]
    root = {"missing_root": tmp_path / "nowhere", "no_classes": tmp_path / "empty"}.get(problem, data)
    (tmp_path / "empty").mkdir()
    assert train(backbone, root, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train_classifier.py: error:"), err
    assert {"arch": "backbone.pth", "missing_root": "nowhere", "no_classes": "empty",
            "bad_flag": "--epochs"}[problem] in err[0]


@pytest.mark.slow
def test_augment_trains_with_the_backbone_in_the_loop(tmp_path, backbone, monkeypatch):
    data = make_data(tmp_path / "data", train=4, test=2)
    seen = []
    original = Classifier.features
    monkeypatch.setattr(Classifier, "features", lambda self, x: seen.append(len(x)) or original(self, x))
    assert train(backbone, data, tmp_path / "head", "--augment", "--epochs", "3") == 0
    assert sum(seen) == 6 + 3 * 12  # the evaluation images once, the training images every epoch
    assert json.loads((tmp_path / "head" / "classifier_config.json").read_text())["training"]["augment"] is True


def test_generate_refuses_a_head_trained_on_another_backbone(tmp_path, backbone, capsys):
    data = make_data(tmp_path / "data", train=2, test=1)
    assert train(backbone, data, tmp_path / "head", "--epochs", "1") == 0
    deeper = tmp_path / "deeper.pth"
    torch.save(tiny_classifier(num_classes=3, embed_dim=64, depth=3, img_size=56).backbone.state_dict(), deeper)
    rc = generate_cam.main(["--dataset_path", str(data / "test"), "--save_dir", str(tmp_path / "cams"),
                            "--model_path", str(deeper), "--classifier_path", str(tmp_path / "head" / "best_classifier.pth"),
                            "--num_workers", "0"])
    assert rc == 2
    assert "trained on another backbone" in capsys.readouterr().err


def test_bf16_features(tmp_path, backbone):
    data = make_data(tmp_path / "data", train=4, test=2)
    assert train(backbone, data, tmp_path / "head", "--precision", "bf16", "--epochs", "10") == 0
    side = json.loads((tmp_path / "head" / "classifier_config.json").read_text())
    assert side["training"]["precision"] == "bf16" and side["accuracy"]["best"] >= 0.5


@pytest.mark.slow
def test_clip_backbone_head_trains_and_explains(tmp_path, backbone, capsys):
    from conftest import tiny_clip, torchscript_archive

    clip_file = tmp_path / "ViT-tiny.pt"
    torchscript_archive(tiny_clip(patch=8, resolution=32).state_dict(), clip_file)
    data = make_data(tmp_path / "data")
    out = tmp_path / "clip_head"
    assert train_classifier.main(["--backbone", "clip", "--clip_pool", "mean", "--data_root", str(data),
                                  "--model_path", str(clip_file), "--output_dir", str(out), "--epochs", "40",
                                  "--lr", "0.05", "--num_workers", "0", "--batch_size", "8"]) == 0
    side = read_sidecar(out / "best_classifier.pth")
    assert side.backbone.kind == "clip" and side.backbone.pool == "mean"
    assert side.normalize == "clip" and side.image_size == 32  # the checkpoint's resolution
    assert load_head(out / "best_classifier.pth").weight.shape == (3, 32)  # on the 32-dim CLIP embedding
    assert side.accuracy.best >= 0.9
    cams = tmp_path / "cams"
    assert generate_cam.main(["--backbone", "clip", "--clip_pool", "mean", "--model_path", str(clip_file),
                              "--classifier_path", str(out / "best_classifier.pth"), "--dataset_path",
                              str(data / "test"), "--save_dir", str(cams), "--num_workers", "0"]) == 0
    index = [json.loads(line) for line in (cams / "index.jsonl").read_text().splitlines()]
    assert len(index) == 12 and sum(e["predicted"] == e["label"] for e in index) >= 10
    assert np.load(cams / index[0]["map"]).shape == (3, 32, 32)
    capsys.readouterr()
    assert generate_cam.main(["--backbone", "clip", "--clip_pool", "cls", "--model_path", str(clip_file),
                              "--classifier_path", str(out / "best_classifier.pth"), "--dataset_path",
                              str(data / "test"), "--save_dir", str(tmp_path / "c2"), "--num_workers", "0"]) == 2
    assert "pool mean vs cls" in capsys.readouterr().err
    assert generate_cam.main(["--model_path", str(backbone), "--classifier_path", str(out / "best_classifier.pth"),
                              "--dataset_path", str(data / "test"), "--save_dir", str(tmp_path / "c3"),
                              "--num_workers", "0"]) == 2


@pytest.mark.slow
def test_ctrl_c_finishes_the_epoch_saves_its_state_and_resume_completes(tmp_path, backbone, monkeypatch, capsys):
    import os
    import signal

    data = make_data(tmp_path / "data", train=4, test=2)
    assert train(backbone, data, tmp_path / "straight", "--epochs", "5") == 0
    calls, real_scores = [], finer_cam.train.head_scores

    def ctrl_c_in_epoch_2(*args):
        calls.append(1)
        if len(calls) == 3:  # during the 2nd epoch's evaluation
            os.kill(os.getpid(), signal.SIGINT)
        return real_scores(*args)

    monkeypatch.setattr(finer_cam.train, "head_scores", ctrl_c_in_epoch_2)
    assert train(backbone, data, tmp_path / "resumed", "--epochs", "5") == 130
    err = capsys.readouterr().err
    assert "stopping after the current batch" in err and "--resume" in err
    assert torch.load(tmp_path / "resumed" / "train_state.pth", weights_only=True)["epoch"] == 2  # epoch 2 finished
    monkeypatch.setattr(finer_cam.train, "head_scores", real_scores)
    assert train(backbone, data, tmp_path / "resumed", "--epochs", "5", "--resume") == 0
    a, b = (load_head(tmp_path / d / "last_classifier.pth") for d in ("straight", "resumed"))
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-6)
