#!/usr/bin/env bash
# The GPU figures (docs/speed.md) in one run:
# about 3 minutes on one H200. Prints the card, then images/s against torchcam (whole processes) and the
# in-process images/s of every decoding path and precision.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
"$PYTHON" bench/bench_generate.py --device cuda --images 512 --batch 64 --repeat 1 --skip-official --workers 16
"$PYTHON" bench/bench_generate.py --device cuda --images 512 --batch 64 --repeat 1 --skip-official --precision bf16 --workers 16
"$PYTHON" bench/bench_throughput.py --device cuda --images 2048 --batch 64 --workers 16 --skip_closeness
