"""Every parser of a user's file, fed arbitrary content (hypothesis, a bounded number of examples): it parses,
or says what is wrong in one line (FinerCamError); never a traceback, never a path outside its root."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finer_cam import runstore, userfiles
from finer_cam.data import find_images, read_class_names
from finer_cam.errors import FinerCamError
from finer_cam.ground_truth import _read_boxes
from finer_cam.targets import parse_modes

FUZZ = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# text that looks like paths: separators, dots, absolute starts, odd characters, a byte-order mark
PATHISH = st.lists(st.sampled_from(["a", "b", "..", ".", "/", "//", "~", "x.jpg", "é", " ", "\t", "\ufeff", "#",
                                    "\\", ":", "C:", "\0", "*", "\n", "\r\n"]), max_size=12).map("".join)
TEXT = st.one_of(st.text(max_size=200), PATHISH)
JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                    max_size=4), max_leaves=12)


def one_line(exc: FinerCamError) -> None:
    """An error a user reads: one line (what came from their file may itself hold a line break)."""
    assert str(exc) and str(exc).count("\n") <= str(exc).count("\\n") + 2


def inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        (root / "a").mkdir(parents=True)
        (root / "a" / "x.jpg").write_bytes(b"")
        yield Path(tmp)


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(content)
    return path


@FUZZ
@given(lines=st.lists(TEXT, max_size=8), bom=st.booleans())
def test_list_files(folder, lines, bom):
    path = write(folder, "list.txt", ("\ufeff" if bom else "") + "\n".join(lines))
    try:
        images = find_images(path)
    except FinerCamError as exc:
        one_line(exc)
        return
    assert images.paths and all(inside(p, images.root) for p in images.paths)
    for p in images.paths:  # every relative output path stays inside the output folder
        assert userfiles.safe_relative(images.relative(p)) is not None


@FUZZ
@given(content=st.one_of(TEXT, st.binary(max_size=200)))
def test_class_lists(folder, content):
    path = write(folder, "classes.txt", content)
    try:
        names = read_class_names(path)
    except FinerCamError as exc:
        one_line(exc)
        return
    assert names and all(n and n == n.strip() for n in names)
    assert len(set(names)) == len(names)


@st.composite
def index_lines(draw):
    entry = draw(st.dictionaries(st.sampled_from(["image", "map", "error", "label", "target", "top5"]),
                                 st.one_of(PATHISH, JSONISH), max_size=5))
    return draw(st.sampled_from([json.dumps(entry), json.dumps(entry)[:-3], draw(TEXT)]))


@FUZZ
@given(lines=st.lists(index_lines(), max_size=8))
def test_index_files(folder, lines):
    run = folder / "run"
    run.mkdir(exist_ok=True)
    write(run, "index.jsonl", "\n".join(lines))
    try:
        entries = runstore.read_index(run / "index.jsonl")
    except FinerCamError as exc:
        one_line(exc)
        return
    for image, entry in entries.items():
        assert entry["image"] == image
        assert inside(userfiles.inside(run, image, "image").resolve(), run.resolve())
        if "map" in entry:
            assert inside(userfiles.inside(run, entry["map"], "map").resolve(), run.resolve())
            # the mask of an image: DIR/<image path, extension replaced by .png> stays inside DIR too
        mask = (run / Path(image).with_suffix(".png")).resolve()
        assert inside(mask, run.resolve())


@FUZZ
@given(content=st.one_of(JSONISH.map(json.dumps), TEXT,
                         st.fixed_dictionaries({"modes": JSONISH, "class_names": JSONISH, "concepts": JSONISH})
                         .map(json.dumps)))
def test_run_files(folder, content):
    run = folder / "run_json"
    run.mkdir(exist_ok=True)
    write(run, "run.json", content)
    (run / "index.jsonl").unlink(missing_ok=True)
    try:
        record, entries = runstore.read_run(run)
        lead = record.layout.lead_shape
    except FinerCamError as exc:
        one_line(exc)
        return
    assert all(isinstance(m.name, str) and isinstance(m.alpha, float) for m in record.modes)
    assert all(isinstance(n, str) for n in record.class_names) and lead[-1] == len(record.modes)


@FUZZ
@given(header=st.sampled_from(["image,x1,y1,x2,y2", "\ufeffimage,x1,y1,x2,y2", "x1,y1", ""]),
       rows=st.lists(st.tuples(PATHISH, *[st.one_of(st.floats(), st.text(max_size=4))] * 4), max_size=5))
def test_boxes_files(folder, header, rows):
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    for row in rows:
        writer.writerow(row)
    path = write(folder, "boxes.csv", header + "\n" + buf.getvalue())
    try:
        boxes = _read_boxes(path)
    except FinerCamError as exc:
        one_line(exc)
        return
    for image, found in boxes.items():
        assert userfiles.safe_relative(image) is not None
        assert all(len(b) == 4 for b in found)


@FUZZ
@given(specs=st.lists(st.one_of(TEXT, st.from_regex(r"[a-z]{1,3}:-?[0-9.e]{1,4}(:[0-9,]{0,6}(:[a-z]{0,7})?)?",
                                                    fullmatch=True)), max_size=4))
def test_mode_specs(specs):
    try:
        modes = parse_modes(specs)
    except FinerCamError as exc:
        one_line(exc)
        return
    assert len({m.name for m in modes}) == len(modes)
