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
sampler's epoch plan), the one chart of the schedule; with ``keep_aspect`` the
batch's actual h and w (its aspect bucket's) are logged apart, as ``train/batch_h`` /
``train/batch_w``, so a fixed schedule never looks like it jumps between sizes. The console
progress bar shows ``train/images_per_sec`` (the last logging interval's).

:class:`DistinctLearningRateMonitor` logs one learning-rate chart per distinct curve, not one
per parameter group; :class:`BestEpochMetrics` the best epoch's metrics (``val/acc_best``,
``val/best_epoch``) beside the final ones; :class:`MeasuredOn` which checkpoint the final ones are of.
The figures and text a person opens TensorBoard for
(chart layout, sample batches, confusion matrix, config text, data profile, headline titles) are
:mod:`resflex.training.views`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from resflex.compat import RefinedLearningRateMonitor
from resflex.runtime import size_tag
from resflex.training.run_record import FillsRunRecord

_log = logging.getLogger("resflex")


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
        # set by Lightning's logger connector; the Trainer class does not declare it
        return max(1, self.log_every_n_steps or trainer.log_every_n_steps)  # type: ignore[attr-defined]

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
            metrics["train/batch_h"] = float(h)  # the aspect bucket's shape, not the schedule
            metrics["train/batch_w"] = float(w)
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


class DistinctLearningRateMonitor(RefinedLearningRateMonitor):
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
        self.classes: Mapping[str, Hashable] = {}

    def _start_key(self, trainer: pl.Trainer, tag: str) -> Hashable:
        prefix, name = _group_tail(tag)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                if name and group.get("name") == name:
                    return (prefix, group.get("lr_mult"), group.get("unfreeze_epoch"))
        return (prefix, None, None)

    def refine_stats(self, trainer: pl.Trainer, stats: dict[str, float]) -> dict[str, float]:
        lrs = {tag: value for tag, value in stats.items() if tag in self.lrs}
        if not lrs:
            return stats
        if not self.classes:
            self.classes = {tag: self._start_key(trainer, tag) for tag in lrs}
        self.classes = refine_lr_classes(self.classes, lrs)
        charts = {name: lrs[tag] for tag, name in lr_chart_names(self.classes).items() if tag in lrs}
        return {**{k: v for k, v in stats.items() if k not in self.lrs}, **charts}


