#!/usr/bin/env bash
# The prepared GPU check for issue 11, as ONE device call (H100/H200 of the device tool; its image has
# torch 2.11 + Triton, no diffusers, no Ray, no registry). Here, first:  make gpu-wheels
# Then:  run(command="bash benchmarks/gpu_device.sh", carry=[".gpu_wheels"], timeout_s=540)
# (BUDGET=480 s for the steps; estimates on an H100: setup 20, kernels 60-90, main ~300 of which the cold
# compile ~180, restart 60-90, mixed what is left; a later call can run one step alone: STEPS="restart mixed")
# Everything below is real SVD/VideoMaMa architecture, random weights, bf16, 12 frames at 1024x576 from
# 1280x720 sources (resized on the GPU), decode in chunks of 8 as the release. Steps, most important first,
# each with what is left of BUDGET seconds (a step that would not fit is skipped and says so):
#   1 kernels  every GroupNorm call of one segment: aten GroupNorm+SiLU vs the fused Triton kernel, stock
#              and channels-last layouts (ms, GB/s, max error vs fp32)
#   2 main     baseline (plain eager, batch 1) | optimised eager (fused GroupNorm, channels-last, batch 2,
#              cuDNN autotune, pinned, uint8) | the same + torch.compile (cold; artefacts saved to CACHE):
#              stage tables, frames/s, compile time and counts, alpha max/mean vs baseline, decode copies
#   3 restart  a new process with the same CACHE: compile warm-up from cache hits (an actor restart)
#   4 mixed    16:9, 9:16, 4:3 sources, auto buckets at long side 512, batches of 2 padded, compile counted
#              with the eager backend (dynamo's guards decide recompiles; cold inductor time per shape = step 2)
# Outputs: stdout and $OUT/<step>.txt. Smoke run of this very script on a CPU with the tiny config:
#   CPU_SMOKE=1 OUT=/tmp/smoke PYTHON=.venv/bin/python bash benchmarks/gpu_device.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp}
BUDGET=${BUDGET:-480}
STEPS=" ${STEPS:-kernels main restart mixed} "
CACHE=${CACHE:-/tmp/mava_compile_cache}
START=$(date +%s)

step() {  # step NAME SECONDS_NEEDED CMD...
    local name=$1 need=$2 left
    shift 2
    [[ "$STEPS" == *" $name "* ]] || return 0
    left=$(( BUDGET - ($(date +%s) - START) ))
    if (( left < need )); then
        echo "== $name: skipped, ${left} s left of ${BUDGET}, needs ~${need} s"
        return
    fi
    echo "== $name (limit $(( left - 5 )) s, at $(( $(date +%s) - START )) s)"
    timeout $(( left - 5 )) "$@" 2>&1 | grep -v '^USDT' | tee "$OUT/$name.txt"
    echo "== $name: exit ${PIPESTATUS[0]} at $(( $(date +%s) - START )) s"
}

$PY -c "import diffusers" 2>/dev/null || $PY -m pip install -q --no-index --no-deps --find-links .gpu_wheels \
    "safetensors>=0.8.0" diffusers==0.42.1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, triton, diffusers; print('card', torch.cuda.get_device_name(0) if torch.cuda.is_available()
else 'none (CPU)', '| torch', torch.__version__, '| triton', triton.__version__, '| diffusers', diffusers.__version__)"

FULL=(--full --height 576 --width 1024 --source-height 720 --source-width 1280 --frames 12 --decode-chunk 8)
SMOKE=()
BUCKET=1024x576
if [[ "${CPU_SMOKE:-0}" == 1 ]]; then   # same steps, tiny config, dynamo-only compile (inductor's C++ is slow)
    FULL=(--device cpu --height 64 --width 128 --source-height 72 --source-width 128 --frames 4 --decode-chunk 2)
    SMOKE=(--compile-backend eager --compile-parts decoder)
    BUCKET=128x64
fi
mkdir -p "$OUT"
MODE=${MODE:-default}   # compile mode of step main/restart (reduce-overhead = CUDA graphs; a later call)
OPT=(--batch 2 --pad-batch --fused-group-norm --channels-last --cudnn-benchmark --pin-memory --uint8
     --shape-buckets "$BUCKET" --compile-cache "$CACHE" --compile-mode "$MODE" "${SMOKE[@]}")

step kernels 60 $PY -m benchmarks.gpu_matter "${FULL[@]}" --kernels --kernel-reps 5 --skip-main
step main 240 $PY -m benchmarks.gpu_matter "${FULL[@]}" "${OPT[@]}" --compile --eager-first --stage-timing \
    --profile --iters 3
step restart 60 $PY -m benchmarks.gpu_matter "${FULL[@]}" "${OPT[@]}" --compile --no-baseline --iters 2
step mixed 60 $PY -m benchmarks.gpu_matter "${FULL[@]}" "${OPT[@]}" --skip-main --mixed --mixed-backend eager \
    --mixed-long-side $([[ "${CPU_SMOKE:-0}" == 1 ]] && echo 256 || echo 512)
echo "== done in $(( $(date +%s) - START )) s"
