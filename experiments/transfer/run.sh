#!/usr/bin/env bash
# Transfer learning on CPU in ~15 minutes: pre-train resnet18 on 6 Fashion-MNIST classes, then fine-tune
# on the 4 *other* classes with 20 images per class, comparing scratch / linear probe on a random
# backbone / linear probe / full / gradual, at two fine-tune resolutions. Then evaluate one fine-tuned
# checkpoint at several sizes with scripts/eval.py.
#
#   bash experiments/transfer/run.sh [OUT]      (default OUT: logs/transfer)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-logs/transfer}
DATA=$OUT/data
PT_SIZE=${PT_SIZE:-32}
FT_SIZES=${FT_SIZES:-"32 48"}
FT_EPOCHS=${FT_EPOCHS:-10}
PT_EPOCHS=${PT_EPOCHS:-4}
COMMON=(
  backbone=resnet18 data=imagefolder data.num_workers=1 trainer=cpu trainer.enable_progress_bar=false
  trainer.num_sanity_val_steps=0 test_after_fit=false
)
start=$(date +%s)

# Fashion-MNIST: pre-train on 6 classes (150 images each), fine-tune on the other 4 (20 images each)
[ -d "$DATA/finetune" ] || $PY experiments/transfer/make_folders.py "$DATA" --dataset "${DATASET:-fashion_mnist}"

# 1. pre-train on the source classes ($PT_SIZE px)
if [ ! -f "$OUT/pretrain/metrics.json" ]; then
  $PY scripts/train.py "${COMMON[@]}" data.root="$DATA/pretrain" resolution.size="$PT_SIZE" \
    data.batch_size=32 trainer.max_epochs="$PT_EPOCHS" optimizer.lr=0.002 hydra.run.dir="$OUT/pretrain"
fi
CKPT=$OUT/pretrain/checkpoints/last.ckpt

# 2. fine-tune on the target classes: 20 images per class, 5 steps per epoch
FT=(data.root="$DATA/finetune" data.batch_size=16 trainer.max_epochs="$FT_EPOCHS" trainer.check_val_every_n_epoch=5
    optimizer.lr=0.003 trainer.log_every_n_steps=5)
for size in $FT_SIZES; do
  run() {  # name, overrides...
    local name=$1; shift
    [ -f "$OUT/ft$size/$name/metrics.json" ] && return
    $PY scripts/train.py "${COMMON[@]}" "${FT[@]}" resolution.size="$size" hydra.run.dir="$OUT/ft$size/$name" "$@"
  }
  run scratch finetune=full
  # probes: only a linear layer trains, so a higher LR (the same for both probes)
  run probe_random finetune=linear_probe optimizer.lr=0.01
  run probe finetune=linear_probe optimizer.lr=0.01 backbone.init_from="$CKPT"
  run full finetune=full finetune.backbone_lr_mult=0.1 backbone.init_from="$CKPT"
  run gradual finetune=gradual finetune.unfreeze_at_epochs=[3,6] finetune.backbone_lr_mult=0.1 \
    backbone.init_from="$CKPT"
done

# 3. one fine-tuned checkpoint at several sizes (its own run folder: $OUT/eval)
first=${FT_SIZES%% *}
$PY scripts/eval.py ckpt_path="$OUT/ft$first/full/checkpoints/last.ckpt" eval.resolutions=[24,32,48,64] \
  hydra.run.dir="$OUT/eval"

$PY experiments/transfer/table.py "$OUT"
echo "wall time: $(( $(date +%s) - start )) s"
