"""The benchmarks the docs name run, at a tiny size (their figures are not checked, only that they work)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> str:
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_bench_generate_runs():
    out = _run("bench/bench_generate.py", "--images", "1", "--batch", "1", "--repeat", "1", "--skip-official")
    assert "generate_cam.py" in out and "torchcam" in out


@pytest.mark.slow
def test_bench_throughput_runs():
    out = _run("bench/bench_throughput.py", "--skip_speed", "--batch", "2", "--workers", "0", "--toy_images", "4")
    assert "baseline" in out


@pytest.mark.slow
def test_bench_concepts_runs():
    out = _run("bench/bench_concepts.py", "--images", "1", "--concepts", "2")
    assert out.strip()


@pytest.mark.slow
def test_ablate_toy_runs(tmp_path):
    """bench/ablate_toy.py on a toy world of one test image a class, with a random head of the right size."""
    import json

    import torch

    from finer_cam.toy import ToyConfig, write_dataset

    write_dataset(tmp_path / "toy", ToyConfig(train_per_class=1, test_per_class=1), workers=1)
    head = torch.nn.Linear(128, 16)
    torch.save(head.state_dict(), tmp_path / "head.pth")
    names = ToyConfig().class_names
    lines = ["image,target,reference,part,margin,swapped_margin,token_swapped_margin"]  # against any reference
    for name in names:
        lines += [f"{name}/00000.png,{name},{other},{part},1,{0 if part == 'wheels' else 1},"
                  for other in names if other != name for part in ("body", "wheels", "badge", "light", "roof")]
    (tmp_path / "swaps.csv").write_text("\n".join(lines) + "\n")
    out = _run("bench/ablate_toy.py", "--root", str(tmp_path / "toy"), "--head", str(tmp_path / "head.pth"),
               "--variants", "gradcam@last", "gradcam@block:2", "--out", str(tmp_path / "ablations.json"),
               "--swaps", str(tmp_path / "swaps.csv"))
    assert "| baseline_r123 |" in out and "| finer |" in out and "swap_top" in out
    results = json.loads((tmp_path / "ablations.json").read_text())
    assert set(results) == {"gradcam@last", "gradcam@block:2"}
    assert 0 < results["gradcam@last"]["baseline"]["swap_top"]["n"] <= 16


@pytest.mark.slow
def test_bench_pipeline_runs():
    out = _run("bench/bench_pipeline.py", "--images", "2", "--batch", "1", "--arch", "vit_small", "--startup_repeat",
               "1", "--write_maps", "4")
    for part in ("pipeline ceiling", "compute floor", "lower floor", "the overlapped bound", "MB/s",
                 "feature extraction", "evaluate.py", "first explained image"):
        assert part in out, (part, out)


@pytest.mark.slow
def test_gpu_check_starts_and_finishes_on_the_cpu():
    """bench/gpu_check.sh with DEVICE=cpu: every command it runs on a GPU, at a tiny size."""
    import os

    done = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("compute floor") == 2 and "torchcam" in done.stdout and "vs pil fp32" in done.stdout
