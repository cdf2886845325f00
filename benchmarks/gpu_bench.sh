#!/usr/bin/env bash
# The GPU checks of the speed options and fast paths in one command, on a fresh GPU machine after
# `pip install -r requirements.txt` (no download, writes only to temporary folders):
#
#     bash benchmarks/gpu_bench.sh              # about 15 minutes on an H100-class GPU
#     bash benchmarks/gpu_bench.sh --dry-run    # the same steps on the CPU at toy sizes
#
# 1. The CUDA-only tests (`pytest -m cuda`: no hidden host-device synchronisation in a
#    training step, fp16 linear attention, the flat optimizer, the GPU generator on resume,
#    compiled dropout = eager dropout, pinned batches, `--device cuda:1`).
# 2. Training and evaluation throughput of 8 configurations (benchmarks/bench_train.py):
#    synthetic 1024 x 1024 PNGs in the MVTec layout (16 classes x 36 training images, so the
#    5 + 30 timed steps stay in one epoch; 160 test images), random-init ViT-B
#    (dinov2reg_vit_base_14), 448 -> 392 px, batch 16, 4 loader workers kept across epochs
#    and pinned batches for every configuration (the trainer's loader). Cheapest first,
#    compiled ones last with a budget for a cold compile: one that fails, cannot compile or
#    runs out of time is reported in the table and the others still run.
# The last lines are a block to paste into BENCHMARKS.md (table, 10k-iteration times, the
# test summary). Targets: bf16+cache+compile >= 3x faithful; 10k iterations in
# under 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
say() { echo "[gpu_bench $(date +%H:%M:%S)] $*" >&2; }
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

CONFIGS=faithful,sdpa,tf32,bf16,tf32+cache,bf16+cache,tf32+cache+compile,bf16+cache+compile
if [[ "${1:-}" == "--dry-run" ]]; then
    say "dry run: CPU, ViT-S at 56 px, tiny data (checks the script, measures nothing)"
    BENCH=(--device cpu --encoder dinov2reg_vit_small_14 --image_size 64 --crop_size 56
           --batch_size 4 --num_workers 2 --classes 2 --train_per_class 8 --source_size 128
           --eval_images 8 --warmup 1 --iters 2 --threads 1 --config_timeout 300
           --compile_timeout 30 --budget 900
           --configs "faithful,sdpa,tf32,bf16,tf32+cache,bf16+cache,bf16+cache+compile")
else
    say "machine"
    timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        || say "nvidia-smi not available"
    if ! timeout 120 "$PYTHON" -c "
import torch
assert torch.cuda.is_available(), 'torch sees no CUDA device'
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"; then
        say "no usable CUDA device: stopping (try --dry-run on a CPU machine)"
        exit 1
    fi
    BENCH=(--device cuda --encoder dinov2reg_vit_base_14 --image_size 448 --crop_size 392
           --batch_size 16 --num_workers 4 --classes 16 --train_per_class 36
           --source_size 1024 --eval_images 160 --warmup 5 --iters 30
           --config_timeout 240 --compile_timeout 480 --budget 1080 --configs "$CONFIGS")
fi

say "CUDA-only tests (at most 10 minutes)"
timeout 600 "$PYTHON" -m pytest tests -m cuda -q -p no:cacheprovider -rs 2>&1 \
    | tee "$OUT/tests.txt" | tail -n 30
TESTS=$(grep -E "(passed|failed|skipped|error)" "$OUT/tests.txt" | tail -n 1)

say "training and evaluation throughput (at most 20 minutes)"
timeout 1200 "$PYTHON" benchmarks/bench_train.py "${BENCH[@]}" | tee "$OUT/bench.txt"

say "done; the block for BENCHMARKS.md:"
echo
cat "$OUT/bench.txt"
echo
echo "CUDA-only tests (\`$PYTHON -m pytest tests -m cuda\`): ${TESTS:-no summary (see above)}"
