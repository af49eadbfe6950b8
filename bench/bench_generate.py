"""Throughput of generate_cam.py against the reference ways of doing the same work, in one run.

Same backbone (a ViT-B/14 with random weights in the official layout: the real weights cannot be
downloaded here, and timing does not depend on their values), the official Stanford Cars head, the same
JPEG images at 224, the three default modes; whole process against whole process (start-up, model
loading, decoding and writing included), each process timed by wall clock. Every way runs ``--repeat``
times, the ways taking turns (so none is always the first to read the files from disk), and the median
is reported.

    python bench/bench_generate.py [--images 16] [--batch 16] [--arch vit_base] [--repeat 3] [--skip-official]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import dinov2  # noqa: E402
from finer_cam.device import loader_workers  # noqa: E402

HEAD = ROOT / "pretrained_models" / "classifier" / "stanford_cars" / "classifier_cars_DINO.pth"


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"bench_generate: exit status {done.returncode} from {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--arch", default="vit_base", help="must give the head's width (768 for the Stanford Cars head)")
    ap.add_argument("--head", default=str(HEAD))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", help="generate_cam.py's --precision (the peers run in float32)")
    ap.add_argument("--skip-official", action="store_true", help="skip the slow batch-1 reference")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each way; the median is reported")
    ap.add_argument("--workers", default="auto",
                    help="decoding processes for generate_cam.py and torchcam (auto: generate_cam.py's default for "
                         "the device, given to both)")
    args = ap.parse_args()
    args.workers = loader_workers(args.workers if args.workers == "auto" else int(args.workers),
                                  torch.device(args.device))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        torch.save(dinov2.build(args.arch).state_dict(), tmp / "backbone.pth")
        rng = np.random.default_rng(0)
        folder = tmp / "images" / "Acura RL Sedan 2012"
        folder.mkdir(parents=True)
        for i in range(args.images):  # Stanford-Cars-like sizes
            arr = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / f"{i:06d}.jpg", quality=90)
        common = [str(tmp / "backbone.pth"), args.head, str(tmp / "images")]
        ours = [sys.executable, "generate_cam.py", "--model_path", common[0], "--classifier_path", common[1],
                "--dataset_path", common[2], "--save_dir", str(tmp / "ours"), "--batch_size", str(args.batch),
                "--num_workers", str(args.workers), "--device", args.device, "--precision", args.precision]
        ours += ["--overwrite"]
        peer = [sys.executable, "bench/peers.py"]
        ways = {"generate_cam.py": ours,
                "torchcam 0.5.0 FinerCAM": peer + ["torchcam", *common, str(tmp / "tc"), str(args.batch), args.device,
                                                     str(args.workers)]}
        if not args.skip_official:
            ways["pytorch-grad-cam 1.5.7 FinerCAM (official way)"] = \
                peer + ["official", *common, str(tmp / "gc"), "1", args.device]
        runs: dict[str, list[float]] = {name: [] for name in ways}
        names = list(ways)
        for r in range(args.repeat):
            for name in names[r % len(names):] + names[:r % len(names)]:  # take turns at going first
                runs[name].append(timed(ways[name]))
    results = {name: statistics.median(times) for name, times in runs.items()}
    base = results["generate_cam.py"]
    print(f"{args.images} images, {args.arch}, 224x224, 3 modes, batch {args.batch}, {args.workers} loader workers, "
          f"generate_cam.py --precision {args.precision}, {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.repeat} runs")
    print(f"{'way':50s} {'seconds':>8s} {'images/s':>9s} {'ours is x faster':>17s}")
    for name, seconds in results.items():
        print(f"{name:50s} {seconds:8.1f} {args.images / seconds:9.2f} {seconds / base:17.2f}   "
              f"runs: {', '.join(f'{t:.1f}' for t in runs[name])}")


if __name__ == "__main__":
    main()
