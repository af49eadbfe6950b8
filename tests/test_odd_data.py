"""Odd data and mismatched files, through the CLIs: processed where possible, named and counted where not."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_classifier, write_image
from PIL import Image

import evaluate
import generate_cam
import visualize
from finer_cam import runstore


@pytest.fixture
def world(tmp_path):
    save_tiny_classifier(tmp_path, num_classes=196, depth=2)
    return tmp_path


def generate(tmp_path, data, out="out", *flags):
    return generate_cam.main(["--dataset_path", str(data), "--save_dir", str(tmp_path / out), "--model_path",
                              str(tmp_path / "backbone.pth"), "--classifier_path", str(tmp_path / "head.pth"),
                              "--num_workers", "0", "--image_size", "56", *flags])


def index(out: Path) -> dict[str, dict]:
    return {e["image"]: e for e in map(json.loads, (out / "index.jsonl").read_text("utf-8").splitlines())}


def test_exif_rotated_jpeg_maps_line_up_with_the_displayed_image(world):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 60, 3), dtype=np.uint8))  # 60 wide
    exif = img.getexif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 30 wide, 60 tall
    (world / "data").mkdir()
    img.save(world / "data" / "rotated.jpg", exif=exif)
    assert generate(world, world / "data", "out", "--save_size", "original") == 0
    entry = index(world / "out")["rotated.jpg"]
    assert entry["size"] == [30, 60]
    assert np.load(world / "out" / "rotated.npy").shape == (3, 60, 30)


def test_animated_gif_and_multipage_tiff_give_their_first_frame(world):
    data = world / "data"
    data.mkdir()
    frames = [Image.fromarray(np.full((40, 50, 3), v, np.uint8)) for v in (30, 200, 120)]
    frames[0].save(data / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    frames[0].save(data / "pages.tiff", save_all=True, append_images=frames[1:])
    frames[0].save(data / "first.png")
    assert generate(world, data) == 0
    first = np.load(world / "out" / "first.npy")
    for name in ("anim.npy", "pages.npy"):
        assert np.array_equal(np.load(world / "out" / name), first), name


def test_symlink_loops_unicode_spaces_and_very_long_names(world):
    data = world / "data"
    long_name = "ü" * 120 + " x.jpg"  # 246 bytes: with .npy past what a file name may hold
    for name in ("a b/ça va.jpg", f"c/{long_name}", "c/plain.jpg"):
        write_image(data / name)
    os.symlink(data, data / "c" / "loop")  # a folder that contains itself
    assert generate(world, data) == 0
    entries = index(world / "out")
    assert sorted(entries) == sorted(["a b/ça va.jpg", f"c/{long_name}", "c/plain.jpg"])
    long_map = entries[f"c/{long_name}"]["map"]
    assert len(Path(long_map).name.encode()) <= 251 and (world / "out" / long_map).is_file()
    assert visualize.main(["--cam_dir", str(world / "out"), "--save_dir", str(world / "vis")]) == 0
    assert (world / "vis" / Path(long_map).with_suffix(".jpg")).is_file()


def test_list_file_with_blank_lines_comments_duplicates_and_missing_paths(world, capsys):
    data = world / "data"
    write_image(data / "a.jpg")
    write_image(data / "b.jpg", seed=1)
    lst = world / "list.txt"
    lst.write_text("# images\n\ndata/a.jpg\n   \ndata/b.jpg\ndata/a.jpg\n# data/b.jpg\ndata/gone.jpg\n")
    assert generate(world, lst) == 1  # one image failed
    entries = index(world / "out")
    assert sorted(entries) == ["a.jpg", "b.jpg", "gone.jpg"]
    assert entries["gone.jpg"]["error"] == "no such file"
    assert "gone.jpg: no such file" in capsys.readouterr().err


def test_a_pixel_limit_of_the_users_choice(world, capsys):
    write_image(world / "data" / "big.png", size=(300, 200))
    write_image(world / "data" / "small.png", size=(30, 20))
    assert generate(world, world / "data", "out", "--max_pixels", "10000") == 1
    assert "above the limit of 10000 (--max_pixels" in index(world / "out")["big.png"]["error"]
    assert "big.png" in capsys.readouterr().err
    assert generate(world, world / "data", "out2", "--max_pixels", "0") == 0  # no limit


def test_disk_full_stops_with_one_line_and_leaves_nothing_half_written(world, monkeypatch, capsys):
    for i in range(4):
        write_image(world / "data" / f"{i}.jpg", seed=i)
    real_save = np.save

    def save(f, arr, **kw):  # the disk fills up when 2.npy is written (maps are written on several threads)
        if os.path.basename(os.readlink(f"/proc/self/fd/{f.fileno()}")).startswith(".2.npy."):
            f.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(f, arr, **kw)

    monkeypatch.setattr(np, "save", save)
    assert generate(world, world / "data", "out", "--batch_size", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("generate_cam.py: error:") and "2.npy: cannot write (No space left on device)" in err[-1]
    out = world / "out"
    assert {"0.jpg", "1.jpg"} <= set(index(out)) and "2.jpg" not in index(out)  # only what is complete
    assert not (out / "2.npy").exists() and not list(out.rglob("*.tmp"))
    monkeypatch.setattr(np, "save", real_save)
    assert generate(world, world / "data", "out", "--batch_size", "1") == 0  # and the rerun finishes it
    assert sorted(index(out)) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]


def test_an_output_folder_that_cannot_be_made_or_written(world, capsys):
    write_image(world / "data" / "a.jpg")
    (world / "file").write_text("not a folder")
    assert generate(world, world / "data", "file/out") == 2
    assert "--save_dir" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere
        (world / "ro").mkdir()
        os.chmod(world / "ro", 0o500)
        assert generate(world, world / "data", "ro") == 2
        assert "not writable" in capsys.readouterr().err


def test_maps_of_another_run_are_named_and_skipped(world, capsys):
    for i in range(3):
        write_image(world / "data" / f"{i}.jpg", seed=i)
    assert generate(world, world / "data", "three") == 0
    assert generate(world, world / "data", "two", "--modes", "baseline:0", "finer:0.6:1,2,3") == 0
    shutil.copy(world / "two" / "1.npy", world / "three" / "1.npy")  # [2, H, W] where 3 modes are expected
    capsys.readouterr()
    assert visualize.main(["--cam_dir", str(world / "three"), "--save_dir", str(world / "vis")]) == 1
    err = capsys.readouterr().err
    assert "1.npy" in err and "expected [3, H, W]" in err
    assert evaluate.main(["--cam_dir", str(world / "three"), "--out", str(world / "ev"), "--steps", "2",
                          "--percent", "10", "--num_workers", "0"]) == 1
    assert "expected [3, H, W]" in capsys.readouterr().err


def test_a_head_trained_at_another_size_is_named(world, capsys):
    write_image(world / "data" / "a.jpg")
    (world / "classifier_config.json").write_text(json.dumps({"image_size": 112, "normalize": "imagenet"}))
    assert generate(world, world / "data", "out", "--image_size", "56") == 0  # --image_size comes last: wins
    assert "trained at 112 px but --image_size 56" in capsys.readouterr().err


def test_map_names_stay_within_the_file_name_limit():
    long = "d/" + "é" * 126 + ".jpg"  # 256 bytes
    names = runstore.map_names([long, "d/" + "é" * 126 + ".png", "short.jpg"])
    assert names["short.jpg"] == "short.npy"
    assert len({names[long], names["d/" + "é" * 126 + ".png"]}) == 2
    assert all(len(Path(n).name.encode()) <= 251 for n in names.values())


@pytest.mark.slow
def test_the_hostile_folder_loses_nothing_in_any_cli():
    """bench/hostile_folder.py: every CLI on a data set mixing all of the above; it fails if a decodable
    image was not explained, drawn or evaluated."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "bench/hostile_folder.py"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "generate_cam.py (folder)       exit 1  13 explained, 4 failed" in done.stdout
    assert "nothing lost" in done.stdout
