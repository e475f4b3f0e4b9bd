"""The run's record: ``metrics.json`` in the run folder, and hyperparameters for TensorBoard's HPARAMS tab.

``metrics.json`` is written for every run — completed, failed or interrupted —
so that a sweep summary never has to guess what happened to a job.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

HPARAM_METRICS = ("val/acc", "val/loss", "test/acc", "train/images_per_sec")


def _plain(value: Any) -> Any:
    """Tensors -> Python numbers; NaN/inf -> None (JSON has no NaN, and a summary must not sort on it)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def collect_metrics(trainer: pl.Trainer | None, extra: Mapping[str, float] | None = None) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    if trainer is not None:
        metrics.update({k: _plain(v) for k, v in trainer.callback_metrics.items()})
    metrics.update({k: _plain(v) for k, v in (extra or {}).items()})
    return dict(sorted(metrics.items()))


def write_metrics_json(path: str | Path, record: Mapping[str, Any]) -> Path:
    """Write atomically (temp file + rename): a crash mid-write never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def flat_hparams(cfg: DictConfig, choices: Mapping[str, Any]) -> dict[str, Any]:
    """The knobs worth comparing across runs, flattened to ``a.b`` keys with TensorBoard-friendly values."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(container, dict)
    keep = ("backbone", "pooling", "resolution", "optimizer", "scheduler", "model", "seed")
    flat: dict[str, Any] = {f"choice/{k}": v for k, v in choices.items() if not str(k).startswith("hydra")}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            if isinstance(value, list | tuple):
                value = str(list(value))
            if value is None:
                value = "null"
            flat[prefix] = value

    for key in keep:
        if key in container:
            walk(key, container[key])
    data = container.get("data", {}) or {}
    for key in ("batch_size", "name"):
        if key in data:
            flat[f"data.{key}"] = data[key]
    trainer = container.get("trainer", {}) or {}
    for key in ("max_epochs", "precision"):
        if key in trainer:
            flat[f"trainer.{key}"] = str(trainer[key])
    return flat


def hparam_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The final metrics shown beside the hyperparameters: ``hp/val_acc``, ``hp/val_acc@64``, ..."""
    names = [*HPARAM_METRICS, *sorted(k for k in metrics if "/acc@" in k)]
    final = {}
    for name in names:
        value = metrics.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            final["hp/" + name.replace("/", "_")] = float(value)
    return final


def log_hparams_with_metrics(
    trainer: pl.Trainer, hparams: dict[str, Any], metrics: Mapping[str, Any]
) -> None:
    """One HPARAMS entry per run, carrying the final metrics (``hp/val_acc`` etc.).

    For TensorBoard we write the session start/end summaries but *not* the
    per-run "experiment" summary that Lightning adds: TensorBoard takes the
    first run's experiment summary as the column list for the whole logdir, so
    in a sweep where runs differ in keys (``pooling.levels`` exists only for
    pyramid) columns would go missing. Without it, TensorBoard builds the
    columns from the union of all runs.
    """
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    final = hparam_metrics(metrics)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams)  # hparams.yaml; no summaries without metrics
            if final:
                logger.log_metrics(final, step=trainer.global_step)
            _, start, end = hparams_summaries(hparams, final)
            writer = logger.experiment._get_file_writer()
            writer.add_summary(start, trainer.global_step)
            writer.add_summary(end, trainer.global_step)
            logger.experiment.flush()
        else:
            logger.log_hyperparams(hparams, final)
        logger.save()
