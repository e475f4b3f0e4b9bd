# Shared by the CPU studies' run scripts (recipes/, pooling_resolution/, schedules/; sourced, not
# run): run a list of cells x seeds two at a time, one compute thread each (a 2-core machine),
# skipping finished runs, then collect one CSV row per run. The caller sets PY, REPO, RUNS and
# declares the associative array SWITCHES (cell -> its overrides), then calls:
#   run_cells "COMMON OVERRIDES" "CELLS" "SEEDS";  collect_cells OUT.csv
# (collect_runs COLLECTOR OUT.csv: the same with a study's own collector, runs named CELL-sSEED)
# EXTRA="key=value ..." is appended to every run's overrides (last wins: the timing pass's shorter
# runs); JOBS=1 runs one at a time.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

fashion_mnist_cpu() {  # DATA_ROOT: the Fashion-MNIST studies' common overrides (pooling_resolution/, schedules/)
  # resnet18 from scratch, 5,000 train / 1,000 val / 2,000 test images, batch 64, one data worker, 6 epochs
  echo "data=fashion_mnist data.root=$1 trainer=cpu backbone=resnet18 data.source.num_train=5000" \
    "data.source.num_val=1000 data.source.num_test=2000 data.batch_size=64 data.num_workers=1" \
    "trainer.max_epochs=6 trainer.enable_progress_bar=false"
}

run_one() {
  name=$1; shift
  [ -f "$RUNS/$name/metrics.json" ] && grep -q '"completed"' "$RUNS/$name/metrics.json" && return 0
  pgrep -f "hydra.run.dir=$RUNS/$name\$" > /dev/null && return 0  # running already (a restarted script)
  echo "python scripts/train.py $* hydra.run.dir=$RUNS/$name" > "$RUNS/$name.command.txt"
  $PY "$REPO/scripts/train.py" "$@" hydra.run.dir="$RUNS/$name" > "$RUNS/$name.log" 2>&1 || echo "$name failed"
  # ~260 MB of checkpoints a run; the metrics are what the study keeps (KEEP_CHECKPOINTS=1 keeps them)
  [ -n "${KEEP_CHECKPOINTS:-}" ] || rm -rf "$RUNS/$name/checkpoints"
}

run_cells() {  # COMMON CELLS SEEDS
  local common=$1 cells=$2 seeds=$3 jobs_file
  mkdir -p "$RUNS"
  jobs_file=$(mktemp)
  for seed in $seeds; do  # seed-major: every cell gets its first seed before any gets its third
    for cell in $cells; do
      # no trailing blank: xargs -L would join the next line to this one
      echo "$cell-s$seed $common seed=$seed ${SWITCHES[$cell]} ${EXTRA:-}" | sed 's/ *$//' >> "$jobs_file"
    done
  done
  export -f run_one
  export PY REPO RUNS
  xargs -P "${JOBS:-2}" -L 1 bash -c 'run_one "$@"' _ < "$jobs_file"
  rm -f "$jobs_file"
}

collect_cells() {  # OUT.csv: every finished run of every declared cell
  local args=() cell seed
  for cell in "${!SWITCHES[@]}"; do
    for seed in 0 1 2; do
      [ -f "$RUNS/$cell-s$seed/metrics.json" ] && args+=("$cell=$RUNS/$cell-s$seed")
    done
  done
  $PY "$REPO/experiments/variable_size/collect_extra.py" "$1" "${args[@]}"
}

collect_runs() {  # COLLECTOR OUT.csv: runs COLLECTOR OUT.csv CELL-sSEED=RUN_DIR ... over every finished run
  local args=() cell run
  for cell in "${!SWITCHES[@]}"; do
    for run in "$RUNS/$cell"-s[0-9]*; do  # every seed run, not only 0-2
      [[ "$run" =~ -s[0-9]+$ && -f "$run/metrics.json" ]] && args+=("$(basename "$run")=$run")
    done
  done
  $PY "$1" "$2" "${args[@]}"
}
