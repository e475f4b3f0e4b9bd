#!/usr/bin/env bash
# The peer of folder_run.sh: timm's own train.py (run from a checkout of the timm repository, never
# copied here) on the same folder, resnet18 from scratch, 40 px eval size, batch 64, 10 epochs, one
# compute thread and one loader worker, then its validate.py on val and test at 24-80 px (crop_pct 1:
# shorter side to the size, centre crop). Cells:
#   timm_fixed      resflex's recipe (crop 0.35-1, no flip, AdamW 2e-3 wd 0.05, 3 warm-up epochs,
#                   cosine, smoothing 0.1) at one size, 40 px
#   timm_sizes      the same with timm's per-batch sizes (--train-img-sizes 24 32 40 48 56 64)
#   timm_sizes_own  per-batch sizes at timm's own defaults for the rest (crop 0.08-1, flip 0.5,
#                   5 warm-up epochs, --train-size-schedule progressive, --variable-batch-loss-scale
#                   sqrt), AdamW 2e-3 wd 0.05
# Result: timm_folder.csv beside this script (collect_timm.py; commit, machine, command per row).
#
#   bash experiments/robustness/timm_peer.sh /tmp/vs400 /path/to/pytorch-image-models [RUNS_DIR]
#   OUT=experiments/robustness/timm_folder_easy.csv CELLS=timm_sizes bash ... /tmp/vs_easy ...  # the easier folder
#   OUT=experiments/robustness/timm_folder_shapes.csv CELLS="timm_sizes timm_fixed" bash ... /tmp/shp60 ...  # shapes
set -euo pipefail
DATA=${1:?usage: timm_peer.sh DATA_DIR TIMM_CHECKOUT [RUNS_DIR]}
TIMM=${2:?usage: timm_peer.sh DATA_DIR TIMM_CHECKOUT [RUNS_DIR]}
RUNS=${3:-/tmp/robustness_timm_runs}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
OUT=${OUT:-$HERE/timm_folder.csv}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
SIZES="24 32 40 48 56 64 80"
COMMON="--data-dir $DATA --train-split train --val-split val --model resnet18 --num-classes 10
 --img-size 40 --crop-pct 1.0 --opt adamw --lr 2e-3 --weight-decay 0.05 --sched cosine --min-lr 2e-5
 --smoothing 0.1 --epochs 10 -b 64 --workers 1 --device cpu --checkpoint-hist 1 --log-interval 1000
 --color-jitter 0"
declare -A SWITCHES=(
  [timm_fixed]="--scale 0.35 1.0 --ratio 0.75 1.3333 --hflip 0 --warmup-epochs 3"
  [timm_sizes]="--scale 0.35 1.0 --ratio 0.75 1.3333 --hflip 0 --warmup-epochs 3 --train-img-sizes 24 32 40 48 56 64"
  [timm_sizes_own]="--warmup-epochs 5 --train-img-sizes 24 32 40 48 56 64 --train-size-schedule progressive --variable-batch-loss-scale sqrt"
)
mkdir -p "$RUNS"
for seed in ${SEEDS-0 1 2}; do
  for cell in ${CELLS:-timm_sizes timm_fixed timm_sizes_own}; do
    run="$RUNS/$cell-s$seed"
    [ -f "$run/run/.evaluated" ] && continue
    if [ ! -f "$run/run/model_best.pth.tar" ]; then
      rm -rf "$run"; mkdir -p "$run"
      command="python train.py $(echo $COMMON) ${SWITCHES[$cell]} --seed $seed --output $run --experiment run"
      echo "$command" > "$run/command.txt"
      start=$(date +%s)
      (cd "$TIMM" && $PY ${command#python }) > "$run/train.log" 2>&1 || { echo "$cell-s$seed failed"; continue; }
      echo $(( $(date +%s) - start )) > "$run/wall_s.txt"
    fi
    for split in val test; do
      for size in $SIZES; do
        out="$run/eval_${split}_$size.csv"
        [ -f "$out" ] && continue
        (cd "$TIMM" && $PY validate.py --data-dir "$DATA" --split "$split" --model resnet18 --num-classes 10 \
          --checkpoint "$run/run/model_best.pth.tar" --img-size "$size" --crop-pct 1.0 -b 100 --workers 1 \
          --device cpu --results-file "$out") > "$run/eval_${split}_$size.log" 2>&1 || echo "$run eval $split $size failed"
      done
    done
    rm -f "$run"/run/*.pth.tar  # ~90 MB a run; the evaluations are what the study keeps
    touch "$run/run/.evaluated"
  done
done
$PY "$HERE/collect_timm.py" "$OUT" "$RUNS" "$TIMM"
