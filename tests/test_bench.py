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
def test_bench_throughput_runs(tmp_path):
    """The closeness part on a toy world of one training and one test image a class (the speed part runs in
    bench/gpu_check.sh's test); the head is trained on it, as on the default world."""
    from finer_cam.toy import ToyConfig, write_dataset

    write_dataset(tmp_path / "toy", ToyConfig(train_per_class=1, test_per_class=1), workers=1)
    out = _run("bench/bench_throughput.py", "--skip_speed", "--batch", "2", "--workers", "0", "--toy_images", "4",
               "--toy_root", str(tmp_path / "toy"))
    assert "baseline" in out and "closeness: 1 toy test images" in out


@pytest.mark.slow
def test_bench_concepts_runs():
    out = _run("bench/bench_concepts.py", "--images", "1", "--concepts", "2", "--layers", "2")
    assert "6 maps, CLIP ViT-B/16 cut to 2 layers" in out and "pytorch-grad-cam GradCAM" in out and "faster" in out


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
def test_gpu_check_starts_and_finishes_on_the_cpu():
    """bench/gpu_check.sh with DEVICE=cpu: every command it runs on a GPU, at a tiny size. On the CPU it runs
    bench_pipeline.py (``--images 2 --batch 1 --arch vit_small --startup_repeat 1 --write_maps 4``) and
    bench_generate.py (``--images 1 --batch 1 --repeat 1 --skip-official``) at the tiny sizes a check of each
    takes, so this one run is also the check that those two benchmarks run and print every part."""
    import os

    done = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert out.count("compute floor") == 2 and "vs pil fp32" in out
    for part in ("pipeline ceiling", "lower floor", "the overlapped bound", "MB/s", "feature extraction",
                 "evaluate.py", "first explained image"):  # bench_pipeline.py's parts
        assert part in out, (part, out)
    rows = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert rows.count("generate_cam.py") == rows.count("torchcam") == 2, out  # bench_generate.py, fp32 and bf16
