#!/usr/bin/env bash
# The transfer arm of the recipe study (issue #17): pre-train resnet18 on Fashion-MNIST classes 0-4,
# then train on classes 5-9 (300 images a class) from scratch and fine-tuned from that checkpoint,
# with the defaults, with experiment=small_data_finetune and (fine-tuned) with each switch alone
# (the preset's parts, the other augmentations, optimizers and schedules), 3 seeds each, two runs
# at a time (experiments/cells.sh). Then collect: results_transfer.csv beside this script.
# CELLS="scratch finetune ..." / SEEDS="0" run a subset; OUT=file.csv writes elsewhere, PRETRAINED=CKPT
# reuses a pre-trained checkpoint. The timing pass (seconds per epoch of each cell, one run at a time):
#   EXTRA="trainer.max_epochs=2 trainer.limit_val_batches=2 test_after_fit=false" JOBS=1 SEEDS=0 \
#     OUT=experiments/recipes/timing_transfer.csv PRETRAINED=/tmp/fm_transfer_runs/pretrain/checkpoints/last.ckpt \
#     bash experiments/recipes/run_transfer.sh /tmp/fm_transfer /tmp/fm_timing
#
#   python experiments/recipes/make_transfer_split.py /tmp/fm_transfer
#   bash experiments/recipes/run_transfer.sh /tmp/fm_transfer /tmp/fm_transfer_runs
set -euo pipefail
DATA=${1:-/tmp/fm_transfer}
RUNS=${2:-/tmp/fm_transfer_runs}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
source "$HERE/../cells.sh"
COMMON="resolution.size=48 data.batch_size=64 data.num_workers=1 trainer.enable_progress_bar=false logger=csv"
PRETRAINED=${PRETRAINED:-$RUNS/pretrain/checkpoints/last.ckpt}
mkdir -p "$RUNS"

if [ ! -f "$PRETRAINED" ]; then
  $PY "$REPO/scripts/train.py" data=imagefolder data.root="$DATA/pretrain" $COMMON trainer.max_epochs=5 \
    seed=0 hydra.run.dir="$RUNS/pretrain" > "$RUNS.pretrain.log" 2>&1
fi
[ -f "$PRETRAINED" ] || { echo "no pre-trained checkpoint at $PRETRAINED" >&2; exit 1; }

# cell name -> its switches (the preset's parts: configs/experiment/small_data_finetune.yaml)
declare -A SWITCHES=(
  [scratch]=""
  [finetune]="backbone.init_from=$PRETRAINED"
  # finetune_preset ran the preset as it was before this study (timm's full recipe, commit 6a3b1a3);
  # finetune_preset_v2 runs it as the study set it (EMA + drop path)
  [finetune_preset]="backbone.init_from=$PRETRAINED experiment=small_data_finetune"
  [finetune_preset_v2]="backbone.init_from=$PRETRAINED experiment=small_data_finetune"
  [finetune_trivial]="backbone.init_from=$PRETRAINED data.augment.auto=trivial"
  [finetune_erasing]="backbone.init_from=$PRETRAINED data.augment.random_erasing=0.25"
  [finetune_mix]="backbone.init_from=$PRETRAINED model.mixup=0.2 model.cutmix=1.0 model.mix_prob=0.5"
  [finetune_ema]="backbone.init_from=$PRETRAINED model.ema=true"
  [finetune_drop_path]="backbone.init_from=$PRETRAINED backbone.drop_path_rate=0.1"
  # the switches outside the preset, each alone at its config's defaults
  [finetune_color_jitter]="backbone.init_from=$PRETRAINED data.augment.color_jitter=0.4"
  [finetune_rand]="backbone.init_from=$PRETRAINED data.augment.auto=rand"
  [finetune_augmix]="backbone.init_from=$PRETRAINED data.augment.auto=augmix"
  [finetune_sgd]="backbone.init_from=$PRETRAINED optimizer=sgd"
  [finetune_lamb]="backbone.init_from=$PRETRAINED optimizer=lamb"
  [finetune_lion]="backbone.init_from=$PRETRAINED optimizer=lion"
  [finetune_step]="backbone.init_from=$PRETRAINED scheduler=step"
  [finetune_plateau]="backbone.init_from=$PRETRAINED scheduler=plateau"
  [finetune_constant]="backbone.init_from=$PRETRAINED scheduler=constant"
)
CELLS=${CELLS:-scratch finetune finetune_preset_v2 finetune_trivial finetune_erasing finetune_mix finetune_ema finetune_drop_path finetune_color_jitter finetune_rand finetune_augmix finetune_sgd finetune_lamb finetune_lion finetune_step finetune_plateau finetune_constant}
run_cells "data=imagefolder data.root=$DATA/target $COMMON trainer.max_epochs=10" "$CELLS" "${SEEDS:-0 1 2}"
collect_cells "${OUT:-$HERE/results_transfer.csv}"
