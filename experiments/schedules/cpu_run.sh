#!/usr/bin/env bash
# Resolution schedules on Fashion-MNIST at the 2-core CPU's scale (see README.md, "CPU"): resnet18
# from scratch, 5,000 training images, 6 epochs, each schedule's config defaults (fixed 64 px;
# progressive 48 -> 64; random {32, 48, 64} per batch; multigrid around 64; fixres 48 then the last
# epoch at 64), validated and tested at 64 px (+ 32, 48, 96), seeds 0-2 (seed-major). TensorBoard
# events (for time_to_acc.py) and a CSV log per run. Results: results_cpu.csv and time_to_acc_cpu.csv
# beside this script. CELLS="fixed random" / SEEDS="0" run a subset; SEEDS= (empty) only collects.
#
#   bash experiments/schedules/cpu_run.sh [RUNS_DIR] [DATA_ROOT]
set -euo pipefail
RUNS=${1:-/tmp/schedules_runs}
ROOT=${2:-/usr/share/datasets/fashion-mnist}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
source "$HERE/../cells.sh"
COMMON="$(fashion_mnist_cpu "$ROOT") resolution.eval_size=64 eval.resolutions=[32,48,64,96] logger=[tensorboard,csv]"

declare -A SWITCHES=(
  [fixed]="resolution=fixed resolution.size=64"
  [progressive]="resolution=progressive"
  [random]="resolution=random"
  [multigrid]="resolution=multigrid"
  [fixres]="resolution=fixres"
)
CELLS=${CELLS:-fixed progressive random multigrid fixres}
run_cells "$COMMON" "$CELLS" "${SEEDS-0 1 2}"
collect_cells "$HERE/results_cpu.csv"
$PY "$HERE/time_to_acc.py" "$RUNS" --thresholds 0.75 0.80 0.85 --csv "$HERE/time_to_acc_cpu.csv"
