"""Paths read out of files stay inside their roots, and no script replaces a file the project did not write.

The property tests build miniature CUB-200-2011 and Stanford Cars sources (archives and folders) with hostile
member names and annotation paths, run prepare_dataset.py on them in a sandbox, and check that nothing
outside ``--out`` changed and no file outside the source was moved, removed or modified.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from conftest import save_tiny_classifier, write_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import evaluate
import generate_cam
import prepare_dataset
import train_classifier
import visualize
from finer_cam import atomic, runstore, userfiles
from finer_cam.cli import EXIT_INTERNAL, main_guard
from finer_cam.errors import FinerCamError
from finer_cam.prepare import RECORD

REPOSITORY = Path(__file__).resolve().parents[1]
PROPERTY = settings(max_examples=20, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------- the sandbox

def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Every entry under ``root`` (but ``skip``) as (kind, content hash or link target, mode, inode)."""
    state = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if skip is not None and (here == skip or skip in here.parents):
            dirs.clear()
            continue
        for name in dirs + files:
            path = here / name
            if skip is not None and path == skip:
                continue
            info = path.lstat()
            if path.is_symlink():
                state[str(path)] = ("link", os.readlink(path), info.st_mode, info.st_ino)
            elif path.is_dir():
                state[str(path)] = ("dir", None, info.st_mode, info.st_ino)
            else:
                state[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mode, info.st_ino)
    return state


