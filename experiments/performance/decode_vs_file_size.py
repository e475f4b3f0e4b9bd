"""How the decode cost of a 500x375 JPEG grows with its file size (one core, best of 5 passes).

The loader figure (``scripts/benchmark.py --sections loader``) uses ~70 KB photo-like files;
ImageNet's average JPEG is larger (~110 KB). This adds pixel noise to the same pictures to make
heavier files and times PIL's full and 1/2-scale decode and ``torchvision.io.decode_jpeg``, to
scale the per-core rates of docs/scaling.md to heavier files.

    .venv/bin/python experiments/performance/decode_vs_file_size.py
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path as _Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

sys.path.insert(0, str(_Path(__file__).resolve().parents[2]))  # benchmarks/ lives beside src/

from benchmarks.loader import PHOTO_SIZE, QUALITY, photo_like


def best_ms(items: list, decode) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for item in items:
            decode(item)
        best = min(best, (time.process_time() - start) / len(items))
    return best * 1e3


def tv(data: torch.Tensor) -> None:
    decode_jpeg(data, mode=ImageReadMode.RGB)


def pil_half(data: bytes) -> None:
    pil(data, 2)


def pil(data: bytes, scale: int = 1) -> None:
    image = Image.open(io.BytesIO(data))
    if scale > 1:
        image.draft("RGB", (PHOTO_SIZE[0] // scale, PHOTO_SIZE[1] // scale))
    image.load()


def main() -> None:
    torch.set_num_threads(1)
    print(f"load average {[round(x, 2) for x in os.getloadavg()]}")
    pictures = [np.asarray(photo_like(*PHOTO_SIZE, seed)).astype(np.float64) for seed in range(24)]
    rng = np.random.default_rng(0)
    print("| extra noise | mean file | PIL full ms | PIL 1/2 ms | decode_jpeg ms |")
    print("|---:|---:|---:|---:|---:|")
    for extra in (0, 8, 16, 24):
        files = []
        for picture in pictures:
            noisy = np.clip(picture + rng.normal(0, extra, picture.shape), 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(noisy).save(buffer, "JPEG", quality=QUALITY)
            files.append(buffer.getvalue())
        tensors = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
        kb = np.mean([len(f) for f in files]) / 1024
        full, half, torchvision = best_ms(files, pil), best_ms(files, pil_half), best_ms(tensors, tv)
        print(f"| {extra} | {kb:.0f} KB | {full:.3f} | {half:.3f} | {torchvision:.3f} |")
    print(f"load average {[round(x, 2) for x in os.getloadavg()]}")


if __name__ == "__main__":
    main()
