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
    monitor: str | None,
    mode: str | None,
    size_tags: Sequence[str],
    top5: bool = False,
    key: str = "callbacks.model_checkpoint.monitor",
) -> None:
    """Refuse a monitor (``key``: the checkpoint's, or ``scheduler=plateau``'s) that no validation epoch
    logs, or a loss selected by its maximum."""
    if monitor is None:
        return
    plain = [m for m in MAIN_SIZE_METRICS if top5 or m != "val/acc_top5"] + list(SIZE_SUMMARY_METRICS)
    per_size = [f"val/{kind}@{tag}" for tag in size_tags for kind in ("acc", "loss")]
    if not monitor.startswith(("val/", "train/")):
        raise ConfigError(
            f"{key}={monitor} is no metric of the run: it logs train/... and "
            f"val/... ({', '.join(plain[:3])}, ...)",
            hint=f"{key}=val/acc",
        )
    if monitor.startswith("val/") and monitor not in plain + per_size:
        raise ConfigError(
            f"{key}={monitor} is not logged by the validation; "
            f"it logs {', '.join(plain)} and per size {', '.join(per_size[::2])} (and val/loss@...)",
            hint=f"{key}=val/acc_mean_sizes (the mean over evaluation sizes)",
        )
    if monitor.rsplit("/", 1)[-1].startswith("loss") and mode == "max":
        raise ConfigError(
            f"{key}={monitor} is a loss, selected by its maximum",
            hint=f"{key.rsplit('.', 1)[0]}.mode=min",
        )


def apply_monitor(cfg: DictConfig, datamodule: Any, top5: bool = False) -> str | None:
    """Check the run's checkpoint monitor and ``scheduler=plateau``'s (:func:`check_monitor`) and, when
    one needs every evaluation size, have ``datamodule`` validate at every size every epoch; returns the
    checkpoint's monitor."""
    tags = [size_tag(*size) for size in datamodule.eval_sizes]
    for node, reader in (
        ("callbacks.model_checkpoint", "checkpoint selection"),
        ("callbacks.last_checkpoint", "the last checkpoint"),
        ("scheduler", "scheduler=plateau"),
    ):
        monitor = OmegaConf.select(cfg, f"{node}.monitor", default=None)
        if monitor is None:
            continue
        mode = OmegaConf.select(cfg, f"{node}.mode", default="min")
        check_monitor(str(monitor), mode, tags, top5, key=f"{node}.monitor")
        if monitor_needs_every_size(str(monitor), tags) and not datamodule.eval_sizes_every_epoch:
            datamodule.eval_sizes_every_epoch = True
            log.info(
                "%s reads %s, which needs every evaluation size (%s): every epoch validates at all of them "
                "(eval.sizes_every_epoch=true)",
                reader,
                monitor,
                ", ".join(tags),
            )
    monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor", default=None)
    return None if monitor is None else str(monitor)
