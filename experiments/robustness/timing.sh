#!/usr/bin/env bash
# Wall time of the default run before and after this study's defaults, back to back on a quiet machine
# (nothing else running; all cores, as `make train` runs): `python scripts/train.py` at the commit
# before (BASE, default 7277a2b: fixed, eval at 32/48/64/96 px every epoch, no calibration; run from a
# git worktree with its own src/ first on PYTHONPATH) and at HEAD (fixed, validation at 64 px each
# epoch, BatchNorm calibration and validation at 32-128 px after fit). PAIRS alternating pairs.
# Rows go to timing_shapes.csv (collect.py: cells `before` and `after`).
#
#   bash experiments/robustness/timing.sh [RUNS_DIR] [PAIRS]
set -euo pipefail
RUNS=${1:-/tmp/robustness_timing}
PAIRS=${2:-1}
BASE=${BASE:-7277a2b}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
mkdir -p "$RUNS"
[ -d "$RUNS/base" ] || git -C "$REPO" worktree add --detach "$RUNS/base" "$BASE" > /dev/null
args=()
for pair in $(seq 0 $((PAIRS - 1))); do
  for cell in before after; do
    name="$cell-s$pair"
    [ -f "$RUNS/$name/metrics.json" ] && { args+=("$name=$RUNS/$name"); continue; }
    if [ "$cell" = before ]; then
      (cd "$RUNS/base" && PYTHONPATH="$RUNS/base/src" $PY scripts/train.py trainer.enable_progress_bar=false \
        hydra.run.dir="$RUNS/$name" > "$RUNS/$name.log" 2>&1)
      echo "python scripts/train.py trainer.enable_progress_bar=false  # at $BASE" > "$RUNS/$name.command.txt"
    else
      (cd "$REPO" && $PY scripts/train.py trainer.enable_progress_bar=false hydra.run.dir="$RUNS/$name" \
        > "$RUNS/$name.log" 2>&1)
      echo "python scripts/train.py trainer.enable_progress_bar=false" > "$RUNS/$name.command.txt"
    fi
    rm -rf "$RUNS/$name/checkpoints"
    args+=("$name=$RUNS/$name")
  done
done
$PY "$HERE/collect.py" "$HERE/timing_shapes.csv" "${args[@]}"
git -C "$REPO" worktree remove --force "$RUNS/base"
