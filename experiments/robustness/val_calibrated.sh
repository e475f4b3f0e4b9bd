#!/usr/bin/env bash
# Validation accuracy per size of each run's best checkpoint *with* its calibrated BatchNorm statistics
# (a run's own val/acc@<size> is its last epoch's, before the after-fit calibration): scripts/eval.py
# on the val split, into <run>/eval_val/eval.json, which collect.py reads (val_cal_acc@<size>).
# Needs the checkpoints (cpu_run.sh with KEEP_CHECKPOINTS=1).
#
#   bash experiments/robustness/val_calibrated.sh RUNS_DIR
set -euo pipefail
RUNS=${1:-/tmp/robustness_runs}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
for run in "$RUNS"/*/; do
  run=${run%/}
  [ -f "$run/metrics.json" ] && [ ! -f "$run/eval_val/eval.json" ] || continue
  best=$(ls "$run"/checkpoints/best-*.ckpt 2>/dev/null | head -1) || true
  [ -n "$best" ] || continue
  OMP_NUM_THREADS=1 $PY "$REPO/scripts/eval.py" ckpt_path="$best" eval.split=val \
    'eval.resolutions=[64,32,48,96,128]' eval.num_workers=1 hydra.run.dir="$run/eval_val" > "$run/eval_val.log" 2>&1 \
    || echo "$run: eval failed"
done
