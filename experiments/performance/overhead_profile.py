"""cProfile of figure 1 (NCHW, resnet18 @64, batch 32): the plain loop vs resflex's Lightning step.

    python experiments/performance/overhead_profile.py

Prints each side's images/s per window and its top functions by own time: the operators
(conv2d, the backward pass, AdamW's tensor ops) take the same time on both sides; the
difference is the number of Python calls (Lightning hooks, logging, param groups).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ lives beside src/

from benchmarks.runners import (
    Setup,
    build_model,
    build_module,
    lightning_windows,
    plain_windows,
    quiet,
    random_batch,
)


def profile(name: str, run: Callable[[], list]) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    windows = run()
    profiler.disable()
    print(f"== {name}: images/s per window {[round(w.images_per_sec, 1) for w in windows]}")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    print(out.getvalue())


def main() -> None:
    quiet()
    setup = Setup(backbone="resnet18", device=torch.device("cpu"), batch_size=32, precision="32-true",
                  channels_last=False)  # fmt: skip
    model = build_model(setup)
    batches = [random_batch(32, (64, 64), 10, seed=i) for i in range(30)]
    profile("plain loop", lambda: plain_windows(setup, model, batches, 3, 8, 3))
    module = build_module(setup, model)
    profile("resflex (Lightning)", lambda: lightning_windows(setup, module, batches, 3, 8, 3))


if __name__ == "__main__":
    main()
