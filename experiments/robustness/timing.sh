#!/usr/bin/env bash
# Wall time of the default run (`python scripts/train.py`, as `make train` runs it: all cores) for two
# cells, alternating pairs back to back on a quiet machine (nothing else running). Rows go to
# timing_shapes.csv (collect.py; `seed` is the pair's index, every run has the default seed).
#
#   bash experiments/robustness/timing.sh [RUNS_DIR] [PAIRS]                       # before, after
#   CELLS="fixed default" bash experiments/robustness/timing.sh /tmp/rt_sc 3       # the term's cost
#
# TAG names a pass's rows apart from earlier passes of the same cells (TAG=_j: rows `before_j`,
# `small2_j`), so a new pass adds pairs instead of replacing the old rows.
#
# Cells: `before` is the default run at the commit before the robustness study (BASE, default
# 7277a2b: fixed, eval at 32/48/64/96 px every epoch, no calibration; run from a git worktree with its
# own src/ first on PYTHONPATH); `after` is the default run after the calibration (no term), `default`
# the default with the 0.6x view on a quarter of the steps (the default until the 1.4x view joined);
# `fixed` is today's default without the scale-consistency term (model.scale_consistency=0); `up` draws
# a 0.6x or a 1.4x view on an eighth of the steps (the folder's sc_up_budget), `up075` the same at
# three-quarter weight (sc_up_075), `big075` the 1.4x view alone on an eighth of the steps (sc_big_075,
# an exploration for make train's 96 px beyond the wall budget), `small2` the default's budget with the
# 0.6x view twice as often (sc_small2_075, chosen by the rule, today's default), `small2cap` the same
# with each view capped at the main batch's pixels (sc_small2_cap, an exploration), `small2half` the
# default with each view on half the batch (sc_small2_half, an exploration). Each
# cell spells out its term, so a re-run measures what its rows measured.
set -euo pipefail
RUNS=${1:-/tmp/robustness_timing}
PAIRS=${2:-1}
BASE=${BASE:-7277a2b}
CELLS=${CELLS:-before after}
TAG=${TAG:-}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
declare -A SWITCHES=([before]="" [after]="model.scale_consistency=0"
  [default]="model.scale_consistency=1.0 model.scale_consistency_factors=[0.6] model.scale_consistency_prob=0.25" [fixed]="model.scale_consistency=0"
  [up]="model.scale_consistency=1.0 model.scale_consistency_factors=[0.6,1.4] model.scale_consistency_prob=0.125"
  [up075]="model.scale_consistency=0.75 model.scale_consistency_factors=[0.6,1.4] model.scale_consistency_prob=0.125"
  [big075]="model.scale_consistency=0.75 model.scale_consistency_factors=[1.4] model.scale_consistency_prob=0.125"
  [small2]="model.scale_consistency=0.75 model.scale_consistency_factors=[0.6,0.6,1.4] model.scale_consistency_prob=0.16"
  [small2cap]="model.scale_consistency=0.75 model.scale_consistency_factors=[0.6,0.6,1.4] model.scale_consistency_prob=0.16 model.scale_consistency_max_pixels=1.0"
  [small2half]="model.scale_consistency=0.75 model.scale_consistency_factors=[0.6,0.6,1.4] model.scale_consistency_prob=0.16 model.scale_consistency_share=0.5")
mkdir -p "$RUNS"
if [[ " $CELLS " == *" before "* ]] && [ ! -d "$RUNS/base" ]; then
  git -C "$REPO" worktree add --detach "$RUNS/base" "$BASE" > /dev/null
fi
args=()
for pair in $(seq 0 $((PAIRS - 1))); do
  for cell in $CELLS; do
    name="$cell$TAG-s$pair"
    [ -f "$RUNS/$name/metrics.json" ] && { args+=("$name=$RUNS/$name"); continue; }
    command="python scripts/train.py trainer.enable_progress_bar=false ${SWITCHES[$cell]}"
    if [ "$cell" = before ]; then
      (cd "$RUNS/base" && PYTHONPATH="$RUNS/base/src" $PY ${command#python } hydra.run.dir="$RUNS/$name" \
        > "$RUNS/$name.log" 2>&1)
      echo "$command  # at $BASE" > "$RUNS/$name.command.txt"
    else
      (cd "$REPO" && $PY ${command#python } hydra.run.dir="$RUNS/$name" > "$RUNS/$name.log" 2>&1)
      echo "$command" | sed 's/ *$//' > "$RUNS/$name.command.txt"
    fi
    rm -rf "$RUNS/$name/checkpoints"
    args+=("$name=$RUNS/$name")
  done
done
$PY "$HERE/collect.py" "$HERE/timing_shapes.csv" "${args[@]}"
[ ! -d "$RUNS/base" ] || git -C "$REPO" worktree remove --force "$RUNS/base"
