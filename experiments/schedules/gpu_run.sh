#!/usr/bin/env bash
# Resolution schedules on Fashion-MNIST, as run on one H100 (see README.md).
# Usage: bash experiments/schedules/gpu_run.sh [DATA_ROOT]
set -uo pipefail
ROOT=${1:-/usr/share/datasets/fashion-mnist}
PY=${PYTHON:-python}
SWEEP=logs/experiments/schedules/gpu_resnet18
$PY scripts/train.py -m data=fashion_mnist data.root=$ROOT trainer=gpu data.num_workers=12 \
  trainer.enable_progress_bar=false backbone=resnet18 data.batch_size=256 \
  resolution=fixed,progressive,random,fixres resolution.eval_size=64 'eval.resolutions=[32,48,64,96]' \
  trainer.max_epochs=8 trainer.max_time=00:00:00:45 hydra.sweep.dir=$SWEEP
$PY scripts/summarize.py $SWEEP --sort test/acc
$PY experiments/schedules/time_to_acc.py $SWEEP --thresholds 0.90 0.92 0.93 | tee $SWEEP/time_to_acc.md
