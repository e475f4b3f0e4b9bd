#!/usr/bin/env bash
# Pooling x resolution on Fashion-MNIST on one GPU (see README.md: the earlier run of (a) was on an H100, (b) on an H200).
# Usage: bash experiments/pooling_resolution/gpu_run.sh [DATA_ROOT]
set -uo pipefail
ROOT=${1:-/usr/share/datasets/fashion-mnist}
PY=${PYTHON:-python}
COMMON="data=fashion_mnist data.root=$ROOT trainer=gpu data.num_workers=12 trainer.enable_progress_bar=false
  backbone=resnet18 data.batch_size=256 eval.resolutions=[32,48,64,96,128,160]"
OUTDIR=logs/experiments/pooling_resolution

STEPS=${STEPS:-ab}  # which parts to run: a, b or ab

# (a) trained at one size (64 px)
[[ $STEPS == *a* ]] && $PY scripts/train.py -m $COMMON pooling=avg,max,pyramid resolution.size=64 trainer.max_epochs=10 \
  hydra.sweep.dir=$OUTDIR/gpu_fixed64
[[ $STEPS == *a* ]] && $PY scripts/summarize.py $OUTDIR/gpu_fixed64 --sort test/acc

# (b) trained with random multi-scale sizes 32..96 px, evaluated at 64 px as main size
[[ $STEPS == *b* ]] && $PY scripts/train.py -m $COMMON pooling=avg,max,pyramid resolution=random 'resolution.sizes=[32,48,64,96]' \
  resolution.eval_size=64 trainer.max_epochs=8 trainer.max_time=00:00:00:45 hydra.sweep.dir=$OUTDIR/gpu_random32-96
[[ $STEPS == *b* ]] && $PY scripts/summarize.py $OUTDIR/gpu_random32-96 --sort test/acc
