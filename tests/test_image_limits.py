"""Every image the project reads (data set images, masks, examples) goes through one function that honours
``--max_pixels`` on the header, before decoding; importing the library leaves PIL's own settings alone."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_ground_truth import world  # noqa: F401 (a fixture)

import evaluate
from finer_cam.data import ImageError, load_image, open_image
from finer_cam.ground_truth import GroundTruth
from finer_cam.runstore import SkippedFile

REPOSITORY = Path(__file__).resolve().parents[1]


def huge_png(path: Path, width: int = 30000, height: int = 30000) -> None:
    """A 1-bit PNG announcing ``width x height`` pixels in its header, its data cut short (a few hundred bytes
    on disk; decoding it would take ``width * height`` bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    data = zlib.compress(b"\0" * 4096)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.mark.slow
def test_importing_the_library_changes_none_of_pils_settings():
    code = ("import PIL.Image as I, PIL.ImageFile as F; F.LOAD_TRUNCATED_IMAGES = True; before = I.MAX_IMAGE_PIXELS; "
            "import finer_cam, finer_cam.data, finer_cam.generate, finer_cam.evaluate, finer_cam.visualize, "
            "finer_cam.train, finer_cam.toy; print(before == I.MAX_IMAGE_PIXELS is not None, F.LOAD_TRUNCATED_IMAGES)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"], out.stdout + out.stderr


def test_the_limit_is_ours_whatever_pils_is(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # PIL would refuse a 100x100 image
    with open_image(tmp_path / "small.png", None) as img:  # no limit of ours: read
        assert img.size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == 50  # and PIL's is as it was
    assert load_image(tmp_path / "small.png", 10_000).size == (100, 100)
    with pytest.raises(ImageError, match="100x100 pixels is above the limit of 9999"):
        load_image(tmp_path / "small.png", 9999)
    huge_png(tmp_path / "huge.png")
    with pytest.raises(ImageError, match="30000x30000 pixels is above the limit"):
        with open_image(tmp_path / "huge.png"):
            pass


def test_a_mask_above_the_limit_is_refused_from_its_header(tmp_path):
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "a.png")
    assert GroundTruth(str(tmp_path), None)("a.jpg", (40, 30)) is not None
    with pytest.raises(SkippedFile, match="40x30 pixels is above the limit of 1000"):
        GroundTruth(str(tmp_path), None, max_pixels=1000)("a.jpg", (40, 30))


def test_evaluate_skips_a_huge_mask_by_max_pixels_without_decoding_it(world, tmp_path, capsys):  # noqa: F811
    masks = tmp_path / "masks"
    shutil.copytree(world / "masks", masks)
    huge_png(masks / "b" / "1.png")
    out = tmp_path / "eval"
    rc = evaluate.main(["--cam_dir", str(world / "cams"), "--out", str(out), "--steps", "0", "--num_workers", "0",
                        "--masks", str(masks), "--max_pixels", "250000"])
    err = capsys.readouterr().err
    assert rc == 1 and "b/1.png: mask: 30000x30000 pixels is above the limit of 250000" in err, err
    assert "Traceback" not in err and "skipped" in err, err
