#!/usr/bin/env bash
# Issue 30's study: NaFlex token batches against the same small ViT on image batches, on the
# variable-aspect digits folder (experiments/naflex/make_digits.py: 400 train / 100 val / 100 test a
# class, grey colours), 5 epochs from scratch, one run at a time with one compute thread and one
# loader worker (JOBS=1: the 2-core machine runs other work beside it), seeds 0-2 seed-major.
# Chosen on val (the best checkpoint by val/acc, validated after fit at every length), reported on test.
# Cells (same architecture: patch 8, width 192, 4 blocks, 3 heads, 4 register tokens, learned
# 16x16 position table resampled per grid, no final norm, resflex's pyramid head):
#   naflex   backbone=naflexvit resolution=naflex, the default command as it was (the first grid): a
#            sequence length per step from 48/64/96 tokens, 6,144 tokens a step (64 images at 96:
#            resolution.tokens_per_batch=null, data.batch_size=64), evaluated at 36/49/64/100
#   buckets  timm's vit_base_patch16_224 at the naflexvit config with dynamic_img_size (the generic
#            backbone group), keep_aspect buckets at 64 px by area (about 64 tokens an image),
#            batch 96 (6,144 tokens a step), evaluated at 48/56/64/80 px (36/49/64/100 tokens a
#            square image)
#   square   the same ViT on square crops (random-resized crop, centre crop in evaluation), 64 px
#   naflex_avg  the naflex cell with pooling=avg (run with CELLS=naflex_avg)
#   naflex_b32  the naflex cell at half the token budget, 3,072 (32 images at 96; CELLS=naflex_b32):
#            the default command since it won on val (resolution.tokens_per_batch=3072)
#   buckets_b48, square_b48, and timm_peer.sh's timm_naflex_b32: the second grid, at 3,072 a step
# Result: results.csv beside this script (collect.py; commit, machine, finished, command per row).
#
#   python experiments/naflex/make_digits.py /tmp/naflex_study/digits --test-per-class 100
#   bash experiments/naflex/cpu_run.sh /tmp/naflex_study/digits [RUNS_DIR]   # CELLS="naflex" SEEDS="0"
set -euo pipefail
DATA=${1:?usage: cpu_run.sh DATA_DIR [RUNS_DIR]}
RUNS=${2:-/tmp/naflex_study/runs}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
export JOBS=${JOBS:-1}
source "$HERE/../cells.sh"
COMMON="data=imagefolder data.root=$DATA trainer.max_epochs=5 data.num_workers=1
 trainer.enable_progress_bar=false"
COMMON=$(echo $COMMON)
# the naflexvit backbone's architecture as a plain timm ViT taking image batches of any h x w
# (1.87 M parameters, as naflexvit's; the group's dynamic_img_size/dynamic_img_pad kept)
VIT="backbone=vit_small_patch16 backbone.name=vit_base_patch16_224"
for kv in img_size=128 patch_size=8 embed_dim=192 depth=4 num_heads=3 init_values=1e-5 global_pool=avg \
  fc_norm=true reg_tokens=4 class_token=false no_embed_class=true; do
  VIT="$VIT ++backbone.model_kwargs.$kv"
done
VIT="$VIT resolution.size=64 data.batch_size=96 eval.resolutions=[48,56,64,80]"

declare -A SWITCHES=(
  [naflex]="backbone=naflexvit resolution=naflex eval.seq_lens=[36,49,64,100] resolution.tokens_per_batch=null"
  # the same with an average-pool head, as timm's NaFlexVit has: separates the head from the data path
  [naflex_avg]="backbone=naflexvit resolution=naflex eval.seq_lens=[36,49,64,100] resolution.tokens_per_batch=null pooling=avg"
  # half the token budget (3,072 slots, 32 images at 96 tokens): twice the steps for the same epochs
  [naflex_b32]="backbone=naflexvit resolution=naflex eval.seq_lens=[36,49,64,100] data.batch_size=32"
  [buckets]="$VIT resolution.geometry=keep_aspect resolution.bucket_size=area"
  [square]="$VIT resolution.geometry=square"
  # the same two at the naflex_b32 cell's 3,072 token slots a step (48 images of about 64 tokens)
  [buckets_b48]="${VIT/data.batch_size=96/data.batch_size=48} resolution.geometry=keep_aspect resolution.bucket_size=area"
  [square_b48]="${VIT/data.batch_size=96/data.batch_size=48} resolution.geometry=square"
)
CELLS=${CELLS:-naflex buckets square}
run_cells "$COMMON" "$CELLS" "${SEEDS-0 1 2}"
collect_runs "$HERE/collect.py" "$HERE/results.csv"
