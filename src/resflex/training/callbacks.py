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
logged as ``train/resolution_h`` / ``train/resolution_w``. The console
progress bar shows ``train/images_per_sec`` (the last logging interval's).

The rest of this module is what a person opens TensorBoard for:
:class:`DistinctLearningRateMonitor` (one learning-rate chart per distinct curve, not one per
parameter group), :class:`CustomScalarsLayout` (curves that belong together in one chart),
:class:`TrainingSamples` (a labelled batch at each training size),
:class:`ConfusionMatrixFigure` and :class:`RunText` (the composed config and
the command that reproduces the run). Figures and text go to every logger
through :mod:`resflex.training.loggers`.
"""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities import rank_zero_only

from resflex.runtime import size_tag
from resflex.training.run_record import FillsRunRecord


def _sync(module: pl.LightningModule) -> None:
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)


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


class ThroughputLogger(FillsRunRecord, pl.Callback):
    """Logs images/s for training (every ``log_every_n_steps``) and validation (per epoch).

    The latest rates also go to the run record (``metrics.json``).
    """

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

    def _remember(self, metrics: dict[str, float]) -> None:
        self.last.update(metrics)
        if self.run_record is not None:
            self.run_record.throughput.update(metrics)

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
        counts = self._per_size.setdefault(size_tag(*self._scheduled), [0.0, 0.0])
        counts[0] += int(images.shape[0])
        counts[1] += now - self._last_batch_end
        self._last_batch_end = now
        if trainer.global_step % self._interval(trainer) == 0:
            self._flush_train(trainer, pl_module)
        value = self.last.get("train/images_per_sec")
        if value is not None:  # the console progress bar; the loggers get it from _flush_train
            pl_module.log(
                "train/images_per_sec", value, prog_bar=True, logger=False, on_step=True, on_epoch=False
            )

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
        self._remember(metrics)
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
        self._remember({"val/images_per_sec": value})
        self._log_once(trainer, {"val/images_per_sec": value})
        # the validation pause must not count against training throughput
        self._reset_train()

    @rank_zero_only
    def _log_once(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        _log_to_loggers(trainer, metrics, trainer.global_step)


# ---- learning rates: one chart per distinct curve ------------------------------------------------------


def _group_tail(tag: str) -> tuple[str, str]:
    """``train/lr/backbone_no_wd`` -> (``train/lr``, ``backbone_no_wd``); a tag without a group: (tag, "")."""
    prefix, _, name = tag.rpartition("/")
    return (prefix, name) if prefix else (tag, "")


def refine_lr_classes(classes: Mapping[str, Hashable], lrs: Mapping[str, float]) -> dict[str, int]:
    """Split every class whose members' learning rates differ at this step.

    Two tags share a class only while their LRs have been equal at every logged step (and their
    starting keys were equal), so a curve that is merged away is always identical to the one shown.
    """
    pairs = {tag: (classes.get(tag), lrs.get(tag)) for tag in {**classes, **lrs}}
    ids = {pair: k for k, pair in enumerate(dict.fromkeys(pairs.values()))}
    return {tag: ids[pair] for tag, pair in pairs.items()}


def _common_name(names: Sequence[str]) -> str:
    """The ``_``-separated words all ``names`` start with (``backbone``, ``backbone_no_wd``: ``backbone``)."""
    words = [name.split("_") for name in names]
    common = []
    for column in zip(*words, strict=False):
        if len(set(column)) > 1:
            break
        common.append(column[0])
    return "_".join(common)


def lr_chart_names(classes: Mapping[str, Hashable]) -> dict[str, str]:
    """``{representative tag: chart tag}``, one per class of :func:`refine_lr_classes`.

    The chart is ``train/lr`` when every group of the scheduler shares one curve (the default
    run), else the words the class's group names share (``train/lr/head`` for ``head`` and
    ``head_no_wd``), else the representative's own tag. Names stay unique.
    """
    members: dict[Hashable, list[str]] = {}
    for tag, cls in classes.items():
        members.setdefault(cls, []).append(tag)
    names: dict[str, str] = {}
    for tags in members.values():
        prefix, _ = _group_tail(tags[0])
        siblings = {t for t in classes if _group_tail(t)[0] == prefix}
        common = _common_name([_group_tail(t)[1] for t in tags])
        if len(tags) > 1 and set(tags) == siblings:
            names[tags[0]] = prefix
        elif len(tags) > 1 and common:
            names[tags[0]] = f"{prefix}/{common}"
        else:
            names[tags[0]] = tags[0]
    if len(set(names.values())) < len(names):
        return {tag: tag for tag in names}
    return names


class DistinctLearningRateMonitor(LearningRateMonitor):
    """Lightning's ``LearningRateMonitor`` with one chart per distinct learning-rate curve.

    resflex names every parameter group (``backbone``, ``backbone_no_wd``, ``head``,
    ``head_no_wd``; :mod:`resflex.training.param_groups`), and the plain monitor draws each:
    four identical curves per run in the default setup. Groups start in one class when they
    share the scheduler, ``lr_mult`` and ``unfreeze_epoch`` (what shapes their curve here) and
    are split the moment their values differ (:func:`refine_lr_classes`); each class is logged
    once (:func:`lr_chart_names`). ``trainer.callback_metrics`` keeps every group's value.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.classes: dict[str, Hashable] = {}

    def _start_key(self, trainer: pl.Trainer, tag: str) -> Hashable:
        prefix, name = _group_tail(tag)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                if name and group.get("name") == name:
                    return (prefix, group.get("lr_mult"), group.get("unfreeze_epoch"))
        return (prefix, None, None)

    def _extract_stats(self, trainer: pl.Trainer, interval: str) -> dict[str, float]:
        stats = super()._extract_stats(trainer, interval)
        lrs = {tag: value for tag, value in stats.items() if tag in self.lrs}
        if not lrs:
            return stats
        if not self.classes:
            self.classes = {tag: self._start_key(trainer, tag) for tag in lrs}
        self.classes = refine_lr_classes(self.classes, lrs)
        charts = {name: lrs[tag] for tag, name in lr_chart_names(self.classes).items() if tag in lrs}
        return {**{k: v for k, v in stats.items() if k not in self.lrs}, **charts}


