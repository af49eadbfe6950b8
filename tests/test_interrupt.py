"""Killed and interrupted runs: a rerun ends where an uninterrupted run ends; Ctrl-C stops after the batch."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_classifier, write_image

import generate_cam

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 40


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interrupt")
    save_tiny_classifier(tmp, num_classes=196, depth=2)
    for i in range(N_IMAGES):
        write_image(tmp / "data" / ["Acura RL Sedan 2012", "x y"][i % 2] / f"{i:03d} é.jpg", size=(50 + i, 40), seed=i)
    reference = tmp / "reference"
    assert generate_cam.main(argv(tmp, reference)) == 0
    return tmp, reference


def argv(tmp: Path, out: Path) -> list[str]:
    return ["--dataset_path", str(tmp / "data"), "--save_dir", str(out), "--model_path", str(tmp / "backbone.pth"),
            "--classifier_path", str(tmp / "head.pth"), "--num_workers", "0", "--batch_size", "2", "--device", "cpu",
            "--image_size", "224"]


def start(tmp: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "generate_cam.py", *argv(tmp, out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def index_lines(out: Path) -> list[str]:
    path = out / "index.jsonl"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def wait_for_lines(proc: subprocess.Popen, out: Path, n: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while len(index_lines(out)) < n and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.01)


def assert_same_as_reference(out: Path, reference: Path) -> None:
    lines = index_lines(out)
    entries = [json.loads(line) for line in lines]
    images = [e["image"] for e in entries]
    assert len(images) == len(set(images)) == N_IMAGES  # every image present once
    want = {json.loads(line)["image"]: json.loads(line) for line in index_lines(reference)}
    assert {e["image"]: e for e in entries} == want  # the index equal as data
    run, ref_run = (json.loads((d / "run.json").read_text()) for d in (out, reference))
    assert {k: v for k, v in run.items() if k != "summary"} == {k: v for k, v in ref_run.items() if k != "summary"}
    for e in entries:
        np.testing.assert_allclose(np.load(out / e["map"]).astype(np.float32),
                                   np.load(reference / e["map"]).astype(np.float32), atol=1e-3)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_moment_then_rerun_equals_an_uninterrupted_run(setup, tmp_path, seed):
    tmp, reference = setup
    rng = random.Random(seed)
    out = tmp_path / "out"
    proc = start(tmp, out)
    wait_for_lines(proc, out, rng.randint(1, N_IMAGES - 4))
    time.sleep(rng.uniform(0, 0.05))  # anywhere inside the next batch, or between two writes
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    finished = {json.loads(line)["image"] for line in index_lines(out) if line.endswith("}")}
    assert 0 < len(finished) < N_IMAGES
    assert generate_cam.main(argv(tmp, out)) == 0
    summary = json.loads((out / "run.json").read_text())["summary"]
    assert summary["skipped"] >= len(finished) - 1  # at most the image whose line was torn is redone
    assert summary["processed"] + summary["skipped"] == N_IMAGES
    assert_same_as_reference(out, reference)


@pytest.mark.slow
def test_sigint_stops_after_the_current_batch_and_says_so(setup, tmp_path):
    tmp, reference = setup
    out = tmp_path / "out"
    proc = start(tmp, out)
    wait_for_lines(proc, out, 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "stopping after the current batch" in err and "interrupted; finished images are kept" in err
    assert "Traceback" not in err
    lines = index_lines(out)
    assert len(lines) % 2 == 0 and 0 < len(lines) < N_IMAGES  # whole batches of 2, none torn
    assert generate_cam.main(argv(tmp, out)) == 0
    assert_same_as_reference(out, reference)


@pytest.mark.slow
def test_a_stale_temporary_file_is_removed_by_the_rerun(setup, tmp_path):
    tmp, reference = setup
    out = tmp_path / "out"
    assert generate_cam.main(argv(tmp, out)) == 0
    stale = out / "x y" / ".001 é.npy.abc123.tmp"
    stale.write_bytes(b"half a map")
    assert generate_cam.main(argv(tmp, out)) == 0
    assert not stale.exists()


@pytest.mark.slow
def test_visualize_and_evaluate_stop_at_the_next_safe_point(setup, tmp_path):
    from finer_cam.evaluate import EvaluateConfig, run_evaluate
    from finer_cam.progress import Interrupted, StopRequest
    from finer_cam.visualize import VisualizeConfig, run_visualize

    tmp, reference = setup
    stop = StopRequest()
    stop.requested = True  # as if Ctrl-C came during the first item
    with pytest.raises(Interrupted):
        run_visualize(VisualizeConfig(cam_dir=str(reference), save_dir=str(tmp_path / "vis")), stop=stop)
    assert len(list((tmp_path / "vis").rglob("*.jpg"))) == 1  # the strip in hand was finished
    with pytest.raises(Interrupted):
        run_evaluate(EvaluateConfig(cam_dir=str(reference), out=str(tmp_path / "ev"), device="cpu", steps=2,
                                    percent=[10.0], batch_size=64, num_workers=0, limit=4), stop=stop)
    assert not (tmp_path / "ev" / "summary.json").exists()  # an interrupted evaluation writes no tables


def test_main_guard_turns_a_stop_into_status_130_and_puts_the_handler_back(capsys):
    from finer_cam.cli import main_guard

    before = signal.getsignal(signal.SIGINT)

    def body(stop):
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C only asks
        time.sleep(0.05)
        assert stop.requested
        stop.check()
        return 0

    assert main_guard("prog", body, "resume hint") == 130
    err = capsys.readouterr().err
    assert "prog: stopping after the current batch" in err and "prog: interrupted; resume hint" in err
    assert signal.getsignal(signal.SIGINT) == before
