"""Preprocessing against torchvision's transforms (the official pipeline), and image decoding."""

import numpy as np
import pytest
import torch
from conftest import write_image
from PIL import Image
from torchvision import transforms as T

from finer_cam.data import NORMALIZATIONS, ImageError, Preprocess, find_images, load_image


@pytest.mark.parametrize("norm", sorted(NORMALIZATIONS))
def test_square_preprocessing_matches_the_official_torchvision_pipeline(tmp_path, norm):
    write_image(tmp_path / "a.jpg", size=(97, 61))
    img = load_image(tmp_path / "a.jpg")
    mean, std = NORMALIZATIONS[norm]
    official = T.Compose([T.Resize((224, 224), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                          T.Normalize(mean, std)])
    assert torch.allclose(Preprocess(mean, std)(img), official(img), atol=1e-6)


def test_exif_rotation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


def test_pixel_limit_refuses_bombs(tmp_path):
    write_image(tmp_path / "big.png", size=(100, 100))
    with pytest.raises(ImageError, match="above the limit"):
        load_image(tmp_path / "big.png", max_pixels=5000)


def test_folder_search_is_sorted_and_recursive(tmp_path):
    for rel in ["b/2.png", "a/1.jpg", "a/x/3.JPG", "a/notes.txt"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    images = find_images(tmp_path)
    assert [images.relative(p) for p in images.paths] == ["a/1.jpg", "a/x/3.JPG", "b/2.png"]


def test_a_list_line_with_a_leading_double_slash_is_under_the_root(tmp_path):
    # POSIX lets "//x" differ from "/x"; Linux does not, and the list's root must hold every image
    write_image(tmp_path / "a" / "x.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text("/" + str(tmp_path / "a" / "x.jpg") + "\n")
    images = find_images(listing)
    assert images.paths == [tmp_path / "a" / "x.jpg"]
    assert images.relative(images.paths[0]) == "x.jpg"
