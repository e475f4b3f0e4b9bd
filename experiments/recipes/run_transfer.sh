#!/usr/bin/env bash
# The transfer arm of the recipe study (issue #17): pre-train resnet18 on Fashion-MNIST classes 0-4,
# then train on classes 5-9 (300 images a class) from scratch and fine-tuned from that checkpoint,
# with the defaults, with experiment=small_data_finetune and (fine-tuned) with each of the preset's
# switches alone, 3 seeds each. Two runs at a time, one compute thread each (a 2-core machine). Then
# collect: results_transfer.csv beside this script. CELLS="scratch finetune ..." / SEEDS="0" run a subset.
#
#   python experiments/recipes/make_transfer_split.py /tmp/fm_transfer
#   bash experiments/recipes/run_transfer.sh /tmp/fm_transfer /tmp/fm_transfer_runs
set -euo pipefail
DATA=${1:-/tmp/fm_transfer}
RUNS=${2:-/tmp/fm_transfer_runs}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
COMMON="resolution.size=48 data.batch_size=64 data.num_workers=1 trainer.enable_progress_bar=false logger=csv"
PRETRAINED=$RUNS/pretrain/checkpoints/last.ckpt
mkdir -p "$RUNS"

if [ ! -f "$RUNS/pretrain/metrics.json" ]; then
  $PY "$REPO/scripts/train.py" data=imagefolder data.root="$DATA/pretrain" $COMMON trainer.max_epochs=5 \
    seed=0 hydra.run.dir="$RUNS/pretrain" > "$RUNS.pretrain.log" 2>&1
fi

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
)
CELLS=${CELLS:-scratch finetune finetune_preset finetune_trivial finetune_erasing finetune_mix finetune_ema finetune_drop_path}
jobs_file=$(mktemp)
for seed in ${SEEDS:-0 1 2}; do  # seed-major: every cell gets its first seed before any gets its third
  for cell in $CELLS; do
    # no trailing blank: xargs -L would join the next line to this one
    echo "$cell-s$seed data=imagefolder data.root=$DATA/target $COMMON trainer.max_epochs=10 seed=$seed ${SWITCHES[$cell]}" \
      | sed 's/ *$//' >> "$jobs_file"
  done
done
run_one() {
  name=$1; shift
  [ -f "$RUNS/$name/metrics.json" ] && grep -q '"completed"' "$RUNS/$name/metrics.json" && return 0
  pgrep -f "hydra.run.dir=$RUNS/$name\$" > /dev/null && return 0  # running already (a restarted script)
  echo "python scripts/train.py $* hydra.run.dir=$RUNS/$name" > "$RUNS/$name.command.txt"
  $PY "$REPO/scripts/train.py" "$@" hydra.run.dir="$RUNS/$name" > "$RUNS/$name.log" 2>&1 || echo "$name failed"
}
export -f run_one
export PY REPO RUNS
xargs -P 2 -L 1 bash -c 'run_one "$@"' _ < "$jobs_file"
rm -f "$jobs_file"

args=()
for cell in ${!SWITCHES[@]}; do
  for seed in 0 1 2; do
    [ -f "$RUNS/$cell-s$seed/metrics.json" ] && args+=("$cell=$RUNS/$cell-s$seed")
  done
done
$PY "$REPO/experiments/variable_size/collect_extra.py" "$HERE/results_transfer.csv" "${args[@]}"
