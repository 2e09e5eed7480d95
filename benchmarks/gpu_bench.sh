#!/usr/bin/env bash
# Training throughput on a CUDA GPU: benchmarks/bench_train.py for MobileViT-S at 256 and 64 px,
# ResNet-18 and MobileNetV2 at 64 and 224 px, each in both memory layouts, then a summary table
# of images per second and the two ratios. Preceded by a one-run study on the GPU as a smoke test.
#
#   bash benchmarks/gpu_bench.sh                 # results also in $OUT/gpu_bench.log if OUT is set
#   COMPILE=1 BATCH=256 bash benchmarks/gpu_bench.sh
#
# Written without access to a GPU: untested there (see README, Performance).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BATCH=${BATCH:-128}
STEPS=${STEPS:-20}
REPEATS=${REPEATS:-5}
WARMUP=${WARMUP:-10}
LOADER_WORKERS=${LOADER_WORKERS:-2}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu (with small CONFIGS) only checks this script's plumbing
LOG=${OUT:-/tmp}/gpu_bench.log
CONFIGS=${CONFIGS:-"mobilevit_s:256 mobilevit_s:64 resnet18:64 resnet18:224 mobilenetv2_100:64 mobilenetv2_100:224"}
mkdir -p "$(dirname "$LOG")"
: >"$LOG"

if [ "$DEVICE" = cuda ]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
fi

echo "== smoke test: a one-run study on $DEVICE" | tee -a "$LOG"
smoke=$(mktemp -d)
python -m study run --out "$smoke" --device "$DEVICE" --models "${SMOKE_MODEL:-mobilevit_xxs}" --fractions 0.25 --seeds 1 --epochs 2 --quiet --no-report 2>&1 | tail -3 | tee -a "$LOG"

results=()
for config in $CONFIGS; do
  model=${config%%:*}
  size=${config##*:}
  for layout in off on; do
    echo "== $model at $size px, channels_last=$layout, batch $BATCH" | tee -a "$LOG"
    output=$(python benchmarks/bench_train.py --device "$DEVICE" --model "$model" --image-size "$size" --batch-size "$BATCH" \
      --steps "$STEPS" --repeats "$REPEATS" --warmup "$WARMUP" --channels-last "$layout" --loader-workers "$LOADER_WORKERS" \
      ${COMPILE:+--compile} 2>&1) || { echo "$output" | tee -a "$LOG"; results+=("$model $size $layout FAILED"); continue; }
    echo "$output" | tee -a "$LOG"
    result=$(echo "$output" | grep '^result ' | tail -1)
    ratios=$(echo "$output" | tail -1)
    results+=("$(echo "$result $ratios" | sed -E 's/[a-z_/]+=//g' | awk '{print $2, $3, $6, $8, $9, $10, $11, $12}')")
  done
done

{
  echo
  echo "model input channels_last limit_img/s harness_img/s reference_img/s harness/limit harness/reference"
  printf '%s\n' "${results[@]}"
} | column -t | tee -a "$LOG"
