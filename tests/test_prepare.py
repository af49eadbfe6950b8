"""prepare_dataset.py on miniature data sets in their original formats: Kaggle's Stanford Cars class folders,
torchvision's StanfordCars (.mat annotations), CUB-200-2011's tarball and Birds-525; damaged and incomplete
sources give one line and leave nothing behind."""

from __future__ import annotations

import csv
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from conftest import write_image

import prepare_dataset
from finer_cam.prepare import RECORD


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def tree(folder: Path) -> set[str]:
    """The files of a prepared folder, but for the record that says prepare_dataset.py wrote it."""
    assert (folder / RECORD).is_file()
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != RECORD}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def nothing_left(parent: Path, out: Path) -> bool:
    return not out.exists() and not [p for p in parent.iterdir() if p.name.startswith(f".{out.name}.")]


# ------------------------------------------------------------------------------------------ Stanford Cars

def kaggle_cars_zip(tmp_path: Path) -> Path:
    src = tmp_path / "kaggle"
    for split, n in (("train", 2), ("test", 1)):
        for c, cls in enumerate(("Acura RL Sedan 2012", "Ram C-V Cargo Van Minivan 2012")):
            for j in range(n):
                write_image(src / split / cls / f"{c}{j:05d}.jpg", seed=c * 10 + j)
    archive = tmp_path / "stanford_cars.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(src.rglob("*.jpg")):
            z.write(p, p.relative_to(src).as_posix())
    return archive


def test_stanford_cars_from_the_kaggle_class_folder_zip(tmp_path):
    archive = kaggle_cars_zip(tmp_path)
    out = tmp_path / "datasets" / "stanford_cars"
    assert prepare_dataset.main(["stanford_cars", "--source", str(archive), "--out", str(out)]) == 0
    assert tree(out) == {"train/Acura RL Sedan 2012/000000.jpg", "train/Acura RL Sedan 2012/000001.jpg",
                         "train/Ram C-V Cargo Van Minivan 2012/100000.jpg",
                         "train/Ram C-V Cargo Van Minivan 2012/100001.jpg",
                         "test/Acura RL Sedan 2012/000000.jpg", "test/Ram C-V Cargo Van Minivan 2012/100000.jpg"}
    assert (out / "test/Acura RL Sedan 2012/000000.jpg").read_bytes() == \
        (tmp_path / "kaggle/test/Acura RL Sedan 2012/000000.jpg").read_bytes()  # not re-encoded


def cars_annotations(records):
    dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    return {"annotations": np.array([tuple(r) for r in records], dtype=dtype).reshape(1, -1)}


def torchvision_cars(tmp_path: Path) -> Path:
    """torchvision's StanfordCars layout: ROOT/stanford_cars/{devkit/*.mat, cars_test_annos_withlabels.mat,
    cars_train/, cars_test/}, annotations as MATLAB struct arrays with the devkit's fields."""
    base = tmp_path / "tv" / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = np.array(["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012"], dtype=object).reshape(1, -1)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    train = [(np.uint8(1), np.uint8(2), np.uint16(30), np.uint16(20), np.uint8(1), "00001.jpg"),
             (np.uint8(3), np.uint8(4), np.uint16(35), np.uint16(25), np.uint8(2), "00002.jpg")]
    test = [(np.uint8(5), np.uint8(6), np.uint16(38), np.uint16(28), np.uint8(2), "00001.jpg")]
    scipy.io.savemat(base / "devkit" / "cars_train_annos.mat", cars_annotations(train))
    scipy.io.savemat(base / "cars_test_annos_withlabels.mat", cars_annotations(test))
    for i, (folder, records) in enumerate((("cars_train", train), ("cars_test", test))):
        for j, r in enumerate(records):
            write_image(base / folder / r[-1], seed=i * 10 + j)
    return tmp_path / "tv"


