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
