"""Callbacks that Lightning does not ship in the shape resflex needs.

:class:`ThroughputLogger` exists because Lightning's ``ThroughputMonitor``
synchronises the device on every batch and logs under fixed tag names; resflex
wants ``train/images_per_sec`` / ``val/images_per_sec`` and the current
``train/resolution``, with a device sync only once per logging interval so the
hot path stays free of host syncs.

Per resolution (``train/images_per_sec@64``): each batch is charged the wall
time since the previous batch ended (its loading + step). That is exact on
CPU; on a GPU, with asynchronous kernels, a batch's time can leak into the
next one when sizes alternate, so read it over a logging interval, not per step.
``train/resolution`` is the schedule's size for the step (read from the
sampler's epoch plan); with ``keep_aspect`` the batch's actual h and w are
logged as ``train/resolution_h`` / ``train/resolution_w``.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only


def _sync(module: pl.LightningModule) -> None:
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)


def _size_tag(size: tuple[int, ...]) -> str:
    h, w = size
    return str(w) if h == w else f"{h}x{w}"


def scheduled_size(trainer: pl.Trainer, batch_idx: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The schedule's (h, w) for training batch ``batch_idx`` (the batch ``shape`` if unknown)."""
    sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
    plan = getattr(sampler, "plan", None)
    if callable(plan):
        steps = plan()
        if 0 <= batch_idx < len(steps) and tuple(steps[batch_idx].size) == shape:
            return tuple(steps[batch_idx].scheduled)
    return shape


def _log_to_loggers(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


class ThroughputLogger(pl.Callback):
    """Logs images/s for training (every ``log_every_n_steps``) and validation (per epoch)."""

    def __init__(self, log_every_n_steps: int | None = None) -> None:
        super().__init__()
        self.log_every_n_steps = log_every_n_steps
        self._start = 0.0
        self._images = 0
        self._val_start = 0.0
        self._val_images = 0
        self._shape: tuple[int, ...] = (0, 0)
        self._scheduled: tuple[int, ...] = (0, 0)
        self._last_batch_end = 0.0
        self._per_size: dict[str, list[float]] = {}  # tag -> [images, seconds] since the last flush
        self.last: dict[str, float] = {}

    def _interval(self, trainer: pl.Trainer) -> int:
        return max(1, self.log_every_n_steps or trainer.log_every_n_steps)

    def _reset_train(self) -> None:
        self._start = time.perf_counter()
        self._last_batch_end = self._start
        self._images = 0
        self._per_size = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_train()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        images = batch[0]
        self._images += int(images.shape[0])
        self._shape = tuple(images.shape[-2:])
        self._scheduled = scheduled_size(trainer, batch_idx, self._shape)
        now = time.perf_counter()
        counts = self._per_size.setdefault(_size_tag(self._scheduled), [0.0, 0.0])
        counts[0] += int(images.shape[0])
        counts[1] += now - self._last_batch_end
        self._last_batch_end = now
        if trainer.global_step % self._interval(trainer) == 0:
            self._flush_train(trainer, pl_module)

    def _flush_train(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log images/s since the last flush (one device sync per logging interval)."""
        if not self._images:
            return
        _sync(pl_module)
        elapsed = time.perf_counter() - self._start
        h, w = self._shape
        metrics = {"train/resolution": float(self._scheduled[1])}
        if h != w or self._scheduled != self._shape:
            metrics["train/resolution_h"] = float(h)
            metrics["train/resolution_w"] = float(w)
        if elapsed > 0:
            metrics["train/images_per_sec"] = self._images / elapsed
        for tag, (count, seconds) in self._per_size.items():
            if seconds > 0:
                metrics[f"train/images_per_sec@{tag}"] = count / seconds
        self.last.update(metrics)
        if trainer.is_global_zero:
            _log_to_loggers(trainer, metrics, trainer.global_step)
        self._reset_train()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush_train(trainer, pl_module)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._flush_train(trainer, pl_module)  # short epochs still get a throughput point
        _sync(pl_module)
        self._val_start = time.perf_counter()
        self._val_images = 0

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._val_images += int(batch[0].shape[0])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(pl_module)
        elapsed = time.perf_counter() - self._val_start
        if trainer.sanity_checking or elapsed <= 0 or not self._val_images:
            return
        value = self._val_images / elapsed
        self.last["val/images_per_sec"] = value
        self._log_once(trainer, {"val/images_per_sec": value})
        # the validation pause must not count against training throughput
        self._reset_train()

    @rank_zero_only
    def _log_once(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        _log_to_loggers(trainer, metrics, trainer.global_step)
