#!/usr/bin/env bash
# Training speed on one GPU (issue 5): one command, about 7 minutes, no download.
#
#     bash benchmarks/gpu_bench.sh          # from any folder; writes only to a temp folder
#
# Synthetic 1024 x 1024 PNGs in the MVTec layout (16 classes x 20 training images, 160 test
# images), a random-init ViT-B (dinov2reg_vit_base_14), 448 -> 392 px, batch 16 and 4 loader
# workers (the scripts' settings). Training it/s of the faithful path (explicit attention,
# fp32), SDPA, bf16 and bf16 + torch.compile, without and with --cache_images; evaluation
# images per second; peak GPU memory. The last lines are a block to paste into BENCHMARKS.md.
# Every step has its own time limit; a configuration that fails or runs out of time is
# reported in the table, the others still run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
say() { echo "[gpu_bench $(date +%H:%M:%S)] $*" >&2; }

say "machine"
timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    || say "nvidia-smi not available"
timeout 120 "$PYTHON" -c "
import torch
assert torch.cuda.is_available(), 'torch sees no CUDA device'
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"

say "training and evaluation throughput, 7 configurations (at most 7 minutes)"
# cheapest first: if the budget runs out, only the compiled configurations are skipped
timeout 440 "$PYTHON" benchmarks/bench_train.py --device cuda \
    --encoder dinov2reg_vit_base_14 --image_size 448 --crop_size 392 --batch_size 16 \
    --num_workers 4 --classes 16 --train_per_class 20 --source_size 1024 --eval_images 160 \
    --warmup 5 --iters 30 --config_timeout 150 --budget 420 \
    --configs faithful,faithful+cache,sdpa,bf16,bf16+cache,bf16+compile,bf16+cache+compile
say "done"