def test_stanford_cars_from_torchvisions_layout_with_boxes(tmp_path):
    source = torchvision_cars(tmp_path)
    out = tmp_path / "cars"
    assert prepare_dataset.main(["stanford_cars", "--source", str(source), "--out", str(out)]) == 0
    assert tree(out) == {"train/AM General Hummer SUV 2000/00001.jpg", "train/Ram C-V Cargo Van Minivan 2012/00002.jpg",
                         "test/Ram C-V Cargo Van Minivan 2012/00001.jpg", "boxes.csv"}
    boxes = {r["image"]: [float(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in read_csv(out / "boxes.csv")}
    assert boxes["Ram C-V Cargo Van Minivan 2012/00001.jpg"] == [5, 6, 38, 28]
    src = source / "stanford_cars" / "cars_train" / "00001.jpg"
    assert os.path.samefile(src, out / "train/AM General Hummer SUV 2000/00001.jpg")  # a hard link


def test_stanford_cars_missing_annotation_is_one_line_and_nothing_is_written(tmp_path, capsys):
    source = torchvision_cars(tmp_path)
    (source / "stanford_cars" / "cars_test_annos_withlabels.mat").unlink()
    out = tmp_path / "cars"
    assert prepare_dataset.main(["stanford_cars", "--source", str(source), "--out", str(out)]) == 2
    assert "cars_test_annos_withlabels.mat" in one_line_error(capsys)
    assert nothing_left(tmp_path, out)


def test_a_truncated_zip_is_one_line_and_nothing_is_written(tmp_path, capsys):
    archive = kaggle_cars_zip(tmp_path)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "cars"
    assert prepare_dataset.main(["stanford_cars", "--source", str(archive), "--out", str(out)]) == 2
    assert "truncated or damaged archive" in one_line_error(capsys)
    assert nothing_left(tmp_path, out)


# ------------------------------------------------------------------------------------------------- CUB

PARTS = ["back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing", "nape",
         "right eye", "right leg", "right wing", "tail", "throat"]


def cub_tarball(tmp_path: Path, drop: str | None = None) -> Path:
    """CUB_200_2011.tgz in miniature: the real file names, white-space separated columns and 1-based ids."""
    top = tmp_path / "cub_src" / "CUB_200_2011"
    images = [("001.Black_footed_Albatross", "Black_Footed_Albatross_0046_18.jpg", 1),
              ("001.Black_footed_Albatross", "Black_Footed_Albatross_0009_34.jpg", 0),
              ("002.Laysan_Albatross", "Laysan_Albatross_0002_1027.jpg", 1)]
    for i, (cls, file, _) in enumerate(images):
        write_image(top / "images" / cls / file, size=(50, 40), seed=i)
    files = {
        "images.txt": "".join(f"{i} {c}/{f}\n" for i, (c, f, _) in enumerate(images, 1)),
        "train_test_split.txt": "".join(f"{i} {t}\n" for i, (_, _, t) in enumerate(images, 1)),
        "bounding_boxes.txt": "".join(f"{i} {2.0 * i} {3.0} {20.0} {10.5}\n" for i in range(1, 4)),
        "classes.txt": "1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n",
        "image_class_labels.txt": "1 1\n2 1\n3 2\n",
        "parts/parts.txt": "".join(f"{k} {name}\n" for k, name in enumerate(PARTS, 1)),
        "parts/part_locs.txt": "".join(f"{i} {k} {float(i * k)} {float(k)} {int(k in (2, 7))}\n"
                                       for i in range(1, 4) for k in range(1, 16)),
    }
    for name, text in files.items():
        if name != drop:
            (top / name).parent.mkdir(parents=True, exist_ok=True)
            (top / name).write_text(text)
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(top, arcname="CUB_200_2011")
        (tmp_path / "attributes.txt").write_text("1 has_bill_shape::curved\n")
        t.add(tmp_path / "attributes.txt", arcname="attributes.txt")
    return archive


def test_cub_from_its_tarball_with_boxes_and_visible_parts(tmp_path):
    archive = cub_tarball(tmp_path)
    out = tmp_path / "datasets" / "cub"
    assert prepare_dataset.main(["cub", "--source", str(archive), "--out", str(out)]) == 0
    assert tree(out) == {"train/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg",
                         "test/001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
                         "train/002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg", "boxes.csv", "parts.csv"}
    boxes = read_csv(out / "boxes.csv")
    assert boxes[1] == {"image": "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
                        "x1": "4.0", "y1": "3.0", "x2": "24.0", "y2": "13.5"}  # x, y, width, height -> corners
    parts = read_csv(out / "parts.csv")
    assert [(r["part"], float(r["x"]), float(r["y"])) for r in parts if r["image"].startswith("002.")] == \
        [("beak", 6.0, 2.0), ("left eye", 21.0, 7.0)]  # visible ones only, by name
    assert len(parts) == 6


def test_cub_from_its_unpacked_folder(tmp_path):
    cub_tarball(tmp_path)
    out = tmp_path / "cub"
    assert prepare_dataset.main(["cub", "--source", str(tmp_path / "cub_src" / "CUB_200_2011"), "--out", str(out)]) == 0
    assert len(tree(out)) == 5


@pytest.mark.parametrize("drop", ["train_test_split.txt", "parts/part_locs.txt", "bounding_boxes.txt"])
def test_cub_missing_annotation_file(tmp_path, capsys, drop):
    archive = cub_tarball(tmp_path, drop=drop)
    out = tmp_path / "cub"
    assert prepare_dataset.main(["cub", "--source", str(archive), "--out", str(out)]) == 2
    assert f"missing annotation file {drop}" in one_line_error(capsys)
    assert nothing_left(tmp_path, out)


def test_cub_truncated_tarball(tmp_path, capsys):
    archive = cub_tarball(tmp_path)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    out = tmp_path / "cub"
    assert prepare_dataset.main(["cub", "--source", str(archive), "--out", str(out)]) == 2
    assert "truncated or damaged archive" in one_line_error(capsys)
    assert nothing_left(tmp_path, out)


# -------------------------------------------------------------------------------------------- Birds-525

def test_birds525_keeps_train_valid_test_and_refuses_to_overwrite(tmp_path, capsys):
    src = tmp_path / "birds"
    for split in ("train", "valid", "test"):
        for c, cls in enumerate(("ABBOTTS BABBLER", "ZEBRA DOVE")):
            write_image(src / split / cls / "1.jpg", seed=c)
    (src / "birds.csv").write_text("class id,filepaths,labels,data set,scientific name\n")
    out = tmp_path / "birds525"
    assert prepare_dataset.main(["birds525", "--source", str(src), "--out", str(out)]) == 0
    assert tree(out) == {f"{s}/{c}/1.jpg" for s in ("train", "valid", "test")
                         for c in ("ABBOTTS BABBLER", "ZEBRA DOVE")}
    assert prepare_dataset.main(["birds525", "--source", str(src), "--out", str(out)]) == 2
    assert "--overwrite" in one_line_error(capsys)
    babbler = src / "train" / "ABBOTTS BABBLER"
    (babbler / "2.jpg").write_bytes((babbler / "1.jpg").read_bytes())
    assert prepare_dataset.main(["birds525", "--source", str(src), "--out", str(out), "--overwrite"]) == 0
    assert "train/ABBOTTS BABBLER/2.jpg" in tree(out) and nothing_left(tmp_path, tmp_path / "nothing")