# ---- what a person sees in TensorBoard: layout, sample batches, confusion matrix, config text -------------


def custom_scalars_layout() -> dict[str, dict[str, list[Any]]]:
    """TensorBoard CUSTOM SCALARS layout: the curves that belong together, each chart's tags as regexes.

    Per-size tags (``val/acc@32``, ``val/acc@64``, ...) are separate charts in
    SCALARS; here accuracy across evaluation sizes, train vs val loss, images/s
    per training size and the resolution schedule are one chart each. The first
    chart is accuracy against the evaluation size itself (``eval/*_acc_vs_size``,
    whose step is the size in pixels), val and test of every run together.
    """
    return {
        "resflex: across sizes": {
            "accuracy vs evaluation size (x axis: pixels per side)": [
                "Multiline",
                [r"^eval/(val|test)_acc_vs_size$"],
            ],
            "val accuracy at each evaluation size (val/acc@<side>)": ["Multiline", [r"^val/acc@"]],
            "val loss at each evaluation size (val/loss@<side>)": ["Multiline", [r"^val/loss@"]],
            "training images/s at each training size": ["Multiline", [r"^train/images_per_sec@"]],
            "resolution schedule (side of the training batches)": ["Multiline", [r"^train/resolution"]],
        },
        "resflex: train vs val": {
            "loss: train vs val": ["Multiline", [r"^train/loss$", r"^val/loss$"]],
            "accuracy: train vs val": ["Multiline", [r"^train/acc$", r"^val/acc$"]],
            "learning rate": ["Multiline", [r"^train/lr"]],
        },
    }


