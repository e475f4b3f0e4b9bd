"""Which checkpoint is "best": the metric ``callbacks.model_checkpoint.monitor`` names, checked before fit.

``val/acc`` (the default) is accuracy at the main evaluation size only. To select
the checkpoint that holds up across sizes, monitor a robustness summary
(:mod:`resflex.training.robustness`)::

    python scripts/train.py callbacks.model_checkpoint.monitor=val/acc_mean_sizes

By default every epoch validates at the main size only (``eval.sizes_every_epoch=false``),
so those summaries would be computed over that one size and select exactly what
``val/acc`` selects. A monitor that needs every evaluation size therefore turns on
per-epoch validation at every size for the run (said once on the console; it costs
the extra sizes' forward passes each epoch). A monitor no validation logs, or a loss
maximised, stops the run before training with a one-line error and a hint, instead
of Lightning's error after the first epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from resflex.errors import ConfigError
from resflex.runtime import size_tag

log = logging.getLogger("resflex")

#: per-epoch validation tags that exist at the main size alone
MAIN_SIZE_METRICS = ("val/acc", "val/loss", "val/acc_top5")
#: summaries over every evaluation size (resflex.training.robustness)
SIZE_SUMMARY_METRICS = (
    "val/acc_worst",
    "val/acc_mean_sizes",
    "val/acc_range",
    "val/acc_range_low",
    "val/acc_range_high",
)


def monitor_needs_every_size(monitor: str, size_tags: Sequence[str]) -> bool:
    """True when ``monitor`` is only meaningful with every evaluation size validated each epoch.

    ``size_tags``: the evaluation sizes as written in tags (``64``, ``48x80``), the main size first.
    """
    if len(size_tags) < 2:
        return False
    if monitor in SIZE_SUMMARY_METRICS:
        return True
    for prefix in ("val/acc@", "val/loss@"):
        if monitor.startswith(prefix):
            return monitor[len(prefix) :] != size_tags[0]
    return False


def check_monitor(
    monitor: str | None, mode: str | None, size_tags: Sequence[str], top5: bool = False
) -> None:
    """Refuse a checkpoint monitor that no validation epoch logs, or a loss selected by its maximum."""
    if monitor is None:
        return
    plain = [m for m in MAIN_SIZE_METRICS if top5 or m != "val/acc_top5"] + list(SIZE_SUMMARY_METRICS)
    per_size = [f"val/{kind}@{tag}" for tag in size_tags for kind in ("acc", "loss")]
    if monitor.startswith("val/") and monitor not in plain + per_size:
        raise ConfigError(
            f"callbacks.model_checkpoint.monitor={monitor} is not logged by the validation; "
            f"it logs {', '.join(plain)} and per size {', '.join(per_size[::2])} (and val/loss@...)",
            hint="callbacks.model_checkpoint.monitor=val/acc_mean_sizes (the mean over evaluation sizes)",
        )
    if monitor.rsplit("/", 1)[-1].startswith("loss") and mode == "max":
        raise ConfigError(
            f"callbacks.model_checkpoint.monitor={monitor} is a loss, selected by its maximum",
            hint="callbacks.model_checkpoint.mode=min",
        )


def apply_monitor(cfg: DictConfig, datamodule: Any, top5: bool = False) -> str | None:
    """Check the run's checkpoint monitor (:func:`check_monitor`) and, when it needs every evaluation
    size, have ``datamodule`` validate at every size every epoch; returns the monitor."""
    monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor", default=None)
    if monitor is None:
        return None
    mode = OmegaConf.select(cfg, "callbacks.model_checkpoint.mode", default="min")
    tags = [size_tag(*size) for size in datamodule.eval_sizes]
    check_monitor(str(monitor), mode, tags, top5)
    if monitor_needs_every_size(str(monitor), tags) and not datamodule.eval_sizes_every_epoch:
        datamodule.eval_sizes_every_epoch = True
        log.info(
            "checkpoint selection reads %s, which needs every evaluation size (%s): every epoch validates "
            "at all of them (eval.sizes_every_epoch=true)",
            monitor,
            ", ".join(tags),
        )
    return str(monitor)
