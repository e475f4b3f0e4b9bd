"""The run's record: ``metrics.json`` in the run folder, and hyperparameters for TensorBoard's HPARAMS tab.

``metrics.json`` is written for every run — completed, failed or interrupted —
so that a sweep summary never has to guess what happened to a job.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from resflex.compat import tensorboard_file_writer

HPARAM_METRICS = (
    "val/acc",
    "test/acc",
    "val/acc_best",
    "val/best_epoch",
    "val/acc_worst",
    "val/acc_mean_sizes",
    "test/acc_mean_sizes",
    "val/acc_range",
    "val/loss",
    "train/images_per_sec",
)
#: the column naming the size behind val/acc and test/acc (resolution.eval_size as used, e.g. ``64``)
EVAL_SIZE_COLUMN = "eval size"


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


# Columns of the HPARAMS tab that every run has: the knobs that answer "which setup won?"
# (config key or group name -> one readable value; group choices by name, never ``_target_``).
KEY_HPARAMS = (
    "backbone.name",
    "backbone.init",
    "pooling",
    "resolution",
    "resolution.size",
    "optimizer",
    "optimizer.lr",
    "optimizer.weight_decay",
    "data",
    "data.batch_size",
    "finetune",
    "trainer.max_epochs",
    "seed",
)
# The columns TensorBoard shows before any click (it shows five), after those set on the command line.
SHOWN_BY_DEFAULT = (
    "pooling",
    "resolution.size",
    EVAL_SIZE_COLUMN,
    "resolution",
    "backbone.name",
    "optimizer.lr",
)
TENSORBOARD_SHOWN_COLUMNS = 5
# Group choices shown by name; other groups are plumbing (where logs go, which callbacks).
CHOICE_GROUPS = ("pooling", "resolution", "optimizer", "scheduler", "data", "finetune", "experiment", "debug")
SKIP_OVERRIDES = ("hydra", "paths", "logger", "callbacks", "hparams_search", "ckpt_path", "task_name")
# Overrides that change how a run looks or how fast it loads, not what it learns: not columns.
PLUMBING = (
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps",
    "data.num_workers",
    "data.eval_batch_size",
    "data.pin_memory",
    "data.persistent_workers",
    "data.prefetch_factor",
    "data.loader.",
)


_ABSENT = object()


def _looks_like_path(value: Any) -> bool:
    text = str(value)
    return any(c in text for c in "/\\~") or text.endswith((".ckpt", ".pth", ".safetensors"))


def _is_size_key(key: str) -> bool:
    """Keys whose values are a side in one run and a list or ``h x w`` in another (always text)."""
    return key.rsplit(".", 1)[-1].endswith(("size", "sizes", "resolutions"))


def _column_value(key: str, value: Any) -> Any:
    """One type per column across every run: numbers (not bools) stay numbers, except size keys
    (``resolution.size`` is 40 in one job, ``[40,48]`` in another) and nulls, which are text."""
    value = _hparam_value(value)
    if _is_size_key(key) and not isinstance(value, str):
        return str(value)
    return value


def _hparam_value(value: Any) -> Any:
    """TensorBoard takes numbers, strings and booleans; anything else is shown as its text."""
    if isinstance(value, bool | int | float | str):
        return value
    if value is None:
        return "null"
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def _backbone_init(backbone: Mapping[str, Any]) -> str:
    """Where the backbone's weights came from, in one word (never the path)."""
    if backbone.get("init_from"):
        return "resflex run"
    if backbone.get("weights"):
        return "weights file"
    if backbone.get("pretrained"):
        return "pretrained"
    return "scratch"


def _size_text(value: Any) -> str:
    value = _hparam_value(value)
    return str(value).replace(" ", "")


