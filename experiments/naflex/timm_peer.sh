#!/usr/bin/env bash
# The peer of cpu_run.sh: timm's own train.py --naflex-loader (run from a checkout of the timm
# repository, never copied here) on the same folder, the same model (naflexvit_base_patch16_gap at
# patch 8, width 192, 4 blocks, 3 heads; timm's own head: its masked average pool, fc_norm and a
# linear classifier, where resflex's run has its pyramid head), 5 epochs, the same token budget
# (-b 64 x the longest of 48/64/96 tokens = 6,144 tokens a step, linear loss scaling), validation
# at 64 tokens (what model_best is chosen on), resflex's recipe where timm has it (AdamW 2e-3 wd
# 0.05, 3 warm-up epochs then a cosine per step to 2e-5 over the other 2, as resflex's WarmupCosine:
# --epochs 2 --warmup-epochs 3 --warmup-prefix, 5 epochs in all; smoothing 0.1, no flip, no colour
# jitter, the
# squash jitter as --scale 0.8 1 --ratio 0.9 1.111: timm's ratio is relative to the image's own
# aspect), one compute thread and one loader worker. Then its validate.py --naflex-loader on val and
# test at 36/49/64/100 tokens. Result: timm.csv beside this script (collect_timm.py). CELL=
# timm_naflex_noprefix: timm's own cosine shape instead (--epochs 5 without --warmup-prefix: the
# cosine spans the warm-up too, so the LR is 0.7e-3 at the end of epoch 3 where resflex's is 2e-3).
#
#   bash experiments/naflex/timm_peer.sh /tmp/naflex_study/digits /path/to/pytorch-image-models [RUNS_DIR]
set -euo pipefail
DATA=${1:?usage: timm_peer.sh DATA_DIR TIMM_CHECKOUT [RUNS_DIR]}
TIMM=${2:?usage: timm_peer.sh DATA_DIR TIMM_CHECKOUT [RUNS_DIR]}
RUNS=${3:-/tmp/naflex_study/timm_runs}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
SEQ_LENS="36 49 64 100"
MODEL="--model naflexvit_base_patch16_gap --model-kwargs patch_size=8 embed_dim=192 depth=4 num_heads=3
 --num-classes 10"
COMMON="--data-dir $DATA --train-split train --val-split val $MODEL --naflex-loader
 --naflex-train-seq-lens 48 64 96 --naflex-max-seq-len 64 --naflex-loss-scale linear -b 64
 --opt adamw --lr 2e-3 --weight-decay 0.05 --sched cosine --sched-on-updates --warmup-epochs 3
 --min-lr 2e-5 --smoothing 0.1 --scale 0.8 1.0 --ratio 0.9 1.111 --hflip 0
 --color-jitter 0 --workers 1 --device cpu --checkpoint-hist 1 --log-interval 1000"
declare -A SWITCHES=(
  [timm_naflex]="--warmup-prefix --epochs 2"
  [timm_naflex_noprefix]="--epochs 5"
  # at the naflex_b32 cell's budget: 32 images at the longest length (argparse: the last -b wins)
  [timm_naflex_b32]="--warmup-prefix --epochs 2 -b 32"
)
mkdir -p "$RUNS"
for seed in ${SEEDS-0 1 2}; do
  cell=${CELL:-timm_naflex}
  sched="${SWITCHES[$cell]}"
  run="$RUNS/$cell-s$seed"
  [ -f "$run/run/.evaluated" ] && continue
  if [ ! -f "$run/run/model_best.pth.tar" ]; then
    rm -rf "$run"; mkdir -p "$run"
    command="python train.py $(echo $COMMON) $sched --seed $seed --output $run --experiment run"
    echo "$command" > "$run/command.txt"
    start=$(date +%s)
    (cd "$TIMM" && $PY ${command#python }) > "$run/train.log" 2>&1 || { echo "$cell-s$seed failed"; continue; }
    echo $(( $(date +%s) - start )) > "$run/wall_s.txt"
  fi
  for split in val test; do
    for seq_len in $SEQ_LENS; do
      out="$run/eval_${split}_$seq_len.csv"
      [ -f "$out" ] && continue
      (cd "$TIMM" && $PY validate.py --data-dir "$DATA" --split "$split" $(echo $MODEL) \
        --checkpoint "$run/run/model_best.pth.tar" --naflex-loader --naflex-max-seq-len "$seq_len" \
        -b 64 --workers 1 --device cpu --results-file "$out") > "$run/eval_${split}_$seq_len.log" 2>&1 \
        || echo "$run eval $split $seq_len failed"
    done
  done
  rm -f "$run"/run/*.pth.tar  # the evaluations are what the study keeps
  touch "$run/run/.evaluated"
done
$PY "$HERE/collect_timm.py" "$HERE/timm.csv" "$RUNS" "$TIMM"