def make_sandbox(tmp: Path) -> dict[str, Path]:
    """``home/me/notes.txt`` (the user's file an annotation may name), ``src/`` and ``work/`` (``--out``'s
    parent)."""
    for d in ("home/me", "src", "work"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    (tmp / "home" / "me" / "notes.txt").write_text("my notes\n")
    (tmp / "home" / "me" / "photo.jpg").write_bytes(b"not yours")
    return {"root": tmp, "victim": tmp / "home" / "me" / "notes.txt", "src": tmp / "src", "out": tmp / "work" / "out"}


def run_and_check(box: dict[str, Path], name: str, source: Path, capsys) -> int:
    before = snapshot(box["root"])
    code = prepare_dataset.main([name, "--source", str(source), "--out", str(box["out"])])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert "Traceback" not in err, err
    if code == 2:
        assert len([line for line in err.splitlines() if "error:" in line]) == 1, err
        assert not box["out"].exists()
    after = snapshot(box["root"], skip=box["out"])
    assert after == before, "something outside --out changed"
    assert sorted(p.name for p in box["out"].parent.iterdir()) == (["out"] if code == 0 else [])
    if code == 0:  # only regular files and folders in the prepared tree
        for path in box["out"].rglob("*"):
            assert not path.is_symlink() and (path.is_file() or path.is_dir()), path
    return code


def tgz(folder: Path, archive: Path, extra: list[tarfile.TarInfo] = (), top: str | None = None) -> Path:
    with tarfile.open(archive, "w:gz") as t:
        t.add(folder, arcname=top or folder.name)
        for info in extra:
            data = b"x" if info.type == tarfile.REGTYPE else None
            if data is not None:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return archive


# ---------------------------------------------------------------------------------------- hostile names

def hostile_paths(victim: Path, depth: int) -> list[str]:
    """Annotation paths that leave their root, ``depth`` folders below the sandbox."""
    up = "../" * depth
    return [str(victim), f"{up}home/me/notes.txt", f"c1/{up}../home/me/notes.txt", "../../x.jpg", "..", ".",
            "c1/./x0.jpg", "c1//x0.jpg", "/", "c1/..", "c1/link_out.jpg", "c1/link_up.jpg"]


def cub_source(tmp: Path, victim: Path, lines: list[str], member_tricks: list[str], as_archive: bool) -> Path:
    top = tmp / "src" / "CUB_200_2011"
    for j in range(2):
        (top / "images" / "c1").mkdir(parents=True, exist_ok=True)
        (top / "images" / "c1" / f"x{j}.jpg").write_bytes(b"jpg%d" % j)
    if "link_out" in member_tricks or not as_archive:
        (top / "images" / "c1" / "link_out.jpg").symlink_to(victim)
    (top / "images" / "c1" / "link_up.jpg").symlink_to("../../images.txt")
    rels = ["c1/x0.jpg", "c1/x1.jpg", *lines]
    (top / "images.txt").write_text("".join(f"{i} {r}\n" for i, r in enumerate(rels, 1)))
    (top / "train_test_split.txt").write_text("".join(f"{i} {i % 2}\n" for i in range(1, len(rels) + 1)))
    (top / "bounding_boxes.txt").write_text("".join(f"{i} 1 2 3 4\n" for i in range(1, len(rels) + 1)))
    (top / "parts").mkdir(exist_ok=True)
    (top / "parts" / "parts.txt").write_text("1 beak\n")
    (top / "parts" / "part_locs.txt").write_text("".join(f"{i} 1 1.0 2.0 1\n" for i in range(1, len(rels) + 1)))
    if not as_archive:
        return top
    extra = []
    for trick in member_tricks:
        if trick == "abs_member":
            extra.append(tarfile.TarInfo(str(victim)))
        elif trick == "dotdot_member":
            extra.append(tarfile.TarInfo("../../home/me/notes.txt"))
        elif trick == "link_member":
            info = tarfile.TarInfo("CUB_200_2011/images/c1/evil.jpg")
            info.type, info.linkname = tarfile.SYMTYPE, str(victim)
            extra.append(info)
    return tgz(top, tmp / "src" / "CUB_200_2011.tgz", extra)


@PROPERTY
@given(lines=st.lists(st.sampled_from(range(12)), max_size=3),
       tricks=st.lists(st.sampled_from(["abs_member", "dotdot_member", "link_member", "link_out"]), max_size=2,
                       unique=True),
       as_archive=st.booleans(), depth=st.integers(2, 6))
def test_cub_sources_with_hostile_names_touch_nothing_outside_out(tmp_path_factory, capsys, lines, tricks, as_archive,
                                                                  depth):
    box = make_sandbox(tmp_path_factory.mktemp("cub"))
    paths = hostile_paths(box["victim"], depth)  # 3 (a folder) or 5 (an archive) reach the sandbox
    source = cub_source(box["root"], box["victim"], [paths[i] for i in lines], tricks, as_archive)
    code = run_and_check(box, "cub", source, capsys)
    if not lines and not set(tricks) & {"abs_member", "dotdot_member", "link_member"} and \
            not ("link_out" in tricks and as_archive):  # (in the user's own folder, a link out is theirs)
        assert code == 0  # nothing hostile: prepared as usual
    if code == 0:
        assert not (box["out"] / "test" / "home").exists()


def cars_source(tmp: Path, victim: Path, fnames: list[str], classes: list[str], as_archive: bool) -> Path:
    base = tmp / "src" / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    names = ["Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012", *classes]
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(names, dtype=object).reshape(1, -1)})
    dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    for split, mat in (("train", base / "devkit" / "cars_train_annos.mat"),
                       ("test", base / "cars_test_annos_withlabels.mat")):
        (base / f"cars_{split}").mkdir(exist_ok=True)
        records = []
        for j in range(2):
            (base / f"cars_{split}" / f"{j:05d}.jpg").write_bytes(b"car%d" % j)
            records.append((1, 2, 30, 20, 1 + j, f"{j:05d}.jpg"))
        records += [(1, 2, 30, 20, 3 + k % max(1, len(classes)) if classes else 1, f) for k, f in enumerate(fnames)]
        scipy.io.savemat(mat, {"annotations": np.array([tuple(r) for r in records], dtype=dtype).reshape(1, -1)})
        if not as_archive:  # in an archive, a link out is refused by the unpacking (see the CUB test)
            (base / f"cars_{split}" / "link_out.jpg").symlink_to(victim)
        (base / f"cars_{split}" / "link_up.jpg").symlink_to("../devkit/cars_meta.mat")
    if not as_archive:
        return base.parent
    return tgz(base, tmp / "src" / "cars.tgz")


@PROPERTY
@given(fnames=st.lists(st.sampled_from(range(12)), max_size=2),
       classes=st.lists(st.sampled_from(["..", ".", "", "a/..", "Fine Class"]), max_size=1),
       as_archive=st.booleans(), depth=st.integers(2, 6))
