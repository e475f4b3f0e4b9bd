#!/usr/bin/env bash
# The GPU versions of the Fashion-MNIST studies (see README.md; the earlier runs were on one H100, the schedules on one H200).
# Usage: bash experiments/fashion_mnist/gpu_run.sh [DATA_ROOT] [OUT]
# DATA_ROOT defaults to the Debian package's folder; OUT (optional) receives copies of the results.
set -uo pipefail
ROOT=${1:-/usr/share/datasets/fashion-mnist}
OUT=${2:-}
LOGS=logs/experiments/fashion_mnist
COMMON="data=fashion_mnist data.root=$ROOT trainer=gpu data.num_workers=12 trainer.enable_progress_bar=false"

# (1) accuracy reference: resnet18 from scratch, full data (55k train / 5k val / 10k test), 112 px
${PYTHON:-python} scripts/train.py $COMMON backbone=resnet18 resolution.size=112 data.batch_size=256 \
  trainer.max_epochs=30 trainer.max_time=00:00:04:00 hydra.run.dir=$LOGS/gpu_resnet18_112px
${PYTHON:-python} scripts/summarize.py $LOGS/gpu_resnet18_112px

# (2) pooling x resolution: train at 64 px, evaluate at 32..160 px, one job per head
${PYTHON:-python} scripts/train.py -m $COMMON backbone=resnet18 pooling=avg,max,pyramid resolution.size=64 \
  'eval.resolutions=[32,48,64,96,128,160]' data.batch_size=256 trainer.max_epochs=10 \
  trainer.max_time=00:00:00:50 hydra.sweep.dir=logs/experiments/pooling_resolution/gpu_fixed64
${PYTHON:-python} scripts/summarize.py logs/experiments/pooling_resolution/gpu_fixed64 --sort test/acc

if [ -n "$OUT" ]; then
  mkdir -p "$OUT/ref" "$OUT/pool"
  cp $LOGS/gpu_resnet18_112px/{metrics.json,summary.md,train.log} "$OUT/ref/" 2>/dev/null
  cp logs/experiments/pooling_resolution/gpu_fixed64/summary.{md,png,csv} "$OUT/pool/" 2>/dev/null
fi
