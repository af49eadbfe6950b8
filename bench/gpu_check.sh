#!/usr/bin/env bash
# The GPU figures (docs/speed.md) in one run, a few minutes on one H100/H200-class card. Prints the card, then
# images/s against torchcam (whole processes), the in-process images/s of every decoding path and precision,
# and the pipeline against its two floors (pipeline ceiling, compute floor) with the defaults and with bf16,
# the overlap, the write side, feature extraction and evaluate.py, and the time to the first explained image.
#
# DEVICE=cpu runs every command at a tiny size on the CPU (a check that they all start and finish; its
# figures mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
DEVICE="${DEVICE:-cuda}"
if [ "$DEVICE" = "cuda" ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    PEERS=512 IMAGES=2048 BATCH=64 WORKERS=16 EXTRA=()
else
    PEERS=1 IMAGES=2 BATCH=1 WORKERS=0 EXTRA=(--arch vit_small --startup_repeat 1 --write_maps 4)
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
"$PYTHON" bench/bench_pipeline.py --device "$DEVICE" --images "$IMAGES" --batch "$BATCH" ${EXTRA[@]+"${EXTRA[@]}"}
"$PYTHON" bench/bench_pipeline.py --device "$DEVICE" --images "$IMAGES" --batch "$BATCH" --precision bf16 \
    --skip_writes --skip_startup ${EXTRA[@]+"${EXTRA[@]}"}
"$PYTHON" bench/bench_generate.py --device "$DEVICE" --images "$PEERS" --batch "$BATCH" --repeat 1 --skip-official
"$PYTHON" bench/bench_generate.py --device "$DEVICE" --images "$PEERS" --batch "$BATCH" --repeat 1 --skip-official \
    --precision bf16
"$PYTHON" bench/bench_throughput.py --device "$DEVICE" --images "$IMAGES" --batch "$BATCH" --workers "$WORKERS" \
    --skip_closeness
