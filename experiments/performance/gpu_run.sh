#!/usr/bin/env bash
# One-shot GPU benchmark for a lent H100 (about 8 minutes), run from the repository root:
#   bash experiments/performance/gpu_run.sh
# Writes <name>.json (every figure + machine) and <name>.txt (the table) into "$OUT"
# (the device tool's output folder; default experiments/performance/gpu/ when run by hand).
# Needs torch, timm, pytorch_lightning, torchmetrics, tensorboard: no Hydra (resflex's benchmark
# does not import it) and no install (scripts/benchmark.py puts src/ on the path).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-experiments/performance/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONWARNINGS=ignore

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.txt"
"$PY" -c "import torch, timm, pytorch_lightning as pl; print('torch', torch.__version__, 'timm', timm.__version__, 'lightning', pl.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
nproc | tee -a "$OUT/versions.txt"
# simplejpeg (resflex[jpeg], what data.source.decoder=auto uses) is not in the GPU image: carry its
# wheel in .whl/ (pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl
# simplejpeg==1.9.0) and install it before this script (pip install --no-index --no-deps --target
# /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site); without it the loader figure has no simplejpeg
# row and auto falls back to PIL / decode_jpeg. The line below records which case ran.
"$PY" -c "import simplejpeg; print('simplejpeg', simplejpeg.__version__)" 2>/dev/null | tee -a "$OUT/versions.txt"

bench() {  # bench NAME TIMEOUT_S ARGS...
  local name=$1 limit=$2
  shift 2
  echo "=== $name: scripts/benchmark.py $*" | tee "$OUT/$name.txt"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$PY" scripts/benchmark.py --device cuda --json "$OUT/$name.json" "$@" 2>&1 | tee -a "$OUT/$name.txt"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$OUT/$name.txt"
}

# 1. ResNet-50 at 224, bf16-mixed + channels_last, batch 256: all four figures
#    (overhead, input pipeline from JPEG files with 12 workers, mixed 160..288, memory per size).
bench resnet50_bf16 160 --backbone resnet50 --size 224 --sizes 160,192,224,256,288 \
  --batch-size 256 --precision bf16-mixed --channels-last --workers 12

# 2. ViT-S/16 with dynamic image size (one set of weights, any multiple of 16), bf16, batch 256.
bench vit_s16_bf16 100 --backbone vit_small_patch16_224 --model-kwarg dynamic_img_size=True \
  --size 224 --sizes 160,192,224,256,288 --batch-size 256 --precision bf16-mixed \
  --sections overhead,mixed,memory

# 3. ResNet-50 compiled (torch.compile, automatic dynamic shapes): overhead at 224, then mixed
#    192/224/256 (each new size may compile once: see README). Last, and the JSON is saved after
#    each figure: if compilation is slow, the timeout ends only this step and keeps what it has.
bench resnet50_bf16_compile 100 --backbone resnet50 --size 224 --sizes 192,224,256 \
  --batch-size 256 --precision bf16-mixed --channels-last --compile --sections overhead,mixed \
  --repeats 3 --steps 15

# 4. The data path alone on this machine's CPU (no GPU work): images/s per core from photo-sized
#    JPEGs, resflex's decoders vs timm's create_loader and torchvision (about 2 minutes).
bench loader 240 --sections loader

# 5. data.source.decoder=device: nvJPEG on this GPU against the CPU decode of the same batches
#    (mean |difference| in levels; issue #18; about a minute)
echo "=== decode_check" | tee "$OUT/decode_check.txt"
timeout -k 10 120 "$PY" experiments/performance/gpu_decode_check.py --json "$OUT/decode_check.json" 2>&1 \
  | tee -a "$OUT/decode_check.txt"
echo "=== decode_check: exit ${PIPESTATUS[0]}" | tee -a "$OUT/decode_check.txt"

ls -l "$OUT"
