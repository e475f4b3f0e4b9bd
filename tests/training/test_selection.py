"""Checkpoint selection's checks before fit (resflex.training.selection): the monitors a run's validation
logs are accepted, a loss is never selected by its maximum whatever its size suffix, and a config
without ``mode`` is Lightning's default (min)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from resflex.errors import ConfigError
from resflex.training.selection import apply_monitor, check_monitor

SIZES = ["32", "16", "48x80"]  # as tags: the main size first


def test_top5_is_a_monitor_exactly_when_the_run_logs_it() -> None:
    check_monitor("val/acc_top5", "max", SIZES, top5=True)
    with pytest.raises(ConfigError, match="val/acc_top5 is not logged"):
        check_monitor("val/acc_top5", "max", SIZES, top5=False)


@pytest.mark.parametrize("monitor", ["val/loss", "val/loss@16", "val/loss@48x80"])
def test_a_loss_at_any_size_selected_by_its_maximum_is_refused(monitor: str) -> None:
    """``val/loss@16`` is as much a loss as ``val/loss``: maximising it keeps the worst checkpoint."""
    check_monitor(monitor, "min", SIZES)
    with pytest.raises(ConfigError, match="is a loss, selected by its maximum") as info:
        check_monitor(monitor, "max", SIZES)
    assert info.value.hint == "callbacks.model_checkpoint.mode=min"


def test_a_monitor_without_mode_is_minimised_as_lightning_does() -> None:
    """ModelCheckpoint's default mode is min: a loss monitor without ``mode`` is fine, not refused."""
    data = SimpleNamespace(eval_sizes=[(32, 32), (16, 16)], eval_sizes_every_epoch=False)
    cfg = OmegaConf.create({"callbacks": {"model_checkpoint": {"monitor": "val/loss@16"}}})
    assert apply_monitor(cfg, data) == "val/loss@16"
    assert data.eval_sizes_every_epoch is True  # a size other than the main one: every size, every epoch
