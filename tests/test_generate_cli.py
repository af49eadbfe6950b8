"""generate_cam.py end to end on tiny random models: the output contract, resume, odd and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_classifier, write_image
from PIL import Image

import generate_cam
from finer_cam.data import class_key, read_class_names
from finer_cam.models import load_head

SHIPPED = Path(__file__).resolve().parents[1] / "pretrained_models" / "classifier"
CARS = read_class_names(Path(__file__).resolve().parents[1] / "finer_cam" / "resources" / "stanford_cars_classes.txt")


@pytest.fixture
def setup(tmp_path):
    """A 196-class tiny model saved in the official formats, and a small dataset in class folders."""
    model = save_tiny_classifier(tmp_path, num_classes=196)
    data = tmp_path / "data"
    for i, folder in enumerate(["Acura RL Sedan 2012", "acura_tl-sedan 2012", "Not A Car"]):
        for j in range(2):
            write_image(data / folder / f"{j:06d}.jpg", size=(60 + 13 * j, 45), seed=10 * i + j)
    return tmp_path, model


def run(tmp_path, *extra, data=None, out="out"):
    argv = ["--dataset_path", str(data or tmp_path / "data"), "--save_dir", str(tmp_path / out),
            "--model_path", str(tmp_path / "backbone.pth"), "--classifier_path", str(tmp_path / "head.pth"),
            "--num_workers", "0", "--batch_size", "3", *extra]
    return generate_cam.main(argv)


def read_index(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text(encoding="utf-8").splitlines()]


def test_output_contract(setup):
    tmp_path, model = setup
    assert run(tmp_path) == 0
    out = tmp_path / "out"
    run_info = json.loads((out / "run.json").read_text())
    assert [m["name"] for m in run_info["modes"]] == ["baseline", "finer", "compare"]
    assert run_info["modes"][1] == {"name": "finer", "alpha": 0.6, "ranks": [1, 2, 3], "weighting": "mean"}
    assert run_info["class_names"] == CARS and run_info["preprocessing"]["normalize"] == "imagenet"
    assert run_info["summary"] == {"total": 6, "processed": 6, "skipped": 0, "failed": 0, "label_fallback": 2}
    index = {e["image"]: e for e in read_index(out)}
    assert len(index) == 6
    e = index["Acura RL Sedan 2012/000000.jpg"]
    assert e["label"] == CARS.index("Acura RL Sedan 2012") == e["target"]
    assert index["acura_tl-sedan 2012/000001.jpg"]["label"] == CARS.index("Acura TL Sedan 2012")
    assert index["Not A Car/000000.jpg"]["label"] is None  # falls back to the prediction
    assert index["Not A Car/000000.jpg"]["target"] == index["Not A Car/000000.jpg"]["predicted"]
    assert e["size"] == [60, 45] and e["input_size"] == [224, 224]
    assert len(e["references"]["finer"]) == 3 and e["references"]["compare"] == e["references"]["finer"][:1]
    assert e["target"] not in e["references"]["finer"]
    assert len(e["top5"]["indices"]) == 5 and e["top5"]["probs"] == sorted(e["top5"]["probs"], reverse=True)
    maps = np.load(out / "Acura RL Sedan 2012" / "000000.npy", allow_pickle=False)
    assert maps.shape == (3, 224, 224) and maps.dtype == np.float16
    assert maps.min() >= 0 and np.allclose(maps.reshape(3, -1).max(1), 1, atol=1e-3)
    # the map is what the engine computes for that image
    from finer_cam.cam import FinerCAM, normalize_maps, resize_maps
    from finer_cam.data import NORMALIZATIONS, Preprocess, load_image
    from finer_cam.targets import DEFAULT_MODES, parse_modes
    x = Preprocess(*NORMALIZATIONS["imagenet"])(load_image(tmp_path / "data" / e["image"]))[None]
    res = FinerCAM(model, modes=parse_modes(list(DEFAULT_MODES)))(x, torch.tensor([e["label"]]))
    want = normalize_maps(resize_maps(res.maps, (224, 224)))[0].numpy()
    assert np.abs(maps.astype(np.float32) - want).max() < 2e-3
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("save_size", ["grid", "original"])
def test_save_sizes(setup, save_size):
    tmp_path, _ = setup
    assert run(tmp_path, "--save_size", save_size, "--modes", "a:0", "b:0.6:1,2,3:softmax") == 0
    maps = np.load(tmp_path / "out" / "Acura RL Sedan 2012" / "000001.npy", allow_pickle=False)
    if save_size == "grid":
        assert maps.shape == (2, 16, 16) and maps.dtype == np.float32 and maps.min() >= 0
    else:
        assert maps.shape == (2, 45, 73) and maps.dtype == np.float16


def test_max_size_keeps_aspect_ratio_and_rounds_to_the_patch(setup):
    tmp_path, _ = setup
    write_image(tmp_path / "big" / "c" / "wide.png", size=(300, 100))
    write_image(tmp_path / "big" / "c" / "tiny.png", size=(5, 3))
    assert run(tmp_path, "--max_size", "150", "--save_size", "grid", data=tmp_path / "big") == 0
    index = {e["image"]: e for e in read_index(tmp_path / "out")}
    assert index["c/wide.png"]["input_size"] == [154, 56]  # 150x50 rounded up to multiples of 14
    assert index["c/tiny.png"]["input_size"] == [14, 14]  # smaller than a patch: one patch
    assert np.load(tmp_path / "out" / "c" / "wide.npy").shape == (3, 4, 11)


def test_resume_skips_finished_images_and_redoes_missing_ones(setup):
    tmp_path, _ = setup
    assert run(tmp_path) == 0
    out = tmp_path / "out"
    victim = out / "Not A Car" / "000001.npy"
    victim.unlink()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    with open(out / "index.jsonl", "a") as f:
        f.write('{"image": "torn')  # a line torn by a kill
    assert run(tmp_path) == 0
    assert victim.exists()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # nothing done twice
    images = [e["image"] for e in read_index(out)]
    assert len(images) == len(set(images)) == 6
    assert json.loads((out / "run.json").read_text())["summary"]["skipped"] == 5


def test_a_different_configuration_is_refused_unless_overwrite(setup, capsys):
    tmp_path, _ = setup
    assert run(tmp_path) == 0
    assert run(tmp_path, "--modes", "other:0") == 2
    assert "different modes" in capsys.readouterr().err
    assert run(tmp_path, "--modes", "other:0", "--overwrite") == 0
    assert np.load(tmp_path / "out" / "Acura RL Sedan 2012" / "000000.npy").shape[0] == 1


def test_odd_images_are_converted(setup):
    tmp_path, _ = setup
    odd = tmp_path / "odd" / "c"
    odd.mkdir(parents=True)
    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray(rgb).convert("RGBA").save(odd / "rgba.png")
    Image.fromarray(rgb).convert("P").save(odd / "palette.png")
    Image.fromarray(rgb[..., 0]).save(odd / "grey.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(odd / "grey16.png")
    Image.fromarray(rgb[:5, :7]).save(odd / "small.bmp")
    assert run(tmp_path, data=tmp_path / "odd") == 0
    assert len(read_index(tmp_path / "out")) == 6


def test_bad_images_are_named_recorded_and_the_run_goes_on(setup, capsys):
    tmp_path, _ = setup
    data = tmp_path / "data"
    (data / "Not A Car" / "empty.jpg").write_bytes(b"")
    (data / "Not A Car" / "text.png").write_text("hello")
    good = (data / "Not A Car" / "000000.jpg").read_bytes()
    (data / "Not A Car" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    assert run(tmp_path) == 1
    err = capsys.readouterr().err
    assert "empty.jpg: empty file" in err and "text.png: not a readable image" in err and "truncated.jpg" in err
    assert "Traceback" not in err
    index = {e["image"]: e for e in read_index(tmp_path / "out")}
    assert {k for k, v in index.items() if "error" in v} == {"Not A Car/empty.jpg", "Not A Car/text.png",
                                                            "Not A Car/truncated.jpg"}
    assert sum("map" in v for v in index.values()) == 6


def test_list_file_input(setup):
    tmp_path, _ = setup
    lst = tmp_path / "list.txt"
    lst.write_text("# my images\n\ndata/Acura RL Sedan 2012/000000.jpg\ndata/Not A Car/000001.jpg\n"
                   "data/Acura RL Sedan 2012/000000.jpg\n")
    assert run(tmp_path, data=lst) == 0
    assert sorted(e["image"] for e in read_index(tmp_path / "out")) == ["Acura RL Sedan 2012/000000.jpg",
                                                                        "Not A Car/000001.jpg"]


def test_same_stem_images_do_not_collide(setup):
    tmp_path, _ = setup
    write_image(tmp_path / "data" / "Not A Car" / "000000.png", seed=99)
    assert run(tmp_path) == 0
    maps = {e["image"]: e["map"] for e in read_index(tmp_path / "out")}
    assert maps["Not A Car/000000.png"] != maps["Not A Car/000000.jpg"]
    assert (tmp_path / "out" / maps["Not A Car/000000.png"]).is_file()


@pytest.mark.parametrize("case,flags,message", [
    ("head-width", [], "do not belong together|-dim features"),
    ("class-count", ["--class_names", "CLASSES"], "the head has 196 classes but"),
    ("arch", ["--arch", "vit_base"], "does not fit vit_base"),
    ("missing-data", ["--dataset_path", "NOWHERE"], "no such folder or list file"),
    ("missing-model", ["--model_path", "NOWHERE"], "no such file"),
    ("bad-mode", ["--modes", "finer:abc"], "ALPHA 'abc' is not a number"),
    ("both-sizes", ["--max_size", "100", "--image_size", "224"], "--image_size: excludes --max_size"),
])
def test_user_mistakes_get_one_line(setup, capsys, case, flags, message):
    tmp_path, _ = setup
    if case == "head-width":
        torch.save({"weight": torch.zeros(196, 32), "bias": torch.zeros(196)}, tmp_path / "head.pth")
    (tmp_path / "CLASSES").write_text("a\nb\n")
    flags = [str(tmp_path / f) if f in ("CLASSES", "NOWHERE") else f for f in flags]
    assert run(tmp_path, *flags) == 2, case
    err = capsys.readouterr().err
    assert __import__("re").search(message, err), err
    assert "Traceback" not in err


def test_official_heads_load_on_cpu_with_the_shipped_class_lists():
    cars = load_head(SHIPPED / "stanford_cars" / "classifier_cars_DINO.pth")
    birds = load_head(SHIPPED / "birds525" / "classifier_birds_DINO.pth")
    assert (cars.out_features, cars.in_features) == (196, 768) == (len(CARS), 768)
    assert read_class_names(SHIPPED / "stanford_cars" / "class_names.txt") == CARS
    assert birds.out_features == len(read_class_names(SHIPPED / "birds525" / "class_names.txt")) == 525
    assert cars.weight.device.type == "cpu" and torch.isfinite(cars.weight).all()


def test_class_key_normalises_case_spaces_and_punctuation():
    assert class_key("Acura RL Sedan 2012") == class_key("acura_rl-sedan  2012") == "acura rl sedan 2012"
    assert class_key("Acura RL Sedan 2012") != class_key("Acura RL Sedan 2011")


def test_the_heads_sidecar_sets_normalisation_and_size_and_flags_override_it(setup):
    tmp_path, _ = setup
    (tmp_path / "classifier_config.json").write_text(json.dumps({"normalize": "clip", "image_size": 112}))
    (tmp_path / "class_names.txt").write_text("\n".join(CARS) + "\n")
    assert run(tmp_path) == 0
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["preprocessing"]["normalize"] == "clip" and info["preprocessing"]["image_size"] == 112
    assert info["class_names_file"].endswith("class_names.txt")
    assert run(tmp_path, "--normalize", "imagenet", "--image_size", "224", out="out2") == 0
    info = json.loads((tmp_path / "out2" / "run.json").read_text())
    assert info["preprocessing"]["normalize"] == "imagenet" and info["preprocessing"]["image_size"] == 224


def test_map_writer_writes_off_the_main_loop_and_reports_a_failed_write(tmp_path, monkeypatch):
    import threading

    from finer_cam import runstore
    from finer_cam.errors import FinerCamError
    from finer_cam.records import RunRecord

    folder = runstore.RunFolder(tmp_path / "out", RunRecord(modes=(), class_names=()))
    writer = runstore.MapWriter(folder, threads=2, max_pending=3)
    threads = set()
    real = runstore.save_maps

    def save(path, maps):
        threads.add(threading.current_thread().name)
        if path.name == "bad.npy":
            raise OSError(28, "No space left on device")
        real(path, maps)

    monkeypatch.setattr(runstore, "save_maps", save)
    for i in range(10):
        writer.submit(f"d/{i}.npy", np.full((2, 3, 3), i, np.float16), {"image": f"d/{i}.jpg", "map": f"d/{i}.npy"})
    writer.submit("bad.npy", np.zeros((1, 2, 2), np.float16), {"image": "bad.jpg", "map": "bad.npy"})
    with pytest.raises(FinerCamError, match="bad.npy: cannot write"):
        writer.close()
    folder.close()
    assert threads and all(t.startswith("finer-cam-writer") for t in threads)
    index = runstore.read_index(tmp_path / "out" / "index.jsonl")
    assert sorted(index) == sorted(f"d/{i}.jpg" for i in range(10))  # every line after its map; none for bad
    assert all(np.load(tmp_path / "out" / f"d/{i}.npy")[0, 0, 0] == i for i in range(10))


def test_max_size_batches_images_of_equal_shape_together(setup, monkeypatch):
    from finer_cam.cam import FinerCAM
    from finer_cam.data import shape_batches

    tmp_path, _ = setup
    data = tmp_path / "mixed"
    sizes = [(60, 40), (40, 60), (60, 40), (30, 30), (40, 60), (60, 40), (61, 41)]  # (61, 41) -> same as (60, 40)
    for i, size in enumerate(sizes):
        write_image(data / "c" / f"{i}.png", size=size, seed=i)
    calls = []
    real = FinerCAM.__call__

    def record(self, x, *a, **k):
        calls.append(tuple(x.shape))
        return real(self, x, *a, **k)

    monkeypatch.setattr(FinerCAM, "__call__", record)
    assert run(tmp_path, "--max_size", "70", "--batch_size", "3", data=data) == 0
    # 4 images share 70x42 (after rounding to the patch), 2 are 42x70, 1 is 42x42: 2 + 1 + 1 forward passes
    assert sorted(calls) == sorted([(3, 3, 42, 70), (1, 3, 42, 70), (2, 3, 70, 42), (1, 3, 42, 42)])
    assert len(read_index(tmp_path / "out")) == 7
    assert shape_batches([(1, 1), None, (2, 2), (1, 1), None], 2) == [[0, 3], [1, 4], [2]]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident set size from /proc")
def test_memory_stays_flat_over_a_long_run(setup):
    """Several hundred images: nothing may pile up per batch (keeping each batch's input alone grows it by
    about 44 MiB here, well past the bound)."""
    import os

    tmp_path, _ = setup
    data = tmp_path / "many"
    for i in range(400):
        write_image(data / "c" / f"{i:04d}.png", size=(20, 20), seed=i)
    page = os.sysconf("SC_PAGE_SIZE")
    rss = []

    class Bar:
        def update(self, n=1):
            rss.append(int(Path("/proc/self/statm").read_text().split()[1]) * page)

        def set_postfix(self, **k):
            pass

        def close(self):
            pass

    from finer_cam.generate import GenerateConfig, run_generate

    cfg = GenerateConfig(dataset_path=str(data), save_dir=str(tmp_path / "out"), model_path=str(tmp_path / "backbone.pth"),
                         classifier_path=str(tmp_path / "head.pth"), image_size=112, batch_size=4, num_workers=0,
                         device="cpu")
    summary = run_generate(cfg, progress=lambda *a: Bar())
    assert summary.processed == 400 and len(rss) == 100
    growth = max(rss[25:]) - rss[25]  # after a quarter of the run (allocator pools warmed up)
    assert growth < 8 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over 300 images"


def test_starting_generate_cam_does_not_import_torchvision():
    """torchvision takes about a second to import; generate_cam.py (with PIL decoding) must not pay it."""
    import subprocess
    import sys

    code = ("import sys, generate_cam, finer_cam.generate, finer_cam.data as d; d.decode_raw([{'raw': None}], None, None); "
            "print('torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True)
    assert done.stdout.strip() == "False", done.stderr[-500:]


@pytest.mark.slow
def test_compile_compiles_the_shared_forward_and_changes_no_map(setup, monkeypatch):
    tmp_path, _ = setup
    compiled = []

    def fake_compile(fn, **kw):  # the plumbing, without a minute of inductor on the CPU
        compiled.append(fn.__name__)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    assert run(tmp_path, "--compile", out="compiled") == 0 and run(tmp_path, out="plain") == 0
    assert compiled == ["forward_to_target"]
    for e in read_index(tmp_path / "plain"):
        if "map" in e:
            assert np.array_equal(np.load(tmp_path / "compiled" / e["map"]), np.load(tmp_path / "plain" / e["map"]))
