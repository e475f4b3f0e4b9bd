"""Faults injected into real CLI runs (``+callbacks.fault._target_=tests.faults.X``)."""

from __future__ import annotations

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