def test_stanford_cars_sources_with_hostile_names_touch_nothing_outside_out(tmp_path_factory, capsys, fnames,
                                                                            classes, as_archive, depth):
    box = make_sandbox(tmp_path_factory.mktemp("cars"))
    paths = hostile_paths(box["victim"], depth)  # 3 (a folder) or 5 (an archive) reach the sandbox
    source = cars_source(box["root"], box["victim"], [paths[i].replace("c1/", "") for i in fnames], classes,
                         as_archive)
    code = run_and_check(box, "stanford_cars", source, capsys)
    if not fnames and classes in ([], ["Fine Class"]):
        assert code == 0


# --------------------------------------------------------------------------------- the examples of the issue

def test_a_cub_annotation_naming_a_users_file_neither_moves_nor_removes_it(tmp_path, capsys):
    for n, extra in enumerate(([str(tmp_path / "1/home/me/notes.txt")], [str(tmp_path / "2/home/me/notes.txt"),
                                                                        "c1/missing.jpg"]), start=1):
        box = make_sandbox(tmp_path / str(n))
        source = cub_source(box["root"], box["victim"], extra, [], as_archive=True)
        assert prepare_dataset.main(["cub", "--source", str(source), "--out", str(box["out"])]) == 2
        line = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
        assert len(line) == 1 and "images.txt: image 3" in line[0] and "not a relative path" in line[0], line
        assert box["victim"].read_text() == "my notes\n"
        assert not box["out"].exists()