def resolution_summary(resolution: Mapping[str, Any]) -> str:
    """The schedule's sizes in a few characters: ``64``, ``48→64``, ``[32,48,64]``, ``64→80 (fixres)``."""
    if resolution.get("sizes") is not None:
        return _size_text(resolution["sizes"])
    if resolution.get("start_size") is not None and resolution.get("end_size") is not None:
        return f"{_size_text(resolution['start_size'])}→{_size_text(resolution['end_size'])}"
    if resolution.get("test_size") is not None and resolution.get("size") is not None:
        return f"{_size_text(resolution['size'])}→{_size_text(resolution['test_size'])}"
    return _size_text(resolution.get("size", "?"))


def override_keys(overrides: Sequence[str]) -> list[str]:
    """Config keys and groups set on the command line (``optimizer.lr=0.01`` -> ``optimizer.lr``)."""
    keys = []
    for item in overrides:
        if "=" not in item:
            continue
        key = item.split("=", 1)[0].lstrip("+~").strip()
        if key.split(".", 1)[0].split("/", 1)[0] in SKIP_OVERRIDES or key in keys:
            continue
        if any(key == p or (p.endswith(".") and key.startswith(p)) for p in PLUMBING):
            continue
        keys.append(key)
    return keys


def run_hparams(
    cfg: DictConfig,
    choices: Mapping[str, Any],
    overrides: Sequence[str] = (),
    eval_size: str | None = None,
    swept: Sequence[str] | set[str] | None = None,
    text_keys: Sequence[str] | set[str] = (),
) -> tuple[dict[str, Any], list[str]]:
    """The HPARAMS columns of a run, and which of them differ between runs (they sort first).

    Columns: :data:`KEY_HPARAMS` (same names in every run, so a logdir of many
    runs lines up), :data:`EVAL_SIZE_COLUMN` (the size behind ``val/acc``, e.g. ``64``), the
    group choices of :data:`CHOICE_GROUPS` that are set, and every key overridden on the command
    line. Every job of a sweep has the same overrides' keys, hence the same columns; each column
    holds one type (:func:`_column_value`). No ``_target_`` strings, no paths: an override whose
    value is a path (``data.root=...``) is left out. What differs: ``swept`` (the keys a sweep
    varies, :func:`resflex.sweeps.current_swept_keys`) when given, else every override.
    ``text_keys``: columns written as text whatever this run's value (a sweep over ``null,0.4``:
    :func:`resflex.sweeps.current_sweep_text_keys`).
    """
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(container, dict)
    backbone = container.get("backbone") or {}
    hparams: dict[str, Any] = {
        "backbone.name": backbone.get("name", "?"),
        "backbone.init": _backbone_init(backbone),
        "resolution.size": resolution_summary(container.get("resolution") or {}),
    }
    for group in CHOICE_GROUPS:
        if choices.get(group) not in (None, "null"):
            hparams[group] = str(choices[group])
    if eval_size is not None:
        hparams[EVAL_SIZE_COLUMN] = str(eval_size)
    for key in ("optimizer.lr", "optimizer.weight_decay", "data.batch_size", "trainer.max_epochs", "seed"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            hparams[key] = _hparam_value(value)
    summarized = set(hparams)  # the key columns: an override of resolution.size keeps its summary text
    varied = []
    for key in override_keys(overrides):
        if key in choices:  # a group choice: its column is the group name
            if choices.get(key) not in (None, "null"):
                hparams.setdefault(key, str(choices[key]))
                varied.append(key)
            continue
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if value is _ABSENT or key.endswith("_target_") or OmegaConf.is_dict(value):
            continue
        if _looks_like_path(value):
            continue
        if key not in summarized:
            value = _column_value(key, value)
            hparams[key] = str(value) if key in text_keys and not isinstance(value, str) else value
        varied.append(key)
    if "backbone.name" in varied or "backbone" in varied:
        varied = [k for k in varied if k != "backbone"] + ["backbone.name"]
    hparams.pop("backbone", None)
    if swept:
        names = {"backbone.name" if k == "backbone" else k for k in swept}
        varied = [k for k in varied if k in names]
    ordered = {k: hparams[k] for k in sorted(hparams, key=lambda k: (k not in varied, k))}
    return ordered, sorted(set(varied))


def hparam_metric_tags(metrics: Mapping[str, Any]) -> list[str]:
    """The final metrics shown after the hyperparameters: the real tags, read as their last value."""
    # <monitor>_best, a per-size monitor's (val/acc@32_best) included: listed once, with the best scores
    best = sorted(k for k in metrics if k.endswith("_best") and k not in HPARAM_METRICS)
    sized = sorted((k for k in metrics if k.startswith("val/acc@") and k not in best), key=_size_key)
    tags = [*HPARAM_METRICS, *best, *sized]
    return [t for t in tags if isinstance(metrics.get(t), int | float) and metrics.get(t) is not True]


def _size_key(tag: str) -> tuple[int, str]:
    size = tag.split("@", 1)[1]
    head = size.split("x", 1)[0]
    return (int(head) if head.isdigit() else 0, size)


def shown_first(hparams: Mapping[str, Any], varied: Sequence[str]) -> set[str]:
    """The HPARAMS columns TensorBoard should show without a click.

    TensorBoard's table shows the first five columns of its hyper-parameter
    list and hides the rest behind checkboxes; it puts the ``differs`` ones
    first (then by name). So the keys chosen on the command line are marked,
    and :data:`SHOWN_BY_DEFAULT` fills the remaining places: which pooling,
    which schedule at what size, which backbone, which learning rate.
    """
    marked = [k for k in varied if k in hparams]
    for key in SHOWN_BY_DEFAULT:
        if len(marked) >= TENSORBOARD_SHOWN_COLUMNS:
            break
        if key in hparams and key not in marked:
            marked.append(key)
    return set(marked)


def _experiment_summary(hparams: Mapping[str, Any], varied: Sequence[str], metric_tags: Sequence[str]) -> Any:
    """TensorBoard's hparams ``experiment`` summary: the column list, varied ones marked (TensorBoard puts
    ``differs`` columns first), and the metric columns limited to the final metrics; without it
    TensorBoard makes every scalar tag (``epoch``, each LR group, ...) a column."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    infos = []
    first = shown_first(hparams, varied)
    for name, value in hparams.items():
        kind = "DATA_TYPE_STRING"
        if isinstance(value, bool):
            kind = "DATA_TYPE_BOOL"
        elif isinstance(value, int | float):
            kind = "DATA_TYPE_FLOAT64"
        infos.append(api_pb2.HParamInfo(name=name, type=api_pb2.DataType.Value(kind), differs=name in first))
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metric_tags]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos)
    content = plugin_data_pb2.HParamsPluginData(experiment=experiment, version=metadata.PLUGIN_DATA_VERSION)
    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
    return Summary(
        value=[Summary.Value(tag=metadata.EXPERIMENT_TAG, metadata=SummaryMetadata(plugin_data=plugin))]
    )


def log_hparams_with_metrics(
    trainer: pl.Trainer, hparams: dict[str, Any], metrics: Mapping[str, Any], varied: Sequence[str] = ()
) -> None:
    """One HPARAMS entry per run: its hyperparameters, with its final metrics beside them.

    TensorBoard: the experiment (columns), session start (values) and session
    end summaries; the metric columns name the run's real tags (``val/acc``,
    ``val/acc@48``, ...), whose last value TensorBoard reads, so nothing extra
    (no ``hp/*`` charts) is written to SCALARS. TensorBoard takes the column
    list from the first run it finds, which is why every run writes the same
    :data:`KEY_HPARAMS`. Other loggers get the hyperparameters as parameters
    (MLflow params, the CSV logger's ``hparams.yaml``); they already hold the
    metrics.
    """
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    tags = hparam_metric_tags(metrics)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams)  # hparams.yaml (no summaries without metrics)
            _, start, end = hparams_summaries(hparams, {})
            writer = tensorboard_file_writer(logger.experiment)
            writer.add_summary(_experiment_summary(hparams, varied, tags), trainer.global_step)
            writer.add_summary(start, trainer.global_step)
            writer.add_summary(end, trainer.global_step)
            logger.experiment.flush()
        else:
            logger.log_hyperparams(hparams)
        logger.save()
