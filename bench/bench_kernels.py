"""Float32 linear products on this CPU: PyTorch's default (MKL) against finer_cam.kernels.PackedLinear (oneDNN).

The shapes are ViT-B/14's at 224 (257 tokens a image, width 768, MLP 3072) for a batch of images, then a
whole no-gradient ViT-B/14 forward with plain and with packed linear layers, on the same inputs.

    python bench/bench_kernels.py [--batch 16] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dinov2  # noqa: E402
from finer_cam.kernels import PackedLinear, onednn_linear_available, pack_linears  # noqa: E402


def seconds(fn, repeat: int) -> float:
    fn()  # warm-up (and packing)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16, help="images a batch")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of each; the median is reported")
    args = ap.parse_args()
    if not onednn_linear_available():
        sys.exit("this PyTorch build lacks oneDNN's packed linear operators: nothing to compare")
    torch.manual_seed(0)
    rows = args.batch * 257
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, batch {args.batch} "
          f"({rows} token rows), median of {args.repeat}")
    print(f"{'product':34s} {'F.linear GFLOP/s':>17s} {'packed GFLOP/s':>15s} {'ratio':>6s}")
    with torch.no_grad():
        for name, (d_in, d_out) in {"qkv 768->2304": (768, 2304), "proj 768->768": (768, 768),
                                    "fc1 768->3072": (768, 3072), "fc2 3072->768": (3072, 768)}.items():
            plain = nn.Linear(d_in, d_out).requires_grad_(False)
            fast = PackedLinear.from_linear(plain)
            x = torch.randn(args.batch, 257, d_in)
            flops = 2 * rows * d_in * d_out
            a, b = seconds(lambda: plain(x), args.repeat), seconds(lambda: fast(x), args.repeat)
            print(f"{name:34s} {flops / a / 1e9:17.0f} {flops / b / 1e9:15.0f} {a / b:6.2f}")
        model = dinov2.build("vit_base").eval().requires_grad_(False)
        x = torch.randn(args.batch, 3, 224, 224)
        a = seconds(lambda: model(x), args.repeat)
        pack_linears(model)
        b = seconds(lambda: model(x), args.repeat)
        print(f"{'ViT-B/14 forward, images/s':34s} {args.batch / a:17.2f} {args.batch / b:15.2f} {a / b:6.2f}")


if __name__ == "__main__":
    main()
