#!/usr/bin/env bash
# Host memory on CPU runs (resflex.runtime.retain_freed_host_memory): the same one-epoch Fashion-MNIST
# run with glibc's default ("system": MALLOC_TRIM_THRESHOLD_ set, so resflex leaves malloc alone) and
# with freed memory retained ("retain", what a CPU run does by default), alternating, PAIRS times.
# Appends one line per run (wall/user/system seconds, peak RSS, page faults; test/acc; whether the
# run logged that it retained) to OUT.
#
#   bash experiments/performance/host_memory_ab.sh [OUT] [PAIRS]
set -uo pipefail
OUT=${1:-experiments/performance/host_memory_cpu.txt}
PAIRS=${2:-1}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1
ARGS="data=fashion_mnist backbone=resnet18 pooling=pyramid resolution.size=64 data.source.num_train=5000 \
data.source.num_test=2000 data.source.num_val=1000 eval.resolutions=[32,48,64,96,128] trainer.max_epochs=1 \
trainer=cpu data.batch_size=64 data.num_workers=1 trainer.enable_progress_bar=false logger=csv"
RUNS=$(mktemp -d)
echo "# $(date -u +%FT%TZ) $(uptime)" >> "$OUT"
for _ in $(seq "$PAIRS"); do
  for mode in system retain; do
    if [ $mode = system ]; then export MALLOC_TRIM_THRESHOLD_=131072; else unset MALLOC_TRIM_THRESHOLD_; fi
    /usr/bin/time -o "$RUNS/time" -f "$mode wall_s %e user_s %U sys_s %S maxrss_kb %M minor_faults %R" \
      $PY scripts/train.py $ARGS hydra.run.dir="$RUNS/$mode" > "$RUNS/$mode.log" 2>&1
    echo "$(tail -1 "$RUNS/time") $(grep -o "'test/acc': [0-9.]*" "$RUNS/$mode.log" | tr -d "'") \
retained_logged $(grep -c "glibc mallopt" "$RUNS/$mode.log")" >> "$OUT"
    rm -rf "${RUNS:?}/$mode"
  done
done
rm -rf "$RUNS"
