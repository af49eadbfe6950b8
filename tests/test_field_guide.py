"""field_guide.py on tiny hand-made runs: the pairs, the part shares and their intervals checked against
numbers worked out here, the site opened in a real browser, and the user's mistakes."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import field_guide
from finer_cam.errors import FinerCamError
from finer_cam.guide.pairs import choose_modes, find_pairs, samples_of
from finer_cam.guide.truth import read_swaps, score_guide
from finer_cam.targets import parse_modes
import browser
from conftest import save_tiny_classifier, write_image

CLASSES = ["Gull Western", "Gull California", "Tern"]
LEGEND = {"background": 0, "regions": {"left": 1, "right": 2}, "parts": ["left", "right"]}
MODES = [{"name": "baseline", "alpha": 0.0, "ranks": [], "weighting": "mean"},
         {"name": "compare", "alpha": 1.0, "ranks": [1], "weighting": "mean"}]
W, H = 40, 30
# image -> (target, rank-1 reference, label, predicted, weight of the right half in the contrastive map)
IMAGES = {
    "Gull Western/0.png": (0, 1, 0, 0, 0.0),
    "Gull Western/1.png": (0, 1, 0, 0, 0.5),
    "Gull Western/2.png": (0, 1, 0, 1, 0.25),
    "Gull California/0.png": (1, 0, 1, 1, 1.0),
    "Gull California/1.png": (1, 0, 1, 1, 0.2),
    "Gull California/2.png": (1, 0, 1, 1, 0.6),
    "Tern/0.png": (2, 0, 2, 2, 0.1),
}


def label_map() -> np.ndarray:
    labels = np.zeros((H, W), np.uint8)
    labels[:, 10:25] = 1
    labels[:, 25:] = 2
    return labels


def make_run(tmp: Path, modes=MODES, concepts=None) -> Path:
    """A run folder written by hand (the format generate_cam.py writes): the contrastive map is 1 on the
    ``left`` region and ``w`` on the ``right`` one; the plain map is 1 on ``right`` only."""
    data, cams, masks = tmp / "data", tmp / "cams", tmp / "masks"
    labels = label_map()
    if not (tmp / "backbone.pth").exists():
        save_tiny_classifier(tmp, num_classes=3, img_size=56)
    masks.mkdir(parents=True, exist_ok=True)
    (masks / "labels.json").write_text(json.dumps(LEGEND))
    lines = []
    for i, (rel, (t, r, label, pred, w)) in enumerate(IMAGES.items()):
        write_image(data / rel, size=(W, H), seed=i)
        (masks / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(masks / rel)
        contrastive = (labels == 1) + w * (labels == 2)
        plain = (labels == 2).astype(np.float64)
        maps = np.stack([plain, contrastive][:len(modes)] if len(modes) == 2 else [plain] * len(modes))
        (cams / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(cams / rel.replace(".png", ".npy"), maps.astype(np.float16))
        refs = {m["name"]: ([r] if m["alpha"] else []) for m in modes}
        lines.append(json.dumps({"image": rel, "map": rel.replace(".png", ".npy"), "size": [W, H],
                                 "input_size": [56, 56], "label": label, "predicted": pred, "target": t,
                                 "references": refs, "top5": {"indices": [t], "probs": [0.9]}}))
    (cams / "index.jsonl").write_text("\n".join(lines) + "\n")
    run = {"dataset_root": str(data), "modes": modes, "method": "gradcam", "class_names": CLASSES,
           "backbone": {"path": str(tmp / "backbone.pth"), "arch": "auto", "kind": "dinov2"},
           "head": {"path": str(tmp / "head.pth")},
           "preprocessing": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "image_size": 56}}
    if concepts:
        run["concepts"] = concepts
    (cams / "run.json").write_text(json.dumps(run))
    return cams


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("guide")
    make_run(tmp)
    return tmp


@pytest.fixture(scope="module")
def built(world, tmp_path_factory) -> Path:
    """The guide of the world with its masks, parts discovered too."""
    out = tmp_path_factory.mktemp("built") / "guide"
    assert field_guide.main(["--cam_dir", str(world / "cams"), "--save_dir", str(out), "--masks",
                             str(world / "masks"), "--discover", "--parts_k", "3", "--num_workers", "0",
                             "--device", "cpu"]) == 0
    return out


def _expected_left_share(w: float) -> float:
    labels = label_map()
    left, right = (labels == 1).sum(), (labels == 2).sum()
    return left / (left + w * right)


def _mean_ci(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), 1.96 * statistics.stdev(values) / math.sqrt(len(values))


def test_pairs_are_counted_and_ranked(world):
    from finer_cam.runstore import read_run

    run, entries = read_run(world / "cams")
    modes = choose_modes(run.modes, None, "cams")
    samples, problems = samples_of(entries, modes, 3)
    assert problems == [] and len(samples) == 7
    pairs = find_pairs(samples)
    assert [(p.a, p.b) for p in pairs] == [(0, 1), (0, 2)]  # the confused pair first
    first, second = pairs
    assert first.references == (3, 3) and first.confusions == (1, 0) and first.images == (3, 3)
    assert second.references == (0, 1) and second.confusions == (0, 0)


def test_the_contrastive_mode_is_chosen_by_the_documented_rule():
    modes = parse_modes(["baseline:0", "finer:0.6:1,2,3", "compare:1:1"])
    chosen = choose_modes(modes, None, "run")
    assert (chosen.contrastive_name, chosen.plain_name) == ("compare", "baseline")
    assert choose_modes(modes[:2], None, "run").contrastive_name == "finer"
    assert choose_modes(modes, "finer", "run").contrastive_name == "finer"
    with pytest.raises(FinerCamError, match="plain mode"):
        choose_modes(modes, "baseline", "run")
    with pytest.raises(FinerCamError, match="no contrastive mode"):
        choose_modes(modes[:1], None, "run")


def test_shares_and_intervals_match_numbers_worked_out_by_hand(built):
    guide = json.loads((built / "guide.json").read_text())
    assert guide["kind"] == "finer_cam field guide" and guide["mode"] == "compare"
    assert guide["parts"]["annotated"] == ["left", "right", "background"]
    pair = guide["pairs"][0]
    assert (pair["class_a"], pair["class_b"], pair["images"]) == ("Gull Western", "Gull California", [3, 3])
    for direction in pair["directions"]:
        weights = [w for t, _, _, _, w in IMAGES.values() if CLASSES[t] == direction["target"]]
        ranked = direction["parts"]["annotated"]
        top = ranked[0]
        assert top["part"] == "left"  # the contrastive map's lift is on the left region
        mean, half = _mean_ci([_expected_left_share(w) for w in weights])
        assert top["share"] == pytest.approx(mean, abs=2e-3)
        assert top["share_ci95"] == pytest.approx(half, abs=2e-3)
        assert top["plain_share"] == pytest.approx(0.0, abs=1e-6)
        assert top["lift"] == pytest.approx(mean, abs=2e-3) and top["n"] == 3
        right = next(s for s in ranked if s["part"] == "right")
        assert right["plain_share"] == pytest.approx(1.0, abs=1e-6) and right["plain_ci95"] == pytest.approx(0, abs=1e-6)
        background = next(s for s in ranked if s["part"] == "background")
        assert background["share"] == pytest.approx(0.0, abs=1e-6)
        # the exemplars: the images where the left region holds most of the contrastive map
        order = sorted((rel for rel, v in IMAGES.items() if CLASSES[v[0]] == direction["target"]),
                       key=lambda rel: IMAGES[rel][4])
        assert direction["exemplars"]["annotated"] == order


def test_a_pair_with_one_image_has_no_interval(built):
    guide = json.loads((built / "guide.json").read_text())
    pair = next(p for p in guide["pairs"] if p["class_b"] == "Tern")
    tern = next(d for d in pair["directions"] if d["target"] == "Tern")
    top = tern["parts"]["annotated"][0]
    assert tern["images"] == 1 and top["n"] == 1 and top["share_ci95"] is None  # JSON null, not NaN
    assert top["share"] == pytest.approx(_expected_left_share(0.1), abs=2e-3)
    empty = next(d for d in pair["directions"] if d["target"] == "Gull Western")
    assert empty["images"] == 0 and all(s["n"] == 0 for s in empty["parts"]["annotated"])


def test_discovered_parts_have_a_strip_a_page_and_a_composition(built):
    guide = json.loads((built / "guide.json").read_text())
    found = guide["discovered"]
    assert [d["name"] for d in found] == ["part 1", "part 2", "part 3"]
    assert sum(d["coverage"] for d in found) == pytest.approx(1.0)
    for d in found:
        assert (built / d["page"]).is_file()
        assert sum(d["regions"].values()) == pytest.approx(1.0)
        assert set(d["regions"]) <= {"left", "right", "background"}
    strip = Image.open(built / "img" / "part-1.png")
    assert strip.height == 72 and strip.width >= 72
    shares = guide["pairs"][0]["directions"][0]["parts"]["discovered"]
    assert sum(s["share"] for s in shares) == pytest.approx(1.0, abs=1e-3)


def test_every_page_figure_and_link_is_there(built):
    pages = sorted(p.name for p in built.glob("*.html"))
    assert pages == sorted(["index.html", "pair-0-1.html", "pair-0-2.html", "class-0.html", "class-1.html",
                            "class-2.html", "part-1.html", "part-2.html", "part-3.html"])
    for name in ("pair-0-1-annotated-parts.png", "pair-0-1-discovered-parts.png", "pair-0-1-exemplars.png"):
        with Image.open(built / "figures" / name) as img:
            assert img.width > 300 and img.height > 200
    html = (built / "index.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert not list(built.parent.glob(".guide.*"))  # nothing left beside it


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module's browser checks (each opens its own pages by their file URLs)."""
    if not browser.available():
        pytest.skip("needs chromium and chromium-driver (make test-deps)")
    with browser.Browser() as b:
        yield b


