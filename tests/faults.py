"""Faults injected into real CLI runs (``+callbacks.fault._target_=tests.faults.X``), and a probe."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from typing import Any

import pytorch_lightning as pl
import torch


def sigterm_at(step: int) -> list[str]:
    """The overrides that add :class:`SigtermAtStep` to a run."""
    return ["+callbacks.fault._target_=tests.faults.SigtermAtStep", f"+callbacks.fault.step={step}"]


class SigtermAtStep(pl.Callback):
    """Sends SIGTERM to this process after global step ``step`` (as a cluster would before killing it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class NanWeightsAtStep(pl.Callback):
    """Poisons the classifier weights before global step ``step``: the loss becomes NaN from there on."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.head.weight.fill_(float("nan"))


class MarkerAtStep(pl.Callback):
    """Writes ``path`` after global step ``step`` (the test's cue that training runs), then lets each later
    batch take ``pause_s`` longer, so that the run is still training when the test's signal arrives."""

    def __init__(self, step: int, path: str, pause_s: float = 0.5) -> None:
        self.step = step
        self.path = path
        self.pause_s = pause_s

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            with open(self.path, "w") as handle:
                handle.write(str(os.getpid()))
        elif trainer.global_step > self.step:
            time.sleep(self.pause_s)


class TrainingImages(pl.Callback):
    """Appends each training batch to ``path`` as a JSON line: the epoch, the optimizer step it counts
    toward, its learning rate and a digest of each image as the model gets it, to compare what two runs
    trained on."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any
    ) -> None:
        images = batch[0].detach().cpu().contiguous()
        digests = [hashlib.sha1(image.numpy().tobytes()).hexdigest()[:16] for image in images]
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        line = {"epoch": trainer.current_epoch, "step": trainer.global_step, "lr": lr, "images": digests}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(line) + "\n")


class OutOfMemoryAbove(pl.Callback):
    """From epoch ``from_epoch`` on, a training batch of more than ``images`` images asks torch's CPU
    allocator for more than any machine has, as a too-large batch does on a GPU (the allocator's own
    failure, nothing made up)."""

    def __init__(self, images: int, from_epoch: int = 1) -> None:
        self.images = images
        self.from_epoch = from_epoch

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any
    ) -> None:
        if trainer.current_epoch >= self.from_epoch and len(batch[0]) > self.images:
            torch.empty(2**62, dtype=torch.uint8)
