"""visualize.py on maps that generate_cam.py wrote for a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_classifier, write_image
from PIL import Image

import finer_cam.visualize
import generate_cam
import visualize
from finer_cam.overlay import GAP, blend, colormap_lut, fit_map

CLASSES = ["Audi S4 Sedan 2012", "Audi S5 Coupe 2012", "BMW M3 Coupe 2012", "Ford F-150 Cab 2007"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 4-class tiny model, its class list and a dataset of 2 images a class (sizes differ)."""
    tmp = tmp_path_factory.mktemp("vis")
    save_tiny_classifier(tmp, num_classes=4)
    (tmp / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    for i, name in enumerate(CLASSES):
        for j in range(2):
            write_image(tmp / "data" / name / f"{j}.jpg", size=(50 + 20 * j, 40), seed=10 * i + j)
    return tmp


def generate(world: Path, save_size: str) -> Path:
    out = world / f"cams_{save_size}"
    if not (out / "run.json").exists():
        assert generate_cam.main(["--dataset_path", str(world / "data"), "--save_dir", str(out), "--model_path",
                                  str(world / "backbone.pth"), "--classifier_path", str(world / "head.pth"),
                                  "--class_names", str(world / "classes.txt"), "--num_workers", "0",
                                  "--image_size", "56", "--save_size", save_size]) == 0
    return out


def test_strip_has_the_image_an_example_and_one_overlay_per_mode(world, tmp_path, monkeypatch):
    cams = generate(world, "input")
    drawn = []
    real = finer_cam.visualize.label_panel

    def recording(panel, lines):
        drawn.append((panel, lines, real(panel, lines)))
        return drawn[-1][2]

    monkeypatch.setattr(finer_cam.visualize, "label_panel", recording)
    assert visualize.main(["--cam_dir", str(cams), "--save_dir", str(tmp_path / "vis"), "--format", "png",
                           "--images", "Audi S4 Sedan 2012/0.jpg"]) == 0
    index = {json.loads(line)["image"]: json.loads(line) for line in (cams / "index.jsonl").read_text().splitlines()}
    entry = index["Audi S4 Sedan 2012/0.jpg"]
    assert len(drawn) == 2 + 3  # image, example of the first reference class, baseline, finer, compare
    labels = [lines for _, lines, _ in drawn]
    target, ref = entry["target"], entry["references"]["finer"][0]
    assert labels[0][0].startswith(CLASSES[target]) and "p=" in labels[0][0]
    assert labels[1][0].startswith(CLASSES[ref])
    assert [lab[0] for lab in labels[2:]] == ["baseline (α=0)", "finer (α=0.6)", "compare (α=1)"]
    strip = np.asarray(Image.open(tmp_path / "vis" / "Audi S4 Sedan 2012" / "0.png"))
    assert strip.shape[1] == sum(labelled.shape[1] for _, _, labelled in drawn) + GAP * 4
    # panels are at the image's own resolution (50x40 here), the example at the same height
    assert drawn[0][0].shape[:2] == drawn[2][0].shape[:2] == (40, 50) and drawn[1][0].shape[0] == 40
    assert strip.shape[0] == drawn[0][2].shape[0]


def test_the_example_is_another_file_when_the_reference_is_the_own_class(world):
    entries = {f"{name}/{j}.jpg": {"image": f"{name}/{j}.jpg", "label": i} for i, name in enumerate(CLASSES)
               for j in range(2)}
    examples = finer_cam.visualize.Examples(entries)
    assert examples.pick(0, not_this="Audi S4 Sedan 2012/0.jpg") == "Audi S4 Sedan 2012/1.jpg"
    assert examples.pick(2, not_this="Audi S4 Sedan 2012/0.jpg") == "BMW M3 Coupe 2012/0.jpg"
    assert examples.pick(0, not_this="x") == "Audi S4 Sedan 2012/0.jpg"


def test_examples_come_only_from_the_runs_own_index(world, tmp_path, monkeypatch):
    """A run over part of the data set: its strips take examples from its own images only, and nothing is
    searched (no walk of the data set root, which for a list file may be a whole disk)."""
    listed = tmp_path / "list.txt"
    listed.write_text(f"{world / 'data' / CLASSES[0] / '0.jpg'}\n", encoding="utf-8")
    cams = tmp_path / "cams"
    assert generate_cam.main(["--dataset_path", str(listed), "--save_dir", str(cams), "--model_path",
                              str(world / "backbone.pth"), "--classifier_path", str(world / "head.pth"),
                              "--class_names", str(world / "classes.txt"), "--num_workers", "0",
                              "--image_size", "56"]) == 0

    def no_walk(*args, **kwargs):
        raise AssertionError("visualize.py searched the disk for example images")

    monkeypatch.setattr("os.walk", no_walk)
    monkeypatch.setattr(Path, "rglob", no_walk)
    drawn = []
    real = finer_cam.visualize.label_panel
    monkeypatch.setattr(finer_cam.visualize, "label_panel",
                        lambda panel, lines: drawn.append(lines) or real(panel, lines))
    assert visualize.main(["--cam_dir", str(cams), "--save_dir", str(tmp_path / "vis")]) == 0
    assert drawn[1][1] == "no example image found"  # the one image's reference class has no image in the run


@pytest.mark.parametrize("save_size", ["input", "grid", "original"])
def test_every_save_size_gives_the_same_picture(world, tmp_path, save_size):
    cams = generate(world, save_size)
    assert visualize.main(["--cam_dir", str(cams), "--save_dir", str(tmp_path / "vis"), "--size", "90",
                           "--colormap", "viridis", "--alpha", "0.4", "--grid", str(tmp_path / "grid.png")]) == 0
    assert len(list((tmp_path / "vis").rglob("*.jpg"))) == 8 and (tmp_path / "grid.png").stat().st_size > 1000
    # the heat drawn for an image hardly depends on the size the maps were saved at
    ref = np.load(generate(world, "input") / "BMW M3 Coupe 2012" / "1.npy")
    got = np.load(cams / "BMW M3 Coupe 2012" / "1.npy")
    for m in range(3):
        a, b = fit_map(ref[m], (90, 40)), fit_map(got[m], (90, 40))
        if a.std() > 0 and b.std() > 0:
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95


def test_bad_files_are_named_skipped_and_counted(world, tmp_path, capsys):
    cams = tmp_path / "cams"
    src = generate(world, "input")
    import shutil

    shutil.copytree(src, cams)
    (cams / "Audi S4 Sedan 2012" / "0.npy").unlink()  # missing
    (cams / "Audi S4 Sedan 2012" / "1.npy").write_bytes(b"not a numpy file")  # corrupt
    np.save(cams / "Audi S5 Coupe 2012" / "0.npy", np.zeros((2, 8, 8), np.float16))  # wrong number of modes
    np.save(cams / "Audi S5 Coupe 2012" / "1.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    data = tmp_path / "data"
    shutil.copytree(world / "data", data)
    (data / "BMW M3 Coupe 2012" / "0.jpg").unlink()  # image gone
    rc = visualize.main(["--cam_dir", str(cams), "--save_dir", str(tmp_path / "vis"), "--dataset_dir", str(data)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for name, why in [("Audi S4 Sedan 2012/0.npy", "map file missing"), ("Audi S4 Sedan 2012/1.npy", "not a readable"),
                      ("Audi S5 Coupe 2012/0.npy", "expected [3, H, W]"), ("Audi S5 Coupe 2012/1.npy", "not a readable"),
                      ("BMW M3 Coupe 2012/0.jpg", "no such file")]:
        assert any(name in line and why in line for line in err.splitlines()), (name, err)
    assert "5 images skipped" in err
    assert sorted(p.relative_to(tmp_path / "vis").as_posix() for p in (tmp_path / "vis").rglob("*.jpg")) == \
        ["BMW M3 Coupe 2012/1.jpg", "Ford F-150 Cab 2007/0.jpg", "Ford F-150 Cab 2007/1.jpg"]


@pytest.mark.parametrize("argv, flag", [(["--colormap", "nonsense"], "--colormap"), (["--alpha", "2"], "--alpha"),
                                        (["--images", "nothing*"], "no explained images"),
                                        (["--grid", "fig.txt"], "--grid")])
def test_usage_errors_are_one_line(world, tmp_path, capsys, argv, flag):
    cams = generate(world, "input")
    capsys.readouterr()  # what making the maps printed (the first test of a worker to need them makes them)
    assert visualize.main(["--cams_path", str(cams), "--save_path", str(tmp_path / "vis"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and err[0].startswith("visualize.py: error:")


def test_not_a_cam_folder(tmp_path, capsys):
    assert visualize.main(["--cam_dir", str(tmp_path), "--save_dir", str(tmp_path / "v")]) == 2
    assert "no run.json" in capsys.readouterr().err


def test_colour_maps_and_blend():
    jet = colormap_lut("jet")
    assert jet.shape == (256, 3) and tuple(jet[0]) == (0, 0, 128) and tuple(jet[255]) == (128, 0, 0)
    import matplotlib

    viridis = colormap_lut("viridis")
    assert np.abs(viridis[128] / 255 - np.array(matplotlib.colormaps["viridis"](128 / 255)[:3])).max() < 0.01
    image = np.full((4, 4, 3), 100, np.uint8)
    heat = np.ones((4, 4), np.float32)
    assert (blend(image, heat, jet, 0.0) == 100).all()
    assert (blend(image, heat, jet, 1.0) == jet[255]).all()
    assert np.array_equal(fit_map(np.full((3, 3), 7.0), (5, 4)), np.zeros((4, 5)))


def test_a_moved_dataset_is_one_clear_error(world, tmp_path, capsys):
    import shutil

    cams = tmp_path / "cams"
    shutil.copytree(generate(world, "input"), cams)
    capsys.readouterr()  # generate_cam.py's progress, when this test is the first to need its maps
    run = json.loads((cams / "run.json").read_text())
    run["dataset_root"] = str(tmp_path / "gone")
    (cams / "run.json").write_text(json.dumps(run))
    assert visualize.main(["--cam_dir", str(cams), "--save_dir", str(tmp_path / "vis")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and "--dataset_dir" in err[0]
    assert visualize.main(["--cam_dir", str(cams), "--save_dir", str(tmp_path / "vis"),
                           "--dataset_dir", str(world / "data"), "--limit", "1"]) == 0