def test_the_site_opens_in_a_browser_from_file_urls(built, chromium):
    report = browser.crawl(chromium, built / "index.html")
    assert len(report.pages) == 9, report.pages
    assert report.images > 10
    assert report.broken_images == [] and report.broken_links == [] and report.console_errors == []


def test_a_broken_image_is_caught_by_the_browser_check(built, chromium, tmp_path):
    """The browser check can fail: a guide with one picture removed and one link pointing nowhere."""
    import shutil

    copy = tmp_path / "guide"
    shutil.copytree(built, copy)
    next((copy / "img").glob("ex-*.jpg")).unlink()
    (copy / "class-2.html").unlink()
    report = browser.crawl(chromium, copy / "index.html")
    assert report.broken_images and any("class-2.html" in link for link in report.broken_links)


def test_part_locations_give_named_discs(world, tmp_path):
    parts = tmp_path / "parts.csv"
    rows = ["image,part,x,y"] + [f"{rel},beak,5,5" for rel in IMAGES] + [f"{rel},tail,35,25" for rel in IMAGES]
    parts.write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "guide"
    assert field_guide.main(["--cam_dir", str(world / "cams"), "--save_dir", str(out), "--parts", str(parts),
                             "--part_radius", "0.2", "--pairs", "1", "--num_workers", "0"]) == 0
    guide = json.loads((out / "guide.json").read_text())
    assert guide["parts"]["annotated"] == ["beak", "tail", "elsewhere"]
    direction = guide["pairs"][0]["directions"][0]
    tail = next(s for s in direction["parts"]["annotated"] if s["part"] == "tail")
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    disc = (xs - 35) ** 2 + (ys - 25) ** 2 <= (0.2 * H) ** 2
    labels = label_map()
    plain = (labels == 2).astype(float)
    assert tail["plain_share"] == pytest.approx(plain[disc].sum() / plain.sum(), abs=1e-6)


