"""The faster decoding paths (--decode draft | torchvision) against PIL's: orientation, sizes, maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import save_tiny_classifier
from PIL import Image, ImageOps

import generate_cam
from finer_cam.data import NORMALIZATIONS, ImageDataset, Preprocess, decode_raw, exif_orient, load_image


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_in_torch_equals_pils(orientation):
    arr = np.random.default_rng(orientation).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    img.getexif()[0x0112] = orientation
    want = np.asarray(ImageOps.exif_transpose(img))
    got = exif_orient(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(got, want)


def smooth_jpeg(path, size=(320, 240), orientation=None, seed=0):
    """A photo-like (smooth) JPEG, so that decoders and resizers agree to a few grey levels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.BICUBIC)
    kw = {}
    if orientation:
        exif = img.getexif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92, **kw)


@pytest.mark.parametrize("decode", ["draft", "torchvision"])
def test_the_faster_paths_give_nearly_the_same_input(tmp_path, decode):
    pre = Preprocess(*NORMALIZATIONS["imagenet"], image_size=112, patch=14)
    smooth_jpeg(tmp_path / "a.jpg", orientation=6)
    Image.new("RGBA", (50, 40), (10, 200, 30, 128)).save(tmp_path / "b.png")  # not a JPEG: PIL either way
    (tmp_path / "c.jpg").write_bytes((tmp_path / "a.jpg").read_bytes()[:900])  # truncated
    paths = [tmp_path / n for n in ("a.jpg", "b.png", "c.jpg")]
    plain = [ImageDataset(paths, pre)[i] for i in range(3)]
    fast = [ImageDataset(paths, pre, decode=decode)[i] for i in range(3)]
    decode_raw(fast, pre, torch.device("cpu"))
    assert fast[0]["size"] == plain[0]["size"] == (240, 320)  # as displayed, before any reduction
    assert fast[0]["image"].shape == plain[0]["image"].shape == (3, 112, 112)
    assert (fast[0]["image"] - plain[0]["image"]).abs().mean() < 0.03  # ~2 grey levels after normalising
    assert torch.equal(fast[1]["image"], plain[1]["image"])
    assert fast[2]["error"] and plain[2]["error"] and fast[2]["image"] is None


def test_draft_decodes_a_large_jpeg_at_a_reduced_scale(tmp_path):
    smooth_jpeg(tmp_path / "big.jpg", size=(1200, 900))
    pre = Preprocess(*NORMALIZATIONS["imagenet"], image_size=224, patch=14)
    img = load_image(tmp_path / "big.jpg", reduce_for=pre)
    assert img.size == (300, 225) and img.info["original_size"] == (1200, 900)  # 1/4 still covers 224


def test_maps_from_the_faster_paths_correlate_with_pils(tmp_path):
    save_tiny_classifier(tmp_path, num_classes=196, depth=2)
    for i in range(4):
        smooth_jpeg(tmp_path / "data" / "c" / f"{i}.jpg", size=(400 + 40 * i, 300), orientation=[1, 6, 3, 8][i], seed=i)
    outs = {}
    for decode in ("pil", "draft", "torchvision"):
        outs[decode] = tmp_path / decode
        assert generate_cam.main(["--dataset_path", str(tmp_path / "data"), "--save_dir", str(outs[decode]),
                                  "--model_path", str(tmp_path / "backbone.pth"), "--classifier_path",
                                  str(tmp_path / "head.pth"), "--num_workers", "0", "--decode", decode,
                                  "--save_size", "original"]) == 0
    for decode in ("draft", "torchvision"):
        for i in range(4):
            a, b = (np.load(outs[d] / "c" / f"{i}.npy").astype(np.float64) for d in ("pil", decode))
            assert a.shape == b.shape
            for m in range(a.shape[0]):
                assert np.corrcoef(a[m].ravel(), b[m].ravel())[0, 1] > 0.98, (decode, i, m)
        index = [json.loads(line) for line in (outs[decode] / "index.jsonl").read_text().splitlines()]
        assert sorted(e["size"] for e in index) == [[300, 440], [300, 520], [400, 300], [480, 300]]  # displayed