class CustomScalarsLayout(pl.Callback):
    """Writes :func:`custom_scalars_layout` once per run (TensorBoard only: no other logger has layouts)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from resflex.training.loggers import tensorboard_writers

        for writer in tensorboard_writers(trainer):
            writer.add_custom_scalars(custom_scalars_layout())
            writer.flush()


def _to_uint8(images: torch.Tensor, pl_module: pl.LightningModule) -> torch.Tensor:
    """Undo the module's on-device normalisation (``pixel_mean``/``pixel_std``) for display."""
    if images.dtype == torch.uint8:
        return images
    mean, std = getattr(pl_module, "pixel_mean", None), getattr(pl_module, "pixel_std", None)
    images = images.float()
    if mean is not None and std is not None:
        images = images * std.to(images.device) + mean.to(images.device)
    return images.clamp(0, 255).to(torch.uint8)


def draw_batch(
    images: torch.Tensor, labels: Sequence[int], classes: Sequence[str], title: str, max_images: int = 16
) -> Figure:
    """A grid of uint8 ``(B, 3, h, w)`` images, each titled with its class name."""
    n = min(max_images, int(images.shape[0]))
    cols = min(8, n)
    rows = max(1, math.ceil(n / cols))
    figure = Figure(figsize=(1.5 * cols, 1.6 * rows + 0.4), dpi=100)
    FigureCanvasAgg(figure)
    pixels = images[:n].detach().cpu().permute(0, 2, 3, 1).numpy()
    for k in range(n):
        ax = figure.add_subplot(rows, cols, k + 1)
        ax.imshow(pixels[k])
        label = int(labels[k])
        ax.set_title(classes[label] if 0 <= label < len(classes) else str(label), fontsize=8)
        ax.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


class TrainingSamples(pl.Callback):
    """IMAGES: the first training batch at each training size, as the network gets it, with its labels.

    What goes in is what the schedule and augmentation made of the data: the
    crop, the scale and the size; one figure per size, the first time it occurs
    (``samples/train@64``).
    """

    def __init__(self, max_images: int = 16) -> None:
        super().__init__()
        self.max_images = max_images
        self.seen: set[tuple[int, ...]] = set()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        images, labels = batch[0], batch[1]
        if not isinstance(images, torch.Tensor):  # NaFlex token batches have no image grid to draw
            return
        shape = tuple(images.shape[-2:])
        size = scheduled_size(trainer, batch_idx, shape)
        if size in self.seen:
            return
        self.seen.add(size)
        from resflex.training.loggers import log_figure

        classes = list(getattr(getattr(trainer, "datamodule", None), "classes", []) or [])
        h, w = shape
        title = f"training batch at {h}x{w} (epoch {trainer.current_epoch}, step {trainer.global_step})"
        figure = draw_batch(_to_uint8(images, pl_module), labels.tolist(), classes, title, self.max_images)
        log_figure(trainer, f"samples/train@{size_tag(*size)}", figure)


def draw_confusion_matrix(matrix: torch.Tensor, classes: Sequence[str], title: str) -> Figure:
    """Rows: true class, columns: predicted; colour = fraction of the row, numbers = counts (≤ 20 classes)."""
    counts = matrix.detach().cpu().double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = counts.shape[0]
    side = min(12.0, 2.5 + 0.45 * n)
    figure = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    shown = ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 30:
        names = [str(c) for c in classes] if len(classes) == n else [str(k) for k in range(n)]
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                value = int(counts[i, j])
                if value:
                    color = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


