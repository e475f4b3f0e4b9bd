#!/usr/bin/env bash
# The synthetic-shapes arm of the recipe study (issue #17): resflex's embedded data (shapes of
# varied image size and aspect, no files), 150 training images a class, resnet18 from scratch at
# 48 px (keep_aspect, chosen by geometry=auto), 6 epochs; the defaults, the preset and each switch
# alone, seeds 0-2 (seed-major, so a cut-short run leaves whole seeds). Results: results_shapes.csv
# beside this script. CELLS="defaults preset" / SEEDS="0" run a subset.
#
#   bash experiments/recipes/run_shapes.sh /tmp/shapes_runs
set -euo pipefail
RUNS=${1:-/tmp/shapes_runs}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
source "$HERE/../cells.sh"
# eval.resolutions=null: validation at the training size only (the extra sizes would double its cost)
COMMON="data.source.num_train=1500 data.source.num_val=500 data.source.num_test=1000 resolution.size=48 \
data.batch_size=64 data.num_workers=1 trainer.max_epochs=6 eval.resolutions=null \
trainer.enable_progress_bar=false logger=csv"

declare -A SWITCHES=(
  [defaults]=""
  [preset]="experiment=small_data_finetune"
  [ema]="model.ema=true"
  [drop_path]="backbone.drop_path_rate=0.1"
  [mix]="model.mixup=0.2 model.cutmix=1.0 model.mix_prob=0.5"
  [erasing]="data.augment.random_erasing=0.25"
  [trivial]="data.augment.auto=trivial"
  [rand]="data.augment.auto=rand"
  [augmix]="data.augment.auto=augmix"
  [color_jitter]="data.augment.color_jitter=0.4"
  [sgd]="optimizer=sgd"
  [lamb]="optimizer=lamb"
  [lion]="optimizer=lion"
  [step]="scheduler=step"
  [plateau]="scheduler=plateau"
  [constant]="scheduler=constant"
)
CELLS=${CELLS:-defaults preset ema drop_path mix erasing trivial rand augmix color_jitter sgd lamb lion step plateau constant}
run_cells "$COMMON" "$CELLS" "${SEEDS:-0 1 2}"
collect_cells "$HERE/results_shapes.csv"
