"""What a careless or hostile user could break, through the CLIs: each class of problem named in one line,
skipped or refused, never a hang, a traceback, a silent loss or a file outside its folder."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_classifier, write_image
from PIL import Image

import evaluate
import generate_cam
import train_classifier
import visualize
from dinov2 import DinoVisionTransformer
from finer_cam import atomic, errors
from finer_cam.cam import normalize_maps, resize_maps
from finer_cam.data import find_images, read_class_names
from finer_cam.cli import message
from finer_cam.errors import ArgumentError, FinerCamError
from finer_cam.evaluate import EvaluateConfig, EvaluateResult
from finer_cam.ground_truth import _read_boxes
from finer_cam.report import format_table
from finer_cam.generate import GenerateConfig
from finer_cam.models import TOY_CONFIG
from finer_cam.overlay import fit_map
from finer_cam.train import TrainConfig

CLASSES = ["red", "green", "blue"]


@pytest.fixture
def no_hang():
    """Fail (instead of blocking the suite for ever) when a test does not finish within 60 s."""

    def expired(signum, frame):
        raise TimeoutError("blocked: a reader waited on a file for ever")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def world(tmp_path):
    """A 3-class tiny model, its class list, and two images a class."""
    save_tiny_classifier(tmp_path, num_classes=3, depth=2)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    for i, name in enumerate(CLASSES):
        for j in range(2):
            write_image(tmp_path / "data" / name / f"{j}.png", size=(40 + 8 * j, 30), seed=10 * i + j)
    return tmp_path


def generate(world: Path, *flags, data=None, out="out") -> int:
    return generate_cam.main(["--dataset_path", str(data or world / "data"), "--save_dir", str(world / out),
                              "--model_path", str(world / "backbone.pth"), "--classifier_path",
                              str(world / "head.pth"), "--class_names", str(world / "classes.txt"),
                              "--num_workers", "0", "--image_size", "56", *flags])


def train(world: Path, out: Path, *flags, data=None) -> int:
    return train_classifier.main(["--data_root", str(data or world / "data"), "--model_path",
                                  str(world / "backbone.pth"), "--output_dir", str(out), "--image_size", "28",
                                  "--epochs", "3", "--num_workers", "0", "--batch_size", "4", *flags])


def one_error_line(capsys, *words) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and all(w in err[0] for w in words), err
    return err[0]


def strict_json(path: Path):
    """The file parsed as strict JSON: NaN and Infinity (which json.loads accepts by default) fail."""

    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def index(out: Path) -> dict[str, dict]:
    return {e["image"]: e for e in map(json.loads, (out / "index.jsonl").read_text("utf-8").splitlines())}


# --------------------------------------------------------------------------------- special files

def test_a_fifo_with_an_image_name_is_named_and_skipped_not_waited_on(world, capsys, no_hang):
    os.mkfifo(world / "data" / "red" / "pipe.jpg")
    assert generate(world) == 1
    entry = index(world / "out")["red/pipe.jpg"]
    assert "not a regular file" in entry["error"] and len(index(world / "out")) == 7
    assert "pipe.jpg" in capsys.readouterr().err
    assert train(world, world / "head_out") == 1  # the same data, trained on: named, skipped, counted
    failed = json.loads((world / "head_out" / "metrics.json").read_text())["failed_images"]
    assert list(failed) == [str(world / "data" / "red" / "pipe.jpg")]


def test_fifos_given_as_list_file_class_list_or_checkpoint_are_refused_in_one_line(world, capsys, no_hang):
    os.mkfifo(world / "list.txt")
    assert generate(world, data=world / "list.txt") == 2
    one_error_line(capsys, "list.txt", "not a regular file")
    os.mkfifo(world / "names.txt")
    assert generate(world, "--class_names", str(world / "names.txt")) == 2
    one_error_line(capsys, "names.txt", "not a regular file")
    os.mkfifo(world / "fifo_head.pth")
    assert generate(world, "--classifier_path", str(world / "fifo_head.pth")) == 2
    one_error_line(capsys, "fifo_head.pth", "not a regular file")


# ------------------------------------------------------------------------------- permissions

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_permissions_of_the_umask(world, umask, mode):
    before = os.umask(umask)
    try:
        assert generate(world) == 0
        assert visualize.main(["--cam_dir", str(world / "out"), "--save_dir", str(world / "vis")]) == 0
    finally:
        os.umask(before)
    files = [world / "out" / "run.json", world / "out" / "index.jsonl", world / "out" / "red" / "0.npy",
             world / "vis" / "red" / "0.jpg"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


# ---------------------------------------------------------------------------------------- locks

def test_a_folder_in_use_is_refused_in_one_line_and_a_dead_runs_lock_does_not_block(world, capsys):
    (world / "out").mkdir()
    held = atomic.FolderLock(world / "out", "save_dir")  # another run writing there
    try:
        assert generate(world) == 2
        line = one_error_line(capsys, "--save_dir", "in use by another run", f"process {os.getpid()}")
        assert not (world / "out" / "run.json").exists(), line
        (world / "vis").mkdir()
        vis_lock = atomic.FolderLock(world / "vis", "save_dir")
    finally:
        held.release()
    assert generate(world) == 0
    assert visualize.main(["--cam_dir", str(world / "out"), "--save_dir", str(world / "vis")]) == 2
    one_error_line(capsys, "--save_dir", "in use")
    vis_lock.release()
    # a lock file left by a killed process (its PID written, no lock held) lets the next run in
    (world / "out" / atomic.OUTPUT_MARKER).write_text("999999\n")
    assert generate(world, "--overwrite") == 0
    (world / "head_out").mkdir()
    held = atomic.FolderLock(world / "head_out", "output_dir")
    try:
        assert train(world, world / "head_out") == 2
        one_error_line(capsys, "--output_dir", "in use")
    finally:
        held.release()


# ------------------------------------------------------------------------------------ resume

def test_generate_resume_checks_precision_and_decoding_and_records_them(world, capsys):
    assert generate(world, "--precision", "fp32") == 0
    assert json.loads((world / "out" / "run.json").read_text())["decode"] == "pil"
    for flags, key in ((("--precision", "bf16"), "precision"), (("--decode", "draft"), "decode")):
        assert generate(world, *flags) == 2
        one_error_line(capsys, "different", key)
    assert generate(world) == 0 and "6 already done" in capsys.readouterr().err


def test_a_folder_made_with_arch_auto_resumes_with_the_name_it_resolved_to(world, capsys):
    torch.manual_seed(0)
    torch.save(DinoVisionTransformer(TOY_CONFIG).state_dict(), world / "toy.pth")
    torch.save(torch.nn.Linear(128, 3).state_dict(), world / "toy_head.pth")
    flags = ("--model_path", str(world / "toy.pth"), "--classifier_path", str(world / "toy_head.pth"))
    assert generate(world, *flags) == 0
    assert json.loads((world / "out" / "run.json").read_text())["backbone"]["arch"] == "vit_toy"
    assert generate(world, *flags, "--arch", "vit_toy") == 0
    assert "6 already done" in capsys.readouterr().err


def test_train_resume_refuses_other_settings(world, capsys):
    out = world / "head_out"
    assert train(world, out) == 0
    for flags, key in ((("--image_size", "42"), "image_size"), (("--normalize", "clip"), "normalize"),
                       (("--lr", "0.5"), "lr")):
        assert train(world, out, "--resume", *flags) == 2
        one_error_line(capsys, "--resume", "other settings", key)
    assert train(world, out, "--resume") == 0  # the same settings: accepted (nothing left to train)


# ------------------------------------------------------------------------- paths from files

def test_visualize_never_reads_or_writes_outside_its_folders_on_a_crafted_index(world, tmp_path_factory, capsys):
    assert generate(world) == 0
    outside = tmp_path_factory.mktemp("outside")
    np.save(outside / "evil.npy", np.zeros((3, 8, 8), np.float16))
    good = index(world / "out")["red/0.png"]
    originals = sorted(index(world / "out"))
    crafted = [{**good, "image": "red/1.png", "map": str(outside / "evil.npy")},
               {**good, "image": str(world / "data" / "green" / "0.png")},
               {**good, "image": "../data/blue/0.png", "map": "red/0.npy"},
               {**good, "image": "blue/0.png", "map": "../../" + outside.name + "/evil.npy"}]
    with open(world / "out" / "index.jsonl", "a", encoding="utf-8") as f:
        f.writelines(json.dumps(e) + "\n" for e in crafted)
    code = visualize.main(["--cam_dir", str(world / "out"), "--save_dir", str(world / "vis"), "--format", "png"])
    assert code == 0
    assert sorted(p.name for p in outside.iterdir()) == ["evil.npy"]
    written = sorted(p.relative_to(world / "vis").as_posix() for p in (world / "vis").rglob("*.png"))
    assert written == originals  # the six images, once each; the crafted lines left out
    assert sorted(p.relative_to(world / "data").as_posix() for p in (world / "data").rglob("*")
                  if p.is_file()) == originals  # nothing written into the data set
    assert "not a relative path inside the folder" in capsys.readouterr().err


def test_a_boxes_csv_naming_paths_outside_the_data_set_is_refused(tmp_path):
    for bad in ("/etc/passwd", "../x.jpg", "a/../../x.jpg"):
        (tmp_path / "boxes.csv").write_text(f"image,x1,y1,x2,y2\n{bad},0,0,1,1\n", encoding="utf-8")
        with pytest.raises(errors.FinerCamError, match="line 2"):
            _read_boxes(tmp_path / "boxes.csv")


# -------------------------------------------------------------------------------- visualize

def test_a_strip_too_wide_for_jpeg_is_written_as_png_and_the_run_goes_on(world, capsys):
    Image.fromarray(np.full((1, 8800, 3), 128, np.uint8)).save(world / "data" / "red" / "wide.png")
    assert generate(world, "--modes", "baseline:0") == 0
    assert visualize.main(["--cam_dir", str(world / "out"), "--save_dir", str(world / "vis"), "--size", "8"]) == 0
    assert (world / "vis" / "red" / "wide.png").is_file() and (world / "vis" / "red" / "0.jpg").is_file()
    assert Image.open(world / "vis" / "red" / "wide.png").width > 65535
    assert "more than JPEG holds" in capsys.readouterr().err


def test_grid_flags_are_checked_before_any_work(world, capsys):
    assert generate(world) == 0
    (world / "afile").write_text("x")
    for flags, words in ((["--grid", str(world / "afile" / "grid.png")], ("--grid", "is a file")),
                         (["--grid", str(world / "g.png"), "--grid_rows", "0"], ("--grid_rows",))):
        assert visualize.main(["--cam_dir", str(world / "out"), "--save_dir", str(world / "vis"), *flags]) == 2
        one_error_line(capsys, *words)
        assert not (world / "vis").exists()


def test_visualize_removes_the_temporaries_of_a_killed_run(world):
    assert generate(world) == 0
    assert visualize.main(["--cam_dir", str(world / "out"), "--save_dir", str(world / "vis")]) == 0
    stale = world / "vis" / "red" / ".0.jpg.k2j4h1.tmp"
    stale.write_bytes(b"")  # what kill -9 leaves mid-write
    assert visualize.main(["--cam_dir", str(world / "out"), "--save_dir", str(world / "vis")]) == 0
    assert not stale.exists()


def test_outputs_inside_the_data_set_are_never_read_as_images(world, capsys):
    assert generate(world) == 0
    strips = world / "data" / "strips"
    assert visualize.main(["--cam_dir", str(world / "out"), "--save_dir", str(strips)]) == 0
    assert len(list(strips.rglob("*.jpg"))) == 6
    assert generate(world, out="out2") == 0
    assert sorted(index(world / "out2")) == sorted(index(world / "out"))  # no strip explained
    assert train(world, world / "head_out") == 0
    assert (world / "head_out" / "class_names.txt").read_text().split() == ["blue", "green", "red"]


# ----------------------------------------------------------------------------------- text files

def test_a_byte_order_mark_is_not_part_of_a_list_file_a_class_list_or_a_boxes_csv(world):
    (world / "list.txt").write_text("\ufeffdata/red/0.png\ndata/green/1.png\n", encoding="utf-8")
    images = find_images(world / "list.txt")
    assert [p.name for p in images.paths] == ["0.png", "1.png"] and all(p.is_file() for p in images.paths)
    (world / "bom_classes.txt").write_text("\ufeff" + "\n".join(CLASSES), encoding="utf-8")
    assert read_class_names(world / "bom_classes.txt") == CLASSES
    (world / "boxes.csv").write_text("\ufeffimage,x1,y1,x2,y2\nred/0.png,1,2,3,4\n", encoding="utf-8")
    assert _read_boxes(world / "boxes.csv") == {"red/0.png": [(1.0, 2.0, 3.0, 4.0)]}


@pytest.mark.parametrize("line", ["/", "data", "data/red/.."])
def test_a_list_file_naming_a_folder_is_one_line(world, line):
    (world / "list.txt").write_text(f"data/red/0.png\n{line}\n", encoding="utf-8")
    with pytest.raises(errors.FinerCamError, match="line 2: .* is a folder"):
        find_images(world / "list.txt")


# ------------------------------------------------------------------------------------- flags

@pytest.mark.parametrize("script, flags, words", [
    ("generate", ["--num_workers", "-1"], ("--num_workers",)),
    ("generate", ["--max_pixels", "-1"], ("--max_pixels",)),
    ("train", ["--num_workers", "-1"], ("--num_workers",)),
    ("train", ["--lr", "nan"], ("--lr",)),
    ("train", ["--weight_decay", "-1"], ("--weight_decay",)),
    ("train", ["--max_pixels", "-1"], ("--max_pixels",)),
    ("evaluate", ["--num_workers", "-1"], ("--num_workers",)),
    ("evaluate", ["--percent", "5", "5"], ("--percent", "twice")),
    ("visualize", ["--max_pixels", "-1"], ("--max_pixels",)),
])
def test_bad_flags_are_one_line_before_any_work(world, capsys, script, flags, words):
    if script in ("evaluate", "visualize"):
        assert generate(world) == 0
        capsys.readouterr()
    if script == "generate":
        assert generate(world, *flags, out="new") == 2
        assert not (world / "new").exists()  # no empty run folder left behind
    elif script == "train":
        assert train(world, world / "head_out", *flags) == 2
        assert not (world / "head_out").exists()
    elif script == "evaluate":
        assert evaluate.main(["--cam_dir", str(world / "out"), "--out", str(world / "ev"), *flags]) == 2
    else:
        assert visualize.main(["--cam_dir", str(world / "out"), "--save_dir", str(world / "vis"), *flags]) == 2
    one_error_line(capsys, *words)


def test_train_output_dir_naming_a_file_stops_before_computing_features(world, capsys, monkeypatch):
    import finer_cam.train

    def no_features(*args, **kwargs):
        raise AssertionError("features computed before the output folder was checked")

    monkeypatch.setattr(finer_cam.train, "extract_features", no_features)
    (world / "afile").write_text("x")
    for out in (world / "afile", world / "afile" / "sub"):
        assert train(world, out) == 2
        one_error_line(capsys, "--output_dir", "is a file")


# ------------------------------------------------------------------------- non-finite numbers

def test_divergent_training_stops_in_one_line_and_saves_no_head(world, capsys):
    assert train(world, world / "head_out", "--lr", "1e6", "--epochs", "25") == 2
    one_error_line(capsys, "diverged", "--lr")
    assert not (world / "head_out" / "best_classifier.pth").exists()


def test_a_head_with_non_finite_weights_is_refused_by_every_script(world, capsys):
    assert generate(world) == 0
    head = torch.load(world / "head.pth", weights_only=True)
    head["weight"][0, 0] = float("nan")
    torch.save(head, world / "nan_head.pth")
    assert generate(world, "--classifier_path", str(world / "nan_head.pth"), out="out2") == 2
    one_error_line(capsys, "nan_head.pth", "NaN")
    assert evaluate.main(["--cam_dir", str(world / "out"), "--out", str(world / "ev"), "--classifier_path",
                          str(world / "nan_head.pth"), "--num_workers", "0"]) == 2
    one_error_line(capsys, "nan_head.pth", "NaN")


def test_every_json_written_is_strict_json(world, tmp_path):
    atomic.write_json(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    assert strict_json(tmp_path / "x.json") == {"a": None, "b": [None, 1.5], "c": {"d": None}}
    assert generate(world) == 0
    # one image: its 95% intervals are undefined, which used to be written as NaN
    assert evaluate.main(["--cam_dir", str(world / "out"), "--out", str(world / "ev"), "--limit", "1",
                          "--num_workers", "0", "--steps", "2"]) == 0
    summary = strict_json(world / "ev" / "summary.json")
    assert summary["modes"]["baseline"]["rd@5"]["ci95"] is None
    assert train(world, world / "head_out") == 0
    for name in ("metrics.json", "classifier_config.json"):
        strict_json(world / "head_out" / name)
    strict_json(world / "out" / "run.json")


# --------------------------------------------------------------------------------- odd inputs

def test_one_image_as_dataset_path_explains_that_image(world, capsys):
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(world / "one.ppm")  # a PPM's header is text
    assert generate(world, data=world / "one.ppm") == 0
    assert list(index(world / "out")) == ["one.ppm"]
    assert "1 explained" in capsys.readouterr().err


def test_a_map_constant_up_to_rounding_normalises_to_zeros():
    one_patch = torch.tensor([0.37, 1e-3, 5e4]).view(3, 1, 1)
    upsampled = resize_maps(one_patch, (57, 31))  # bilinear: rounding noise around the constant
    assert (normalize_maps(upsampled) == 0).all()
    for m in upsampled:
        assert (fit_map(m.numpy(), (90, 50)) == 0).all()
    ramp = torch.linspace(0, 1, 64).view(1, 8, 8) * 1e-3 + 5.0  # a real (small) range is kept
    assert normalize_maps(ramp).max() == pytest.approx(1.0, abs=1e-3)


def test_one_patch_grid_maps_are_zero_end_to_end(world):
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(world / "data" / "red" / "dot.png")
    assert generate_cam.main(["--dataset_path", str(world / "data"), "--save_dir", str(world / "out"),
                              "--model_path", str(world / "backbone.pth"), "--classifier_path", str(world / "head.pth"),
                              "--class_names", str(world / "classes.txt"), "--num_workers", "0",
                              "--max_size", "28"]) == 0  # a 1x1 image is never enlarged: one 14 px patch
    maps = np.load(world / "out" / "red" / "dot.npy")
    assert maps.shape == (3, 14, 14) and (maps == 0).all()


# ------------------------------------------------------------------------------ smaller things

@pytest.mark.parametrize("module", [generate_cam, train_classifier, visualize, evaluate])
def test_help_gives_each_default_once_and_no_literal_percent_signs(module):
    parser = module.build_parser()
    text = parser.format_help()
    assert "%%" not in text
    for action in parser._actions:
        if action.help:
            assert parser._get_formatter()._expand_help(action).lower().count("default") <= 1, action.option_strings


def test_help_lists_vit_toy_and_says_what_draft_decoding_and_mask_names_do():
    gen = " ".join(generate_cam.build_parser().format_help().split())
    assert "vit_toy" in gen and "very close" not in gen and "check on your data" in gen
    ev = " ".join(evaluate.build_parser().format_help().split())
    assert "extension replaced by .png" in ev and "a.jpg and a.png share one mask" in ev


def test_a_mode_whose_ranks_all_lie_beyond_the_classes_is_warned_about(world, capsys):
    assert generate(world, "--modes", "baseline:0", "x:0.6:999", "finer:0.6:1,2") == 0
    err = capsys.readouterr().err
    assert "x:0.6:999" in err and "plain Grad-CAM" in err and "finer:0.6:1,2" not in err


def test_max_size_with_a_head_trained_at_a_fixed_size_is_warned_about(world, capsys):
    assert train(world, world / "head_out") == 0
    capsys.readouterr()
    assert generate_cam.main(["--dataset_path", str(world / "data"), "--save_dir", str(world / "out"),
                              "--model_path", str(world / "backbone.pth"), "--classifier_path",
                              str(world / "head_out" / "best_classifier.pth"), "--num_workers", "0",
                              "--max_size", "56"]) == 0
    assert "trained on 28 px squares but --max_size 56" in capsys.readouterr().err


def test_the_table_says_how_many_images_a_metric_used():
    summary = {"finer": {"rd@5": {"mean": 0.1, "ci95": 0.01, "n": 10},
                         "energy_box": {"mean": 0.5, "ci95": 0.02, "n": 7}}}
    table = format_table(EvaluateResult(summary=summary, rows=[], metrics=["rd@5", "energy_box"]))
    row = table.splitlines()[-1]
    assert "0.500 ± 0.020 (n=7)" in row and row.rstrip(" |").endswith("10") and "(n=10)" not in row


@pytest.mark.parametrize("make", [
    lambda: GenerateConfig("d", "s", backbone="dinov3"),
    lambda: GenerateConfig("d", "s", modes=["finer:0.6"]),
    lambda: GenerateConfig("d", "s", image_size=224, max_size=448),
    lambda: TrainConfig("d", None, "o", lr=float("nan")),
    lambda: TrainConfig("d", None, "o", precision="fp8"),
    lambda: EvaluateConfig("c", "o", part_radius=1.5),
    lambda: EvaluateConfig("c", "o", masks="m", boxes="b"),
])
def test_a_run_configuration_checks_its_values_when_it_is_made(make):
    """From Python as from a command line: the configuration is where a bad value stops, before any file is read.
    Python names the field, a command line (``cli.message``) the flag."""
    with pytest.raises(ArgumentError) as info:
        make()
    assert str(info.value).startswith(info.value.name) and "--" not in str(info.value)
    assert message(info.value).startswith(f"--{info.value.name}")


def test_argument_errors_cross_processes_and_keep_user_text(tmp_path):
    """A loader worker's ArgumentError comes back whole, with or without a value; the library's form drops the
    dashes of the flags a message names, never those inside a path it quotes."""
    import pickle

    for error in (ArgumentError("concepts", problem="needs --backbone clip"), ArgumentError("modes", "x:1", "bad")):
        back = pickle.loads(pickle.dumps(error))
        assert (back.name, back.problem, str(back)) == (error.name, error.problem, str(error))
    error = ArgumentError("dataset_path", problem="line 1: '/tmp/--data/sub' is a folder (give --dataset_path)")
    assert str(error) == "dataset_path: line 1: '/tmp/--data/sub' is a folder (give dataset_path)"


def test_a_negative_seed_and_a_bad_sidecar_are_one_line_errors(tmp_path):
    with pytest.raises(ArgumentError, match="^seed=-1"):
        TrainConfig("d", None, "o", seed=-1)
    from finer_cam.models import read_sidecar

    for bad in ({"image_size": "big"}, {"image_size": 0}, {"normalize": "foo"}):
        (tmp_path / "classifier_config.json").write_text(json.dumps(bad))
        with pytest.raises(FinerCamError, match="classifier_config.json: '(image_size|normalize)'"):
            read_sidecar(tmp_path / "head.pth")