def test_a_cub_images_txt_line_without_a_class_folder_is_one_line(tmp_path, capsys):
    box = make_sandbox(tmp_path)
    source = cub_source(tmp_path, box["victim"], ["flat.jpg"], [], as_archive=False)
    assert prepare_dataset.main(["cub", "--source", str(source), "--out", str(box["out"])]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "'flat.jpg' is not CLASS/FILE" in err, err


def test_a_refused_tar_link_is_called_refused_not_damaged(tmp_path, capsys):
    box = make_sandbox(tmp_path)
    source = cub_source(tmp_path, box["victim"], [], ["link_member"], as_archive=True)
    assert prepare_dataset.main(["cub", "--source", str(source), "--out", str(box["out"])]) == 2
    err = capsys.readouterr().err
    assert "refused member" in err and "damaged" not in err, err


def kaggle_folder(tmp: Path, flat_test: bool = False) -> Path:
    src = tmp / "kaggle"
    for split in ("train", "test"):
        for cls in ("A", "B"):
            if not (flat_test and split == "test"):
                (src / split / cls).mkdir(parents=True, exist_ok=True)
                (src / split / cls / "1.jpg").write_bytes(b"x")
    if flat_test:
        (src / "test").mkdir(parents=True, exist_ok=True)
        (src / "test" / "b.jpg").write_bytes(b"x")
    return src


def test_images_outside_class_folders_are_named_and_an_empty_split_fails(tmp_path, capsys):
    src = kaggle_folder(tmp_path, flat_test=True)
    out = tmp_path / "out"
    assert prepare_dataset.main(["stanford_cars", "--source", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 images lie directly in the split folder" in err and "b.jpg" in err, err
    assert "no images for the test split" in err and not out.exists()


def test_overwrite_replaces_only_a_folder_prepared_here_and_never_the_source(tmp_path, capsys):
    src = kaggle_folder(tmp_path)
    mine = tmp_path / "documents"
    (mine / "thesis.tex").parent.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert prepare_dataset.main(["stanford_cars", "--source", str(src), "--out", str(mine), "--overwrite"]) == 2
    assert "did not write" in capsys.readouterr().err and (mine / "thesis.tex").read_text() == "years of work"
    for out in (src, src / "prepared", tmp_path):
        assert prepare_dataset.main(["stanford_cars", "--source", str(src), "--out", str(out), "--overwrite"]) == 2
        assert "--source" in capsys.readouterr().err
    assert (src / "train" / "A" / "1.jpg").is_file()
    out = tmp_path / "prepared"
    assert prepare_dataset.main(["stanford_cars", "--source", str(src), "--out", str(out)]) == 0
    assert json.loads((out / RECORD).read_text())["dataset"] == "stanford_cars"
    assert prepare_dataset.main(["stanford_cars", "--source", str(src), "--out", str(out), "--overwrite"]) == 0


def test_a_source_folder_may_link_inside_itself_but_not_out(tmp_path, capsys):
    """An annexed data set (links to blobs inside the source) prepares; a link to a file outside the source (as
    ``tar xf`` of a stranger's archive can leave) is refused and nothing of it is copied."""
    src = kaggle_folder(tmp_path)
    (src / ".blobs").mkdir()
    (src / ".blobs" / "ab12").write_bytes(b"annexed")
    (src / "train" / "A" / "2.jpg").symlink_to("../../.blobs/ab12")
    out = tmp_path / "out"
    assert prepare_dataset.main(["stanford_cars", "--source", str(src), "--out", str(out)]) == 0
    assert (out / "train" / "A" / "2.jpg").read_bytes() == b"annexed" and not (out / "train" / "A" / "2.jpg").is_symlink()
    (tmp_path / "id_rsa").write_text("secret")
    (src / "train" / "B" / "3.jpg").symlink_to(tmp_path / "id_rsa")
    capsys.readouterr()
    assert prepare_dataset.main(["stanford_cars", "--source", str(src), "--out", str(tmp_path / "o2")]) == 2
    assert "through a symbolic link" in one_error(capsys, "3.jpg") and not (tmp_path / "o2").exists()


def test_prepared_folders_follow_the_umask(tmp_path):
    src = kaggle_folder(tmp_path)
    old = os.umask(0o022)
    try:
        assert prepare_dataset.main(["stanford_cars", "--source", str(src), "--out", str(tmp_path / "out")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


def test_a_terminated_prepare_leaves_nothing_and_stale_temporaries_are_removed(tmp_path):
    src = kaggle_folder(tmp_path)
    for j in range(400):
        (src / "train" / "A" / f"{j}.jpg").write_bytes(b"x")
    # what a run killed with kill -9 left (its process is gone): removed by the next run
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.{int(dead.stdout)}.abcd.tmp"
    (stale / "train").mkdir(parents=True)
    code = textwrap.dedent(f"""
        import sys, time, finer_cam.prepare as p
        sys.argv = ["prepare_dataset.py"]
        real = p._place
        def slow(*a):
            time.sleep(0.01)
            real(*a)
        p._place = slow
        sys.path.insert(0, {str(REPOSITORY)!r})
        import prepare_dataset
        sys.exit(prepare_dataset.main(["stanford_cars", "--source", {str(src)!r}, "--out", {str(tmp_path / "out")!r}]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPOSITORY, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline and not [p for p in tmp_path.glob(".out.*.tmp") if p != stale]:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130, err
    assert not stale.exists()  # the run removed it before building
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == [], err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- the writer rule

CLASSES = ["red", "green", "blue"]


@pytest.fixture
def world(tmp_path):
    save_tiny_classifier(tmp_path, num_classes=3, depth=2)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    for i, name in enumerate(CLASSES):
        for j in range(2):
            write_image(tmp_path / "data" / name / f"{j}.jpg", size=(40, 30), seed=10 * i + j)
    return tmp_path


def generate(world: Path, data: Path, out: Path, *flags) -> int:
    return generate_cam.main(["--dataset_path", str(data), "--save_dir", str(out), "--model_path",
                              str(world / "backbone.pth"), "--classifier_path", str(world / "head.pth"),
                              "--class_names", str(world / "classes.txt"), "--num_workers", "0",
                              "--image_size", "28", *flags])


def data_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_error(capsys, *words) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err and all(w in lines[0] for w in words), err
    return lines[0]


def test_no_script_writes_into_the_data_set_or_over_files_it_did_not_write(world, capsys):
    data = world / "data"
    original = data_files(data)
    assert generate(world, data, data) == 2  # --save_dir equal to --dataset_path
    one_error(capsys, "--save_dir", "the data set's own folder")
    assert generate(world, data, data / "red") == 2
    one_error(capsys, "--save_dir", "holds the data set's images")
    assert generate(world, data, world / "cams") == 0
    assert visualize.main(["--cam_dir", str(world / "cams"), "--save_dir", str(data)]) == 2
    one_error(capsys, "--save_dir", "the data set's own folder")
    assert visualize.main(["--cam_dir", str(world / "cams"), "--save_dir", str(data / "green")]) == 2
    one_error(capsys, "--save_dir", "holds the data set's images")
    other = world / "photos"  # someone else's pictures under the names the strips would get
    (other / "red").mkdir(parents=True)
    (other / "red" / "0.jpg").write_bytes(b"a holiday")
    assert visualize.main(["--cam_dir", str(world / "cams"), "--save_dir", str(other)]) == 2
    one_error(capsys, "--save_dir", "holds red/0.jpg, which finer_cam did not write")
    assert (other / "red" / "0.jpg").read_bytes() == b"a holiday"
    assert evaluate.main(["--cam_dir", str(world / "cams"), "--out", str(data), "--steps", "0"]) == 2
    one_error(capsys, "--out", "the data set's own folder")
    assert train_classifier.main(["--data_root", str(data), "--model_path", str(world / "backbone.pth"),
                                  "--output_dir", str(data), "--epochs", "1", "--num_workers", "0"]) == 2
    one_error(capsys, "--output_dir", "the data set's own folder")
    assert data_files(data) == original and not (data / atomic.OUTPUT_MARKER).exists()
    # outputs in a folder of their own inside the data set stay allowed (they are never read as images)
    assert visualize.main(["--cam_dir", str(world / "cams"), "--save_dir", str(data / "strips")]) == 0
    assert visualize.main(["--cam_dir", str(world / "cams"), "--save_dir", str(data / "strips")]) == 0  # its own


def test_a_folder_with_foreign_files_under_map_names_is_refused(world, capsys):
    out = world / "cams"
    (out / "red").mkdir(parents=True)
    (out / "red" / "0.npy").write_bytes(b"someone's array")
    assert generate(world, world / "data", out) == 2
    one_error(capsys, "--save_dir", "holds red/0.npy")
    assert (out / "red" / "0.npy").read_bytes() == b"someone's array"


# ----------------------------------------------------------------------------------------- map names

def test_images_sharing_a_stem_get_a_map_each_and_ordinary_names_keep_the_stem(world, capsys):
    folder = world / "data" / "red"
    for name in ("a.jpg", "a.png", "a.jpg.png"):
        write_image(folder / name, seed=len(name))
    assert generate(world, world / "data", world / "cams") == 0
    lines = [json.loads(x) for x in (world / "cams" / "index.jsonl").read_text().splitlines()]
    maps = {e["image"]: e["map"] for e in lines}
    assert len(set(maps.values())) == len(maps) == 9
    assert maps["red/0.jpg"] == "red/0.npy" and maps["green/1.jpg"] == "green/1.npy"  # the documented contract
    assert {maps[f"red/{n}"] for n in ("a.jpg", "a.png", "a.jpg.png")} == {"red/a.jpg.npy", "red/a.png.npy",
                                                                          "red/a.jpg.png.npy"}
    assert all((world / "cams" / m).is_file() for m in maps.values())
    assert generate(world, world / "data", world / "cams") == 0
    assert "0 explained, 9 already done" in capsys.readouterr().err
    assert visualize.main(["--cam_dir", str(world / "cams"), "--save_dir", str(world / "vis"), "--format", "png"]) == 0
    assert len(list((world / "vis").rglob("*.png"))) == 9


def test_map_names_are_unique_for_any_names():
    names = ["a.jpg", "a.png", "a.jpg.png", "a", "a.npy", "b.tar.gz", "b.tar", "b", "d/x.jpg", "d/x", "d.jpg/x.png",
             ".hidden.jpg", "c/.jpg"]
    maps = runstore.map_names(names)
    assert len(set(maps.values())) == len(names)
    assert runstore.map_names(["k/only.jpg"]) == {"k/only.jpg": "k/only.npy"}


# -------------------------------------------------------------------------------- symlinked data sets

def test_a_list_of_symlinked_images_keeps_its_labels_and_names(world, capsys):
    blobs = world / "blobs"
    blobs.mkdir()
    links = world / "annex" / "data"
    lines = []
    for name in CLASSES:
        src = world / "data" / name / "0.jpg"
        blob = blobs / hashlib.sha1(src.read_bytes()).hexdigest()
        blob.write_bytes(src.read_bytes())
        (links / name).mkdir(parents=True)
        (links / name / "x.jpg").symlink_to(os.path.relpath(blob, links / name))
        lines.append(f"data/{name}/x.jpg")
    (world / "annex" / "list.txt").write_text("\n".join(lines) + "\n")
    assert generate(world, world / "annex" / "list.txt", world / "cams") == 0
    err = capsys.readouterr().err
    assert "matched no class" not in err, err
    entries = {json.loads(x)["image"]: json.loads(x) for x in (world / "cams" / "index.jsonl").read_text().splitlines()}
    assert sorted(entries) == [f"{n}/x.jpg" for n in sorted(CLASSES)]
    assert {e["label"] for e in entries.values()} == {0, 1, 2}
    assert (world / "cams" / "red" / "x.npy").is_file()


def test_inside_refuses_a_link_out_of_its_root_unless_links_are_the_users_own(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret.txt").write_text("s")
    (tmp_path / "root" / "out.txt").symlink_to(tmp_path / "secret.txt")
    (tmp_path / "root" / "in.txt").write_text("i")
    (tmp_path / "root" / "alias.txt").symlink_to("in.txt")
    assert userfiles.inside(tmp_path / "root", "alias.txt", "x") == tmp_path / "root" / "alias.txt"
    with pytest.raises(FinerCamError, match="leaves .* through a symbolic link"):
        userfiles.inside(tmp_path / "root", "out.txt", "x")
    assert userfiles.inside(tmp_path / "root", "out.txt", "x", follow_links=True).read_text() == "s"
    for bad in ("/etc/passwd", "../secret.txt", "a/../../secret.txt", "", "a//b", "./in.txt"):
        with pytest.raises(FinerCamError, match="not a relative path"):
            userfiles.inside(tmp_path / "root", bad, "x", follow_links=True)


# ----------------------------------------------------------------------------------------------- locks

def test_a_forked_child_does_not_hold_the_lock_of_a_killed_parent(tmp_path):
    """A loader worker (a forked child) outliving its killed parent must not keep the folder locked."""
    folder = tmp_path / "cams"
    code = textwrap.dedent(f"""
        import os, sys, time
        from finer_cam.atomic import FolderLock
        lock = FolderLock({str(folder)!r}, "save_dir")
        pid = os.fork()
        if pid == 0:  # the worker (running once fork returns in it): lives on after its parent is killed
            os.write(1, b"%d\\n" % os.getpid())
            time.sleep(30)
            os._exit(0)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPOSITORY, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        os.kill(child, 0)  # the child still runs
        lock = atomic.FolderLock(folder, "save_dir")  # and the folder is free at once
        lock.release()
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_second_lock_in_one_process_is_still_refused(tmp_path):
    held = atomic.FolderLock(tmp_path, "save_dir")
    try:
        with pytest.raises(FinerCamError, match="in use by another run"):
            atomic.FolderLock(tmp_path, "save_dir")
    finally:
        held.release()


# ----------------------------------------------------------------------------- index lines from strangers

@pytest.mark.parametrize("change, words", [
    ({"top5": [0, 1, 2]}, "'top5' is not"),
    ({"top5": {"indices": [0, 1], "probs": ["0.5", "0.2"]}}, "'top5' is not"),
    ({"target": "red"}, "'target' is not a class index"),
    ({"references": [1, 2]}, "'references' is not"),
])
def test_visualize_names_a_malformed_index_line_and_goes_on(world, capsys, change, words):
    assert generate(world, world / "data", world / "cams") == 0
    path = world / "cams" / "index.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    lines[0].update(change)
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    capsys.readouterr()
    assert visualize.main(["--cam_dir", str(world / "cams"), "--save_dir", str(world / "vis")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and words in err and "5 of 6 strips written" in err, err


@pytest.mark.parametrize("target", [-1, 3, 99, True, "0"])
def test_evaluate_names_a_target_that_is_not_a_class_and_goes_on(world, capsys, target):
    assert generate(world, world / "data", world / "cams") == 0
    path = world / "cams" / "index.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    lines[0]["target"] = target
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    capsys.readouterr()
    assert evaluate.main(["--cam_dir", str(world / "cams"), "--out", str(world / "eval"), "--steps", "0",
                          "--num_workers", "0"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "is not a class index of the run (0 to 2)" in err, err
    assert json.loads((world / "eval" / "summary.json").read_text())["images"] == 5


def test_an_unexpected_error_never_exits_with_a_documented_status(capsys):
    def broken(stop):
        raise ValueError("a bug")

    code = main_guard("x.py", broken)
    assert code == EXIT_INTERNAL and code not in (0, 1, 2, 130)
    err = capsys.readouterr().err
    assert "internal error" in err and "a bug" in err