class ConfusionMatrixFigure(pl.Callback):
    """IMAGES: the validation confusion matrix at the main evaluation size, drawn at the end of fit
    (``eval/confusion_matrix_val``, the size in its title).

    Counted on every validation epoch from the predictions ``validation_step``
    returns (a bincount on the device, synced across ranks), so the figure at
    the end is the last epoch's; saved as ``<run>/confusion_matrix.png`` too.
    """

    def __init__(self, output_dir: str | None = None, filename: str = "confusion_matrix.png") -> None:
        super().__init__()
        self.output_dir = output_dir
        self.filename = filename
        self.metric: Any = None
        self.matrix: torch.Tensor | None = None
        self.epoch = -1

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from torchmetrics.classification import MulticlassConfusionMatrix

        num_classes = getattr(getattr(pl_module, "model", None), "num_classes", None)
        if trainer.sanity_checking or not num_classes:
            self.metric = None
            return
        if self.metric is None:
            self.metric = MulticlassConfusionMatrix(num_classes, validate_args=False)
        self.metric = self.metric.to(pl_module.device)
        self.metric.reset()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.metric is None or dataloader_idx != 0 or not isinstance(outputs, torch.Tensor):
            return
        self.metric.update(outputs.to(pl_module.device), batch[1])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.metric is not None and self.metric.update_count:
            self.matrix = self.metric.compute()  # every rank: the sum across ranks
            self.epoch = trainer.current_epoch

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.matrix is None or not trainer.is_global_zero:
            return
        from resflex.training.loggers import log_figure

        datamodule = getattr(trainer, "datamodule", None)
        classes = list(getattr(datamodule, "classes", []) or [])
        sizes = getattr(datamodule, "eval_sizes", None) or [(0, 0)]
        h, w = sizes[0]
        accuracy = float(self.matrix.diag().sum() / self.matrix.sum().clamp(min=1))
        title = f"val confusion matrix at {h}x{w}, epoch {self.epoch} (accuracy {accuracy:.3f})"
        figure = draw_confusion_matrix(self.matrix, classes, title)
        folder = Path(self.output_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(folder / self.filename)
        # one tag for every run (the size is in the title): runs line up in IMAGES whatever their size
        log_figure(trainer, "eval/confusion_matrix_val", figure)


def reproduce_command(overrides: Sequence[str], script: str = "scripts/train.py") -> str:
    """The shell command that reruns a run: the script and its overrides, each quoted for the shell."""
    return " ".join(["python", script, *(shlex.quote(str(o)) for o in overrides)])


class RunText(pl.Callback):
    """TEXT: the composed config and the command that reproduces the run (from ``<run>/.hydra/``).

    Read from the files Hydra wrote before the task started, so what is shown
    is exactly what ran; a run without them (composed in a test, no Hydra)
    logs nothing.
    """

    def __init__(self, output_dir: str | None = None, hydra_subdir: str = ".hydra") -> None:
        super().__init__()
        self.output_dir = output_dir
        self.hydra_subdir = hydra_subdir

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        folder = Path(self.output_dir or trainer.default_root_dir) / self.hydra_subdir
        config, overrides = folder / "config.yaml", folder / "overrides.yaml"
        if not config.is_file():
            return
        from omegaconf import OmegaConf  # not at import: the benchmark imports this module without Hydra

        from resflex.training.loggers import log_text

        items = OmegaConf.load(overrides) if overrides.is_file() else []
        command = reproduce_command([str(o) for o in items])
        log_text(
            trainer,
            "run/command",
            f"Reproduce this run (from the repository root):\n\n    {command}\n\n"
            f"Run folder: `{folder.parent}`",
        )
        text = "\n".join("    " + line for line in config.read_text().splitlines())
        log_text(trainer, "run/config", f"Composed config (`{config}`):\n\n{text}")


class DataProfileFigure(pl.Callback):
    """IMAGES: the training data's size and aspect histograms (:mod:`resflex.data.profile`), once.

    The profile's numbers go to ``metrics.json`` (``data_profile``), not to SCALARS, where
    one-point charts would push the training curves down the page.
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        profile = getattr(trainer.datamodule, "profile", None)
        if profile is None or not trainer.is_global_zero or trainer.global_step > 0:
            return
        from resflex.training.loggers import log_figure

        figure = profile.figure()
        log_figure(trainer, "data/profile", figure, step=0)
        figure.clear()
