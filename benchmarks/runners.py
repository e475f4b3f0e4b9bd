"""The two ways to train that the benchmark compares, timed the same way.

- :func:`lightning_windows`: resflex's real training step: a
  :class:`~resflex.training.module.ClassificationModule` in a Lightning
  ``Trainer`` with resflex's settings (TensorBoard logger every 10 steps, LR
  monitor, :class:`~resflex.training.callbacks.ThroughputLogger`, the
  fine-tuning callback; no checkpoints and no progress bar, which only cost at
  epoch ends and on the terminal).
- :func:`plain_windows`: the loop a researcher writes by hand: uint8 batch to
  the device, normalise, forward, cross-entropy, backward, AdamW step.

Both run ``warmup`` steps, then ``windows`` windows of ``steps`` steps; the
device is synchronised at each window boundary and nowhere else, and each
window yields images/s and pixels/s.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from resflex.data.sampler import ScheduleLengthSync
from resflex.models.backbone import TimmBackbone
from resflex.models.classifier import ImageClassifier
from resflex.models.pooling import AvgPool
from resflex.runtime import autocast_for, quiet_library_noise
from resflex.training.callbacks import ThroughputLogger
from resflex.training.finetune import build_finetuning
from resflex.training.module import ClassificationModule
from resflex.training.optim import OptimizerFactory

Batch = tuple[torch.Tensor, torch.Tensor]
LABEL_SMOOTHING = 0.1  # resflex's default (configs/model/classifier.yaml label_smoothing)


@dataclass
class Setup:
    """What both sides share: model, batch, optimizer, precision, memory format, device."""

    backbone: str
    device: torch.device
    batch_size: int
    precision: str = "32-true"
    channels_last: bool = True
    compile: bool = False
    compile_dynamic: bool | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 10
    lr: float = 2e-3
    weight_decay: float = 0.05
    cudnn_benchmark: bool = True

    def optimizer_factory(self) -> OptimizerFactory:
        return OptimizerFactory("adamw", lr=self.lr, weight_decay=self.weight_decay)


#: the loggers :func:`quiet` sets to ERROR, for the rest of the process
QUIET_LOGGERS = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "resflex")


def quiet() -> None:
    """Lightning's info lines and advice would drown the table."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    quiet_library_noise()
    warnings.filterwarnings("ignore", message=".*train_dataloader.*")
    warnings.filterwarnings("ignore", message=".*val_dataloader.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="pytorch_lightning")


def build_model(setup: Setup) -> ImageClassifier:
    """Backbone + average pooling + linear head, built with resflex's own builders."""
    backbone = TimmBackbone(setup.backbone, model_kwargs=dict(setup.model_kwargs))
    model = ImageClassifier(backbone, AvgPool(), num_classes=setup.num_classes)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if setup.compile:
        # in place, shared by both sides: they see the same compiled graphs
        model.compile(dynamic=setup.compile_dynamic)
    return model


def build_module(setup: Setup, model: ImageClassifier, **module_kwargs: Any) -> ClassificationModule:
    """resflex's module on ``model`` with the setup's optimizer and settings (``module_kwargs``: any other
    :class:`ClassificationModule` argument, e.g. the scale-consistency term's)."""
    return ClassificationModule(
        net=model,
        optimizer=setup.optimizer_factory(),
        label_smoothing=LABEL_SMOOTHING,
        channels_last=setup.channels_last,
        compile=setup.compile,
        compile_dynamic=setup.compile_dynamic,
        **module_kwargs,
    )


def random_batch(batch_size: int, size: tuple[int, int], num_classes: int, seed: int = 0) -> Batch:
    """A uint8 (B, 3, h, w) batch and labels, as the data module delivers them."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 3, *size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return images, labels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(setup: Setup) -> contextlib.AbstractContextManager:
    """The same autocast a training run would use (:func:`resflex.runtime.autocast_for`)."""
    return autocast_for(setup.precision, setup.device)


@dataclass
class Window:
    images_per_sec: float
    pixels_per_sec: float


class _Clock:
    """Counts images/pixels per window; the device is synced only at window boundaries."""

    def __init__(self, device: torch.device, warmup: int, steps: int) -> None:
        self.device, self.warmup, self.steps = device, warmup, steps
        self.seen = 0
        self.images = 0
        self.pixels = 0
        self.start = 0.0
        self.windows: list[Window] = []

    def step_start(self) -> None:
        """Before each step: with no warm-up, the first window opens at the first step (no warm-up step's end
        opens it; it would otherwise count from ``perf_counter``'s arbitrary zero, a rate near 0)."""
        if self.warmup == 0 and self.seen == 0:
            self._open()

    def step_done(self, images: torch.Tensor) -> None:
        self.seen += 1
        if self.seen <= self.warmup:
            if self.seen == self.warmup:
                self._open()
            return
        self.images += int(images.shape[0])
        self.pixels += int(images.shape[0]) * int(images.shape[-2]) * int(images.shape[-1])
        if (self.seen - self.warmup) % self.steps == 0:
            sync(self.device)
            elapsed = time.perf_counter() - self.start
            self.windows.append(Window(self.images / elapsed, self.pixels / elapsed))
            self._open()

    def _open(self) -> None:
        sync(self.device)
        self.start = time.perf_counter()
        self.images = self.pixels = 0


class InMemoryLoader:
    """Pre-made batches as a loader (a bare list would be read by Lightning as a list of loaders)."""

    def __init__(self, batches: Sequence[Batch]) -> None:
        self.batches = list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)


class WindowTimer(pl.Callback):
    def __init__(self, device: torch.device, warmup: int, steps: int) -> None:
        self.clock = _Clock(device, warmup, steps)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.clock.step_start()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.clock.step_done(batch[0])


def make_trainer(
    setup: Setup, max_steps: int, callbacks: list[pl.Callback], log_dir: str, **overrides: Any
) -> pl.Trainer:
    """A Trainer with resflex's trainer, callback and logger settings, minus checkpoints/progress bar."""
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.loggers import TensorBoardLogger

    cuda = setup.device.type == "cuda"
    kwargs: dict[str, Any] = dict(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        precision=setup.precision,
        max_steps=max_steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        benchmark=setup.cudnn_benchmark if cuda else None,
        use_distributed_sampler=False,
    )
    kwargs.update(overrides)
    return pl.Trainer(
        **kwargs,
        logger=TensorBoardLogger(log_dir, name="", version=""),
        callbacks=[
            ThroughputLogger(),
            LearningRateMonitor(logging_interval="step"),
            build_finetuning(None),
            ScheduleLengthSync(),
            *callbacks,
        ],
    )


def lightning_windows(
    setup: Setup,
    module: ClassificationModule,
    data: Sequence[Batch] | pl.LightningDataModule,
    warmup: int,
    steps: int,
    windows: int = 1,
) -> list[Window]:
    """``trainer.fit`` on in-memory batches (a sequence) or on a data module; per-window throughput."""
    timer = WindowTimer(setup.device, warmup, steps)
    max_steps = warmup + steps * windows
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = make_trainer(setup, max_steps, [timer], log_dir)
        with contextlib.redirect_stdout(io.StringIO()):  # the fine-tuning callback prints parameter counts
            if isinstance(data, pl.LightningDataModule):
                trainer.fit(module, datamodule=data)
            else:
                trainer.fit(module, train_dataloaders=InMemoryLoader(data))
    return timer.clock.windows


def plain_windows(
    setup: Setup, model: torch.nn.Module, batches: Iterable[Batch], warmup: int, steps: int, windows: int = 1
) -> list[Window]:
    """The hand-written loop on the same model, batches, optimizer and precision."""
    device = setup.device
    model.to(device).train()
    optimizer = setup.optimizer_factory()(model.parameters())
    scaler = torch.amp.GradScaler(device.type) if setup.precision.startswith("16") else None
    mean = torch.tensor(model.backbone.mean, device=device).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(model.backbone.std, device=device).view(1, -1, 1, 1) * 255.0
    memory_format = torch.channels_last if setup.channels_last else torch.contiguous_format
    clock = _Clock(device, warmup, steps)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = setup.cudnn_benchmark
    total = warmup + steps * windows
    for i, (images, labels) in enumerate(batches):
        if i >= total:
            break
        clock.step_start()
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        x = ((images.float() - mean) / std).contiguous(memory_format=memory_format)
        with autocast(setup):
            loss = F.cross_entropy(model(x), labels, label_smoothing=LABEL_SMOOTHING)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        clock.step_done(images)
    return clock.windows
