"""Rules about the machine a run lands on: precision, autocast, memory layout, library noise.

One home for each rule, imported by training, evaluation, prediction, export and
the benchmark alike. Hydra-free on purpose: the benchmark runs where hydra-core
is not installed (the GPU image), and it must apply the same rules as training.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import warnings
from typing import Any

import torch


def resolve_precision(precision: Any, device: torch.device | str | None = None) -> Any:
    """``auto``: bf16 mixed precision on a GPU that supports it (fp16 mixed on older ones), fp32 elsewhere.

    ``device`` defaults to "a GPU if one is visible", which is where Lightning puts a run
    with ``trainer.accelerator=auto``.
    """
    if precision != "auto":
        return precision
    on_gpu = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def resolve_channels_last(value: Any) -> bool:
    """``auto``: channels-last on a GPU (tensor cores want NHWC); on CPU the benchmark measured it slower."""
    if value == "auto":
        return torch.cuda.is_available()
    return bool(value)


def autocast_for(precision: Any, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast Lightning's precision plugin would use for ``precision`` on ``device``.

    For code that runs the model outside a Trainer (evaluation, the benchmark), so the
    numbers match a training run's.
    """
    if str(precision).startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if str(precision).startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def quiet_library_noise() -> None:
    """Drop messages that are advertising or about choices resflex made on purpose.

    - "overridden on_after_batch_transfer": normalisation on the device is deliberate;
    - "isinstance(treespec, LeafSpec) is deprecated": torch internals seen through Lightning;
    - "Checkpoint directory exists and is not empty": resuming writes into the run's folder;
    - "validated against ConfigStore schema with the same name": the submitit launcher
      configs share the plugin's names so that its schema checks them;
    - Lightning's "💡" tips.
    """
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema with the same name")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡")
    )


def release_memory() -> None:
    """Give back what a finished (or failed) job held, before the next job of a sweep starts."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def size_tag(h: int, w: int) -> str:
    """How a size is written in metric names and folders: ``64`` for a square, ``48x80`` otherwise."""
    return str(w) if h == w else f"{h}x{w}"
