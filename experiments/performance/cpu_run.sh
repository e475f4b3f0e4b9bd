#!/usr/bin/env bash
# Every CPU figure of experiments/performance/README.md, in one go, on a quiet machine (~30 min on
# the 2-core dev CPU). Run from the repository root after `make install`. Writes the JSON/text
# files next to this script; the cross-check folders go to $TMPDIR.
set -euo pipefail
here=experiments/performance
py=.venv/bin/python
tmp=${TMPDIR:-/tmp}/resflex-crosscheck
stamp() { echo "== $* — $(date -u +%H:%M:%S) UTC, $(uptime | sed 's/.*load/load/')"; }

# ONLY=crosscheck runs that section alone
only=${ONLY:-all}

# 1-4: every figure at the CPU defaults (resnet18, 64 px, batch 32)
if [ "$only" = all ]; then
stamp table | tee $here/cpu_resnet18.txt
$py scripts/benchmark.py --json $here/cpu_resnet18.json | tee -a $here/cpu_resnet18.txt
fi

# independent cross-check: plain PyTorch + timm loop vs resflex's TensorBoard train/images_per_sec,
# same JPEG folder, model, size, batch, workers and framing (square random-resized crops, as the plain
# loop's RandomResizedCrop; resflex's auto would pick keep_aspect for these 4:3 files, more pixels);
# small files (64-128 px) and photo-sized (250-500 px)
# PAIRS (default 3) alternating plain/resflex pairs per folder: one pair's ratio moves by +-30 % on this VM
if [ "$only" = all ] || [ "$only" = crosscheck ]; then
for side in 64 250; do
  rm -rf "$tmp-$side" "$tmp-$side-run"
  : > $here/crosscheck_$side.txt
  for pair in $(seq 1 "${PAIRS:-3}"); do
    write=""
    [ "$pair" = 1 ] && write="--write 3200 --write-side $side"
    stamp "pair $pair: plain loop, files ${side}-$((2 * side)) px" | tee -a $here/crosscheck_$side.txt
    $py $here/plain_loop.py --root "$tmp-$side" $write --size 64 --batch-size 32 \
        --workers 2 --epochs 3 --json $here/crosscheck_${side}_plain_$pair.json | tee -a $here/crosscheck_$side.txt
    rm -rf "$tmp-$side-run"
    stamp "pair $pair: resflex, same folder" | tee -a $here/crosscheck_$side.txt
    $py scripts/train.py data=imagefolder data.root="$tmp-$side" backbone=resnet18 resolution.size=64 \
        resolution.geometry=square data.batch_size=32 data.num_workers=2 trainer.max_epochs=3 \
        trainer.enable_progress_bar=false test_after_fit=false hydra.run.dir="$tmp-$side-run" 2>&1 \
        | tail -3 | tee -a $here/crosscheck_$side.txt
    $py $here/tb_rate.py "$tmp-$side-run" | tee -a $here/crosscheck_$side.txt
  done
done
fi
[ "$only" = all ] || exit 0

# 5: time-to-accuracy, default progressive schedule (48 -> 64) and one with batch scaling, third seed
stamp study seed 2 | tee $here/cpu_study16_seed2.txt
$py scripts/benchmark.py --backbone resnet18 --size 64 --batch-size 32 --sections '' --study --seed 2 \
    --study-progressive start_size=48 --study-progressive start_size=48,batch_scaling=true \
    --json $here/cpu_study16_seed2.json | tee -a $here/cpu_study16_seed2.txt
stamp done
