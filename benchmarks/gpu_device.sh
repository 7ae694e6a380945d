#!/usr/bin/env bash
# The prepared GPU check for issue 6, as ONE device call (H100/H200 of the device tool; its image has
# torch but not diffusers and cannot reach a registry). Here, first:  make gpu-wheels
# Then run on the device machine with carry [".gpu_wheels"] and timeout_s 600:
#   bash benchmarks/gpu_device.sh
# It prints the plain eager bf16 baseline and the optimised path at 1024x576, 12 frames, real
# SVD/VideoMaMa architecture with random weights, in the same run, plus the alpha difference.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
$PY -c "import diffusers" 2>/dev/null || $PY -m pip install -q --no-index --no-deps --find-links .gpu_wheels \
    "safetensors>=0.8.0" diffusers==0.42.1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
OUT=${OUT:-/tmp}
# 1) baseline alone (plain eager bf16, batch 1) with per-stage timing
$PY -m benchmarks.gpu_matter --full --stage-timing --iters 3 2>&1 | tee "$OUT/gpu_baseline.txt"
# 2) optimised path against the baseline in the same process: batching, cuDNN autotune, uint8 on GPU,
#    pinned uploads, torch.compile (compile time reported separately)
$PY -m benchmarks.gpu_matter --full --batch 2 --cudnn-benchmark --uint8 --pin-memory --compile \
    --stage-timing --iters 3 2>&1 | tee "$OUT/gpu_optimised.txt"
