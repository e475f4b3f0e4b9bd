#!/usr/bin/env bash
# Pooling x resolution on Fashion-MNIST at the 2-core CPU's scale (see README.md, "CPU"): resnet18
# from scratch, 5,000 training images, 6 epochs; (a) trained at 64 px, (b) random sizes {32, 48, 64,
# 96} per batch; each head (avg, max, pyramid), seeds 0-2 (seed-major), tested at 32-128 px.
# Results: results_cpu.csv beside this script. CELLS="avg_fixed64" / SEEDS="0" run a subset; SEEDS=
# (empty) only collects.
#
#   bash experiments/pooling_resolution/cpu_run.sh [RUNS_DIR] [DATA_ROOT]
set -euo pipefail
RUNS=${1:-/tmp/pooling_resolution_runs}
ROOT=${2:-/usr/share/datasets/fashion-mnist}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
source "$HERE/../cells.sh"
COMMON="$(fashion_mnist_cpu "$ROOT") eval.resolutions=[32,48,64,96,128] logger=csv"

declare -A SWITCHES=(
  [avg_fixed64]="pooling=avg resolution.size=64"
  [max_fixed64]="pooling=max resolution.size=64"
  [pyramid_fixed64]="pooling=pyramid resolution.size=64"
  [avg_random]="pooling=avg resolution=random resolution.sizes=[32,48,64,96] resolution.eval_size=64"
  [max_random]="pooling=max resolution=random resolution.sizes=[32,48,64,96] resolution.eval_size=64"
  [pyramid_random]="pooling=pyramid resolution=random resolution.sizes=[32,48,64,96] resolution.eval_size=64"
)
CELLS=${CELLS:-avg_fixed64 max_fixed64 pyramid_fixed64 avg_random max_random pyramid_random}
run_cells "$COMMON" "$CELLS" "${SEEDS-0 1 2}"
collect_cells "$HERE/results_cpu.csv"
