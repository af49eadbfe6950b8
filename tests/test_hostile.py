"""Checkpoints from strangers: a pickle that would run code is refused before any of it runs, everywhere."""

from __future__ import annotations

import pathlib

import pytest
import torch
from conftest import save_tiny_classifier, tiny_clip, torchscript_archive, write_image

import generate_cam
import train_classifier


class WouldRunCode:
    """Unpickling this creates a file: proof that code ran."""

    marker: pathlib.Path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def world(tmp_path):
    WouldRunCode.marker = tmp_path / "PWNED"
    model = save_tiny_classifier(tmp_path, num_classes=196, depth=2)
    evil = {**model.head.state_dict(), "weight": WouldRunCode()}
    torch.save(evil, tmp_path / "evil_head.pth")
    torch.save({**model.backbone.state_dict(), "cls_token": WouldRunCode()}, tmp_path / "evil_backbone.pth")
    torch.save({**tiny_clip().state_dict(), "logit_scale": WouldRunCode()}, tmp_path / "evil_clip.pt")
    torchscript_archive(tiny_clip().state_dict(), tmp_path / "clip_archive.pt")
    write_image(tmp_path / "data" / "a" / "0.jpg")
    return tmp_path


def generate(tmp_path, *flags):
    return generate_cam.main(["--dataset_path", str(tmp_path / "data"), "--save_dir", str(tmp_path / "out"),
                              "--num_workers", "0", *flags])


@pytest.mark.parametrize("flags, file", [
    (["--model_path", "evil_backbone.pth", "--classifier_path", "head.pth"], "evil_backbone.pth"),
    (["--model_path", "backbone.pth", "--classifier_path", "evil_head.pth"], "evil_head.pth"),
    (["--backbone", "clip", "--model_path", "evil_clip.pt", "--concepts", "red crown"], "evil_clip.pt"),
])
def test_a_pickle_that_would_run_code_is_refused(world, capsys, flags, file):
    flags = [str(world / f) if f.endswith((".pth", ".pt")) else f for f in flags]
    assert generate(world, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and file in err[0] and "refused" in err[0] and "could run code" in err[0], err
    assert not WouldRunCode.marker.exists()


def test_a_torchscript_archive_is_only_read_for_clip(world, capsys):
    assert generate(world, "--model_path", str(world / "clip_archive.pt"), "--classifier_path",
                    str(world / "head.pth")) == 2
    assert "a TorchScript archive, not a state dict" in capsys.readouterr().err
    assert generate(world, "--backbone", "clip", "--model_path", str(world / "clip_archive.pt"),
                    "--concepts", "red crown") == 0


def test_a_training_state_that_would_run_code_is_refused(world, capsys):
    data = world / "train_data"
    for c in ("a", "b"):
        for j in range(3):
            write_image(data / c / f"{j}.png", seed=j + (c == "b") * 10)
    out = world / "head_out"
    out.mkdir()
    (out / ".finer_cam.lock").touch()  # a folder an earlier training wrote, its state swapped for a crafted one
    torch.save({"epoch": WouldRunCode()}, out / "train_state.pth")
    code = train_classifier.main(["--data_root", str(data), "--model_path", str(world / "backbone.pth"),
                                  "--output_dir", str(out), "--resume", "--num_workers", "0", "--image_size", "28"])
    assert code == 2
    assert "refused" in capsys.readouterr().err and not WouldRunCode.marker.exists()
