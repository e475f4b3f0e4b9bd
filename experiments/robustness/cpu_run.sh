#!/usr/bin/env bash
# Size robustness on the embedded shapes at the default run's budget (resnet18 from scratch, 64 px,
# 6 epochs, keep_aspect, pyramid head: `python scripts/train.py` as `make train` runs it), evaluated
# at 32/48/64/96/128 px (1/2x-2x), seeds 0-2 (seed-major), two runs at a time, one compute thread
# and one loader worker each (the 2-core CPU). Every cell calibrates BatchNorm per evaluation size
# after fit (eval.bn_calibration=true, the default); fixed_nocal is the former default without it.
# Choices are made on val with the calibrated statistics (val_calibrated.sh; table.py --split val_cal),
# reported on test (table.py). Results: results_shapes.csv
# beside this script (one row per run, with commit, machine and command).
#
#   bash experiments/robustness/cpu_run.sh [RUNS_DIR]      # CELLS="fixed ms50" SEEDS="0" for a subset
set -euo pipefail
RUNS=${1:-/tmp/robustness_runs}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
source "$HERE/../cells.sh"
export KEEP_CHECKPOINTS=1  # val_calibrated.sh evaluates each best checkpoint, then they are deleted
COMMON="trainer.enable_progress_bar=false data.num_workers=1"

# every cell but sc_budget and sc_up_budget sets model.scale_consistency=0, the default when they ran
# (the term became the default after this study; each of the two spells its term out)
OFF="model.scale_consistency=0"
declare -A SWITCHES=(
  [fixed_nocal]="resolution=fixed eval.bn_calibration=false $OFF"
  [fixed]="resolution=fixed $OFF"
  [ms50]="resolution=multiscale resolution.probs=[0.1,0.15,0.5,0.15,0.1] $OFF"
  [ms60]="resolution=multiscale resolution.probs=[0.1,0.1,0.6,0.1,0.1] $OFF"
  # the 32 px specialist (trained at 32 px alone): the ceiling any one set of weights has at 32 px
  [fixed32]="resolution=fixed resolution.size=32 eval.resolutions=[32,48,64,96,128] $OFF"
  # the scale-consistency term on a quarter of the steps (a 0.6x view; +9 % of the pixels; the default
  # before sc_up_budget)
  [sc_budget]="resolution=fixed model.scale_consistency=1.0 model.scale_consistency_factors=[0.6] model.scale_consistency_prob=0.25"
  # a 0.6x or a 1.4x view on an eighth of the steps (+15 % of the pixels) at full weight: the default until weight_rule.py chose 0.75
  [sc_up_budget]="resolution=fixed model.scale_consistency=1.0 model.scale_consistency_factors=[0.6,1.4] model.scale_consistency_prob=0.125"
  # the same at half weight (an exploration: the shapes folder's 40 px cost)
  [sc_up_half]="resolution=fixed model.scale_consistency=0.5 model.scale_consistency_factors=[0.6,1.4] model.scale_consistency_prob=0.125"
  # the same views at three-quarter weight: today's default, spelled out (chosen by weight_rule.py)
  [sc_up_075]="resolution=fixed model.scale_consistency=0.75 model.scale_consistency_factors=[0.6,1.4] model.scale_consistency_prob=0.125"
  # the term's weight over the run (an exploration: the shapes folder's 40 px cost): ramped up from 0
  # over the first half of the steps, or off for the last 30 % (a last phase at the trained size alone)
  [sc_rampup]="resolution=fixed model.scale_consistency=1.0 model.scale_consistency_factors=[0.6,1.4] model.scale_consistency_prob=0.125 model.scale_consistency_rampup=0.5"
  [sc_stop]="resolution=fixed model.scale_consistency=1.0 model.scale_consistency_factors=[0.6,1.4] model.scale_consistency_prob=0.125 model.scale_consistency_stop=0.7"
  # an exploration for make train's 96 px: the larger view at 1.5x (96 px) instead of 1.4x (88 px)
  [sc15_budget]="resolution=fixed model.scale_consistency=1.0 model.scale_consistency_factors=[0.6,1.5] model.scale_consistency_prob=0.125"
  # explorations for make train's 96 px, the dose of the larger view (beyond the 1.1x wall budget, so
  # not default candidates): today's default views on a quarter of the steps (+29 % of the pixels), and
  # the 1.4x view alone on an eighth of the steps (twice the default's 1.4x steps, +25 % of the pixels)
  [sc_up_075_p25]="resolution=fixed model.scale_consistency=0.75 model.scale_consistency_factors=[0.6,1.4] model.scale_consistency_prob=0.25"
  # the default's budget spent on the 0.6x view twice as often as the 1.4x one (folder_run.sh's cell)
  [sc_small2_075]="resolution=fixed model.scale_consistency=0.75 model.scale_consistency_factors=[0.6,0.6,1.4] model.scale_consistency_prob=0.16"
  # an exploration for the wall-time margin: the default (sc_small2_075) with each view capped at the
  # main batch's pixels (the 1.4x view on about half the batch: about +9 % of the pixels, not +14 %)
  [sc_small2_cap]="resolution=fixed model.scale_consistency=0.75 model.scale_consistency_factors=[0.6,0.6,1.4] model.scale_consistency_prob=0.16 model.scale_consistency_max_pixels=1.0"
  # an exploration for the wall-time margin: the default with each view on half the batch (its first
  # images: the views' compute halved, about +7 % of the pixels)
  [sc_small2_half]="resolution=fixed model.scale_consistency=0.75 model.scale_consistency_factors=[0.6,0.6,1.4] model.scale_consistency_prob=0.16 model.scale_consistency_share=0.5"
  [sc_big_075]="resolution=fixed model.scale_consistency=0.75 model.scale_consistency_factors=[1.4] model.scale_consistency_prob=0.125"
)
CELLS=${CELLS:-fixed ms50 ms60 fixed_nocal}
run_cells "$COMMON" "$CELLS" "${SEEDS-0 1 2}"
bash "$HERE/val_calibrated.sh" "$RUNS"
rm -rf "$RUNS"/*/checkpoints
collect_runs "$HERE/collect.py" "$HERE/results_shapes.csv"
