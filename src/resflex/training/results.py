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

HPARAM_METRICS = ("val/acc", "val/loss", "test/acc", "train/images_per_sec")


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else value.tolist()
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


def log_hparams_with_metrics(
    trainer: pl.Trainer, hparams: dict[str, Any], metrics: Mapping[str, Any]
) -> None:
    """One HPARAMS entry per run, carrying the final metrics (``hp/val_acc`` etc.)."""
    final = {}
    for name in HPARAM_METRICS:
        value = metrics.get(name)
        if isinstance(value, int | float) and math.isfinite(value):
            final["hp/" + name.replace("/", "_")] = float(value)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams, final)
        logger.save()
