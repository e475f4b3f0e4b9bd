#!/usr/bin/env bash
# The variable-size study's defaults re-checked on a test split (issue 28, items 1-2): the study's
# folder (make_data.py, 200 train / 60 val a class, unchanged for the seed) plus 60 test images a
# class whose objects come from Fashion-MNIST's test set; resnet18 from scratch, 40 px, batch 64,
# 10 epochs, seeds 0-2, ONE run at a time with one compute thread and one loader worker. Each run's
# checkpoint is chosen on val (best val/acc) and scored once on test.
#   resflex cells: the study's command at today's defaults (keep_aspect, pyramid head, 3 warm-up
#     epochs, no flip) and one change each: avg, squash, warmup1, flip
#   peers: plain_loop.py at its own recipe (plain_own) and at resflex's as far as it goes
#     (plain_resflex: squash's jitter, warm-up 3 + cosine, smoothing 0.1); timm's train.py (run from
#     a timm checkout, never copied here) at its own defaults (timm_own: SGD lr 0.1 x 64/256,
#     wd 2e-5, crop 0.08-1, flip 0.5, colour jitter 0.4, 5 warm-up epochs, cosine, smoothing 0.1,
#     train.py validating at the model's crop_pct 0.95, validate.py at 1.0) and at resflex's (timm_resflex: crop 0.35-1, no flip, AdamW 2e-3, wd 0.05,
#     3 warm-up epochs, cosine, smoothing 0.1, crop_pct 1), its model_best scored by validate.py.
# Seed-major: every cell's seed 0, then seed 1, then seed 2. Collected after each run into
# results_test.csv beside this script (collect_test.py: commit, machine, finished, command per row);
# checkpoints deleted once collected.
#
#   python experiments/variable_size/make_data.py /tmp/vs_data_t --train-per-class 200 \
#       --val-per-class 60 --test-per-class 60
#   bash experiments/variable_size/test_run.sh /tmp/vs_data_t /tmp/timm_src [RUNS_DIR]
#   (CELLS="default avg" SEEDS="0" to run a part)
set -euo pipefail
DATA=${1:?usage: test_run.sh DATA_DIR TIMM_CHECKOUT [RUNS_DIR]}
TIMM=${2:?usage: test_run.sh DATA_DIR TIMM_CHECKOUT [RUNS_DIR]}
RUNS=${3:-/tmp/vs_test_runs}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's resflex
# the code every run of this script ran (result commits made meanwhile move HEAD, not the code)
export RESULTS_COMMIT=${RESULTS_COMMIT:-$(git -C "$REPO" rev-parse --short HEAD)}
OUT=${OUT:-$HERE/results_test.csv}

COMMON="data=imagefolder data.root=$DATA resolution.size=40 data.batch_size=64 trainer.max_epochs=10
 data.num_workers=1 trainer.enable_progress_bar=false eval.resolutions=[]"
declare -A SWITCHES=(
  [default]=""
  [avg]="pooling=avg"
  [squash]="resolution.geometry=squash"
  [warmup1]="scheduler.warmup_epochs=1"
  [flip]="data.augment.hflip=true"
)
TIMM_COMMON="--data-dir $DATA --train-split train --val-split val --model resnet18 --num-classes 10
 --img-size 40 --epochs 10 -b 64 --workers 1 --device cpu --checkpoint-hist 1 --log-interval 1000"
declare -A TIMM_SWITCHES=(
  [timm_own]=""
  [timm_resflex]="--crop-pct 1.0 --scale 0.35 1.0 --ratio 0.75 1.3333 --hflip 0 --color-jitter 0
 --opt adamw --lr 2e-3 --weight-decay 0.05 --sched cosine --min-lr 2e-5 --warmup-epochs 3 --smoothing 0.1"
)
declare -A PLAIN_RECIPE=([plain_own]=plain [plain_resflex]=resflex)

resflex_run() {  # CELL SEED
  local run="$RUNS/$1-s$2"
  [ -f "$run/metrics.json" ] && grep -q '"completed"' "$run/metrics.json" && return 0
  local command="python scripts/train.py $(echo $COMMON) seed=$2 ${SWITCHES[$1]} hydra.run.dir=$run"
  echo "$command" > "$RUNS/$1-s$2.command.txt"
  (cd "$REPO" && $PY ${command#python }) > "$RUNS/$1-s$2.log" 2>&1 || echo "$1-s$2 failed"
}

plain_run() {  # CELL SEED
  local run="$RUNS/$1-s$2"
  [ -f "$run/result.json" ] && return 0
  mkdir -p "$run"
  local command="python experiments/variable_size/plain_loop.py $DATA --size 40 --epochs 10 --batch-size 64
 --seed $2 --workers 1 --recipe ${PLAIN_RECIPE[$1]} --out $run/result.json"
  command=$(echo $command)
  echo "$command" > "$run/command.txt"
  (cd "$REPO" && $PY ${command#python }) > "$run/stdout.log" 2>&1 || echo "$1-s$2 failed"
}

timm_run() {  # CELL SEED: train.py, then validate.py on val and test with its best-on-val checkpoint
  local run="$RUNS/$1-s$2"
  [ -f "$run/run/.evaluated" ] && return 0
  local crop="--crop-pct 1.0"
  [ "$1" = timm_own ] && crop=""  # validate.py resolves the model's test crop_pct (1.0; train.py used 0.95)
  if [ ! -f "$run/run/model_best.pth.tar" ]; then
    rm -rf "$run"; mkdir -p "$run"
    local command="python train.py $(echo $TIMM_COMMON ${TIMM_SWITCHES[$1]}) --seed $2 --output $run --experiment run"
    echo "$command" > "$run/command.txt"
    local start=$(date +%s)
    (cd "$TIMM" && $PY ${command#python }) > "$run/train.log" 2>&1 || { echo "$1-s$2 failed"; return 0; }
    echo $(( $(date +%s) - start )) > "$run/wall_s.txt"
  fi
  for split in val test; do
    (cd "$TIMM" && $PY validate.py --data-dir "$DATA" --split "$split" --model resnet18 --num-classes 10 \
      --checkpoint "$run/run/model_best.pth.tar" --img-size 40 $crop -b 100 --workers 1 --device cpu \
      --results-file "$run/eval_${split}_40.csv") > "$run/eval_${split}_40.log" 2>&1 || echo "$run eval $split failed"
  done
  touch "$run/run/.evaluated"
}

mkdir -p "$RUNS"
for seed in ${SEEDS-0 1 2}; do
  for cell in ${CELLS:-default avg squash warmup1 flip plain_own plain_resflex timm_own timm_resflex}; do
    case $cell in
      plain_*) plain_run "$cell" "$seed" ;;
      timm_*) timm_run "$cell" "$seed" ;;
      *) resflex_run "$cell" "$seed" ;;
    esac
    $PY "$HERE/collect_test.py" "$OUT" "$RUNS" "$TIMM"
    rm -rf "$RUNS/$cell-s$seed/checkpoints" "$RUNS/$cell-s$seed"/run/*.pth.tar  # collected: the numbers stay
  done
done