# ------------------------------------------------------------------------------------------ bad input

def _run(tmp_path, cams, *extra, out=None):
    out = out or tmp_path / "guide"
    return field_guide.main(["--cam_dir", str(cams), "--save_dir", str(out), "--num_workers", "0", *extra]), out


def test_a_run_without_a_contrastive_mode_is_one_line(tmp_path, capsys):
    cams = make_run(tmp_path, modes=MODES[:1])
    code, out = _run(tmp_path, cams, "--masks", str(tmp_path / "masks"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no contrastive mode" in err[0] and not out.exists()


def test_a_concept_run_is_refused_as_not_supported(tmp_path, capsys):
    cams = make_run(tmp_path, concepts={"names": ["red crown", "bird"]})
    code, _ = _run(tmp_path, cams, "--masks", str(tmp_path / "masks"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "concept run" in err[0] and "not supported" in err[0]


def test_annotations_naming_no_image_of_the_run(world, tmp_path, capsys):
    masks = tmp_path / "other_masks"
    (masks / "Elsewhere").mkdir(parents=True)
    (masks / "labels.json").write_text(json.dumps(LEGEND))
    Image.fromarray(label_map()).save(masks / "Elsewhere" / "x.png")
    code, out = _run(tmp_path, world / "cams", "--masks", str(masks))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "names no image of the run" in err[-1] and not out.exists()
    parts = tmp_path / "parts.csv"
    parts.write_text("image,part,x,y\nnot/there.png,beak,1,1\n")
    code, out = _run(tmp_path, world / "cams", "--parts", str(parts))
    assert code == 2 and "names no image of the run" in capsys.readouterr().err


def test_missing_and_damaged_maps_are_named_and_skipped(tmp_path, capsys):
    cams = make_run(tmp_path)
    (cams / "Gull Western" / "1.npy").unlink()
    (cams / "Gull California" / "2.npy").write_bytes(b"not an npy file")
    code, out = _run(tmp_path, cams, "--masks", str(tmp_path / "masks"))
    err = capsys.readouterr().err
    assert code == 1
    assert "Gull Western/1.npy: map file missing (skipped)" in err
    assert "Gull California/2.npy: not a readable .npy map file" in err
    guide = json.loads((out / "guide.json").read_text())
    assert guide["failed"] == 2 and guide["images"] == 5
    assert guide["pairs"][0]["directions"][0]["parts"]["annotated"][0]["n"] == 2


def test_a_save_dir_that_is_not_the_guides_own_is_left_alone(world, tmp_path, capsys):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    code, _ = _run(tmp_path, world / "cams", "--masks", str(world / "masks"), out=other)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a field guide" in err[0]
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    code, _ = _run(tmp_path, world / "cams", "--masks", str(world / "masks"), out=world / "cams")
    assert code == 2 and "--save_dir" in capsys.readouterr().err


def test_a_rebuild_replaces_the_old_guide_whole(world, tmp_path):
    code, out = _run(tmp_path, world / "cams", "--masks", str(world / "masks"))
    assert code == 0 and (out / "pair-0-2.html").is_file()
    (out / "stale.html").write_text("from before")
    code, out = _run(tmp_path, world / "cams", "--masks", str(world / "masks"), "--pairs", "1")
    assert code == 0 and not (out / "pair-0-2.html").exists() and not (out / "stale.html").exists()
    assert json.loads((out / "guide.json").read_text())["pairs"][1]["page"] is None
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ------------------------------------------------------------------------------------------ ground truth

def _swaps(tmp_path, text: str) -> Path:
    path = tmp_path / "swaps.csv"
    path.write_text(text, encoding="utf-8")
    return path


HEADER = "image,target,reference,part,margin,swapped_margin,token_swapped_margin\n"


def test_swap_effects_are_read_as_the_shared_format_says(tmp_path):
    path = _swaps(tmp_path, "\ufeff" + HEADER +
                  "A/0.png,A,B,wheels,2.0,0.5,\n"      # effect 0.75
                  "A/0.png,A,B,badge,2.0,1.8,1.9\n"    # effect 0.1
                  "A/1.png,A,B,wheels,1.0,0.9,\n"      # effect 0.1 -> wheels mean 0.425
                  "A/1.png,A,B,badge,1.0,0.0,\n"       # effect 1.0 -> badge mean 0.55
                  "A/2.png,A,B,wheels,-1.0,5.0,\n"     # non-positive margin: left out
                  "B/0.png,B,A,light,1.0,1.0,\n")
    swaps = read_swaps(path)
    assert swaps.skipped == 1
    assert swaps.effects["A", "B"]["wheels"] == pytest.approx([0.75, 0.1])
    assert swaps.decisive("A", "B") == "badge" and swaps.decisive("B", "A") == "light"
    assert swaps.decisive("A", "C") is None
    with pytest.raises(FinerCamError, match="line 2"):
        read_swaps(_swaps(tmp_path, HEADER + "A/0.png,A,B,wheels,two,0.5,\n"))
    with pytest.raises(FinerCamError, match="the header must be"):
        read_swaps(_swaps(tmp_path, "image,target,reference,part,margin\nA/0.png,A,B,wheels,1\n"))


def _stat(part, share, plain, n=3):
    return {"part": part, "share": share, "plain_share": plain, "lift": share - plain, "n": n}


def test_score_guide_counts_hits_and_chance_by_hand(tmp_path):
    attributes = tmp_path / "attributes.json"
    attributes.write_text(json.dumps({"classes": {"A": {"left": "red", "right": "grey"},
                                                  "B": {"left": "blue", "right": "grey"}}}))
    guide = {"class_names": ["A", "B"], "parts": {"annotated": ["left", "right", "background"]},
             "discovered": [{"name": "part 1", "regions": {"left": 0.9, "right": 0.1}},
                            {"name": "part 2", "regions": {"background": 1.0}}],
             "pairs": [{"directions": [
                 {"target": "A", "reference": "B", "parts": {
                     "annotated": [_stat("left", 0.6, 0.1), _stat("right", 0.3, 0.5), _stat("background", 0.1, 0.4)],
                     "discovered": [_stat("part 1", 0.7, 0.2), _stat("part 2", 0.3, 0.8)]}},
                 {"target": "B", "reference": "A", "parts": {
                     "annotated": [_stat("right", 0.5, 0.6), _stat("left", 0.2, 0.3), _stat("background", 0.3, 0.1)],
                     "discovered": [_stat("part 1", 0.1, 0.1, n=0), _stat("part 2", 0.9, 0.9)]}}]}]}
    swaps = read_swaps(_swaps(tmp_path, HEADER + "A/0.png,A,B,left,1,0.2,\nA/0.png,A,B,right,1,0.9,\n"
                              "B/0.png,B,A,right,1,0.0,\nB/0.png,B,A,left,1,0.9,\n"))
    contrastive = score_guide(guide, attributes, swaps)
    # A->B: top by lift is left (0.5): true and decisive; B->A: lifts right -0.1, left -0.1, background 0.2
    assert (contrastive.true_part["annotated"].hits, contrastive.true_part["annotated"].n) == (1, 2)
    assert contrastive.true_part["annotated"].chance == pytest.approx(1 / 3)
    assert contrastive.decisive["annotated"].hits == 1 and contrastive.decisive["annotated"].chance == pytest.approx(1 / 3)
    # discovered: part 1 stands for left; B->A has only part 2 measured (background)
    assert contrastive.true_part["discovered"].hits == 1 and contrastive.true_part["discovered"].n == 2
    assert contrastive.true_part["discovered"].chance == pytest.approx(0.5)
    plain = score_guide(guide, attributes, swaps, "plain")
    # by the plain share: A->B right (0.5), B->A right (0.6): neither differs; B->A's decisive part is right
    assert plain.true_part["annotated"].hits == 0 and plain.decisive["annotated"].hits == 1


def _bench(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_truth_bench_scores_each_guide_by_hand(world, tmp_path, capsys):
    """bench/guide_truth.py on the hand-made world: the two gulls differ on the left, the tern from the
    western gull on the right; the contrastive maps lie on the left, the plain ones on the right."""
    attributes = tmp_path / "attributes.json"
    attributes.write_text(json.dumps({"classes": {"Gull Western": {"left": "a", "right": "x"},
                                                  "Gull California": {"left": "b", "right": "x"},
                                                  "Tern": {"left": "a", "right": "y"}}}))
    swaps = _swaps(tmp_path, HEADER + "Gull Western/0.png,Gull Western,Gull California,left,2,0.2,\n"
                                      "Gull Western/0.png,Gull Western,Gull California,right,2,1.8,\n")
    assert _bench("guide_truth").main(["--runs", str(world / "cams"), "--masks", str(world / "masks"),
                                       "--attributes", str(attributes), "--swaps", str(swaps), "--parts_k", "2"]) == 0
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:3]): [c.strip() for c in line.strip("|").split("|")]
            for line in capsys.readouterr().out.splitlines()[2:]}
    plain = rows["gradcam", "baseline (plain)", "annotated"]
    contrastive = rows["gradcam", "compare", "annotated"]
    # directions with images: western -> californian, californian -> western, tern -> western
    assert plain[3:7] == ["0.33 (1/3)", "0.33", "0.00 (0/1)", "0.33"]
    assert contrastive[3:7] == ["0.67 (2/3)", "0.33", "1.00 (1/1)", "0.33"]
    assert ("gradcam", "compare", "discovered") in rows


@pytest.mark.slow
def test_the_scale_bench_runs_at_a_tiny_size():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "bench/bench_guide.py", "--images", "24", "--classes", "6", "--side", "32",
                           "--pairs", "1"], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "24 images measured" in done.stdout and "peak memory" in done.stdout


def test_an_index_line_naming_a_class_the_run_does_not_have_is_left_out_by_name():
    """A prediction or label beyond the run's classes (a run.json whose class list was cut) is one named problem,
    not a crash when the pages name the classes."""
    from finer_cam.guide.pairs import Modes, samples_of

    modes = Modes(contrastive=1, plain=0, names=("baseline", "finer"), rank1_mode="finer")

    def line(**change):
        return {"map": "a.npy", "target": 0, "label": 0, "predicted": 1, "size": [8, 8],
                "references": {"finer": [1]}, **change}

    entries = {"ok.png": line(), "pred.png": line(predicted=7), "label.png": line(label=-1),
               "ref.png": line(references={"finer": [3]})}
    samples, problems = samples_of(entries, modes, n_classes=3)
    assert [s.image for s in samples] == ["ok.png"]
    assert sorted(p.split(":")[0] for p in problems) == ["label.png", "pred.png", "ref.png"]
    assert all("classes 0 to 2" in p for p in problems)
