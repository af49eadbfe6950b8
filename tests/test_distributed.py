"""torchrun with 2 CPU processes (gloo): the merged output equals a single-process run; resume per shard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_classifier, write_image

import generate_cam
from finer_cam.distributed import Ranks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    save_tiny_classifier(tmp, num_classes=196, depth=2)
    for i in range(11):
        write_image(tmp / "data" / ["Acura RL Sedan 2012", "other"][i % 2] / f"{i:02d}.jpg", size=(40 + i, 30), seed=i)
    (tmp / "data" / "other" / "broken.jpg").write_text("not an image")
    assert generate_cam.main(flags(tmp, tmp / "single")) == 1  # one image cannot be read
    return tmp


def flags(tmp: Path, out: Path) -> list[str]:
    return ["--dataset_path", str(tmp / "data"), "--save_dir", str(out), "--model_path", str(tmp / "backbone.pth"),
            "--classifier_path", str(tmp / "head.pth"), "--num_workers", "0", "--batch_size", "2", "--device", "cpu"]


def torchrun(tmp: Path, out: Path, n: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                           "generate_cam.py", *flags(tmp, out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def as_data(out: Path) -> tuple[dict, dict]:
    index = [json.loads(line) for line in (out / "index.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len({e["image"] for e in index}) == len(index)  # each image once
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    return {e["image"]: e for e in index}, run


def assert_equal_runs(out: Path, reference: Path, skipped: int = 0) -> None:
    (index, run), (ref_index, ref_run) = as_data(out), as_data(reference)
    assert index == ref_index
    summary, ref_summary = run.pop("summary"), ref_run.pop("summary")
    assert run == ref_run
    assert summary == {**ref_summary, "skipped": skipped, "processed": ref_summary["processed"] - skipped}
    for e in index.values():
        if "map" in e:
            np.testing.assert_array_equal(np.load(out / e["map"]), np.load(reference / e["map"]))
    assert not list(out.glob("index.rank*.jsonl")) and not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(world):
    done = torchrun(world, world / "two")
    assert done.returncode != 0  # the unreadable image: status 1 on rank 0
    assert done.stderr.count("generate_cam.py: 11 explained, 0 already done, 1 failed of 12") == 1  # rank 0, for all
    assert_equal_runs(world / "two", world / "single")


@pytest.mark.slow
def test_a_killed_multi_process_run_resumes_per_shard(world, tmp_path):
    """What a killed 2-rank run leaves: each rank's index file (one torn line) and some maps; the rerun
    folds both in, redoes the rest, and ends as the single-process run."""
    out = tmp_path / "killed"
    generate_cam.main(flags(world, out))
    entries = [json.loads(line) for line in (out / "index.jsonl").read_text(encoding="utf-8").splitlines()]
    done = [e for e in entries if "map" in e]
    (out / "index.jsonl").write_text("")
    for rank in (0, 1):
        mine = Ranks(rank, 2).shard(done)[:3]
        lines = "".join(json.dumps(e) + "\n" for e in mine)
        (out / f"index.rank{rank}.jsonl").write_text(lines + '{"image": "torn', encoding="utf-8")
    kept = {e["image"] for r in (0, 1) for e in Ranks(r, 2).shard(done)[:3]}
    for e in done:
        if e["image"] not in kept:
            (out / e["map"]).unlink()
    result = torchrun(world, out)
    assert result.returncode != 0, result.stderr[-2000:]
    assert_equal_runs(out, world / "single", skipped=len(kept))


def test_ranks_shard_disjointly_and_completely():
    items = list(range(23))
    shards = [Ranks(r, 4).shard(items) for r in range(4)]
    assert sorted(sum(shards, [])) == items and all(len(s) in (5, 6) for s in shards)


@pytest.mark.slow
def test_evaluate_over_two_processes_gives_the_single_process_tables(world):
    import csv

    import evaluate

    single, two = world / "eval_single", world / "eval_two"
    common = ["--cam_dir", str(world / "single"), "--steps", "4", "--percent", "10", "--num_workers", "0",
              "--device", "cpu", "--batch_size", "8"]
    assert evaluate.main([*common, "--out", str(single)]) == 0
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "evaluate.py", *common, "--out", str(two)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("11 images evaluated") == 1

    def rows(folder):
        with open(folder / "per_image.csv", encoding="utf-8") as f:
            return sorted((r["image"], r["mode"], {k: v for k, v in r.items() if k not in ("image", "mode")})
                          for r in csv.DictReader(f))

    a, b = rows(single), rows(two)
    assert [r[:2] for r in a] == [r[:2] for r in b] and len(a) == 33
    for (_, _, x), (_, _, y) in zip(a, b):
        for k in x:
            assert x[k] == y[k] or abs(float(x[k]) - float(y[k])) < 1e-5, k
    s1, s2 = (json.loads((f / "summary.json").read_text()) for f in (single, two))
    assert s1["images"] == s2["images"] == 11
    for mode in s1["modes"]:
        for metric, v in s1["modes"][mode].items():
            assert v["n"] == s2["modes"][mode][metric]["n"]
            assert abs(v["mean"] - s2["modes"][mode][metric]["mean"]) < 1e-5