class BestEpochMetrics(FillsRunRecord, pl.Callback):
    """The best epoch by the checkpoint's monitor, and the validation metrics at it.

    At the end of fit, beside the final values: ``val/acc_best`` (``val/acc`` at the best epoch),
    ``val/best_epoch``, and ``<monitor>_best`` when checkpoints are selected by another metric
    (``val/acc_mean_sizes_best``); HPARAMS shows them as columns. The run record's ``best`` gets
    ``epoch``. Mirrors ``ModelCheckpoint``: a strictly better value makes a new best; kept in
    checkpoints, so a resumed run continues the comparison.
    """

    def __init__(self) -> None:
        super().__init__()
        self.best: float | None = None
        self.epoch: int | None = None
        self.values: dict[str, float] = {}

    @staticmethod
    def _monitor(trainer: pl.Trainer) -> tuple[str | None, str]:
        ckpt = trainer.checkpoint_callback
        return getattr(ckpt, "monitor", None), str(getattr(ckpt, "mode", "max"))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A resume whose checkpoint folder moved (a copied or moved run folder): ``ModelCheckpoint``
        then forgets its best score (it keeps only the old absolute ``best_model_path``) and a later,
        worse epoch became "best" beside the better file. With one best file kept (``save_top_k=1``,
        the default) and that file in the new folder, its state is restored there from this
        callback's score; otherwise both start the comparison afresh, said in a warning."""
        ckpt = trainer.checkpoint_callback
        if self.best is None or ckpt is None or getattr(ckpt, "best_model_score", None) is not None:
            return
        old = str(getattr(ckpt, "best_model_path", "") or "")
        folder = getattr(ckpt, "dirpath", None)
        moved = Path(str(folder)) / Path(old).name if old and folder else None
        if (
            isinstance(ckpt, ModelCheckpoint)
            and ckpt.save_top_k == 1
            and moved is not None
            and moved.is_file()
        ):
            score = torch.tensor(self.best)
            ckpt.best_model_path = ckpt.kth_best_model_path = str(moved)
            ckpt.best_model_score = ckpt.kth_value = score
            ckpt.best_k_models = {str(moved): score}
            _log.info("the checkpoint folder moved; its best: %s (epoch %s)", moved.name, self.epoch)
            return
        _log.warning(
            "the checkpoint folder moved and its best checkpoint is not in it: the best epoch is tracked "
            "afresh from here (as in ModelCheckpoint)"
        )
        self.best, self.epoch, self.values = None, None, {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        monitor, mode = self._monitor(trainer)
        if trainer.sanity_checking or trainer.state.fn != "fit" or monitor is None:
            return
        metric = trainer.callback_metrics.get(monitor)
        if metric is None or not math.isfinite(float(metric)):
            return
        value = float(metric)
        if self.best is None or (value > self.best if mode == "max" else value < self.best):
            self.best, self.epoch = value, int(trainer.current_epoch)
            self.values = {
                k: float(v)
                for k, v in trainer.callback_metrics.items()
                if k.startswith("val/") and isinstance(v, torch.Tensor) and v.numel() == 1
            }

    def metrics(self, monitor: str | None) -> dict[str, float]:
        """The tags logged at the end of fit (empty before a first validation)."""
        if self.epoch is None or self.best is None:
            return {}
        metrics = {"val/best_epoch": float(self.epoch)}
        if "val/acc" in self.values:
            metrics["val/acc_best"] = self.values["val/acc"]
        if monitor and monitor != "val/acc":
            metrics[f"{monitor}_best"] = self.best
        return metrics

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        monitor, _ = self._monitor(trainer)
        metrics = self.metrics(monitor)
        if not metrics:
            return
        if self.run_record is not None:
            self.run_record.best = {**(self.run_record.best or {}), "epoch": self.epoch}
            self.run_record.best_metrics.update(metrics)
        if trainer.is_global_zero:
            _log_to_loggers(trainer, metrics, trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "epoch": self.epoch, "values": dict(self.values)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.epoch = state_dict.get("best"), state_dict.get("epoch")
        self.values = dict(state_dict.get("values") or {})


class MeasuredOn(FillsRunRecord, pl.Callback):
    """Which checkpoint each split's final numbers in ``metrics.json`` were measured on, and whether after
    BatchNorm calibration: the record's ``measured_on``, e.g.
    ``{"val": {"checkpoint": "best-epoch004-acc0.79.ckpt", "bn_calibration": true}, "test": {...}}``.

    Why: the final ``val/*`` numbers are the last epoch's validation (``last.ckpt``'s weights) or, when
    the run validates again after fit (calibrated statistics, sizes deferred to then), the best
    checkpoint's; the test runs on the best. Readers of a run's accuracy per size (``predict.size=auto``,
    the model card, the export's robust range: :func:`resflex.run_folder.metrics_of_checkpoint`) use it
    only for the checkpoint it was measured on, and the end-of-run table labels calibrated numbers.
    :func:`resflex.training.calibration.calibrate_run_checkpoints` tells it which files it calibrated.
    """

    def __init__(self) -> None:
        super().__init__()
        #: file names of the checkpoints whose BatchNorm statistics were calibrated after fit
        self.calibrated: set[str] = set()

    def note_calibrated(self, names: Sequence[str]) -> None:
        self.calibrated.update(str(n) for n in names)

    def _note(self, trainer: pl.Trainer, split: str) -> None:
        if self.run_record is None or trainer.sanity_checking:
            return
        path = None if trainer.state.fn == "fit" else getattr(trainer, "ckpt_path", None)
        # during fit (and an after-fit evaluation of the current weights): the last epoch's weights
        name = Path(str(path)).name if path else "last.ckpt"
        entry = {"checkpoint": name, "bn_calibration": trainer.state.fn != "fit" and name in self.calibrated}
        self.run_record.measured_on = {**(self.run_record.measured_on or {}), split: entry}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._note(trainer, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._note(trainer, "test")
