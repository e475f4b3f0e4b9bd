"""Type and range checks of the scalar knobs, before any work starts.

Objects validate their own arguments when they are built (pooling levels,
sizes, probabilities, data roots...). These are the plain numbers that go
straight into torch or Lightning, where a wrong type would surface as a deep
traceback (``'<' not supported between 'str' and 'float'``) much later. A
structured-config schema would need every group's full shape; a table of the
keys users actually override says the same in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from resflex.errors import ConfigError

Rule = tuple[str, type, Callable[[Any], bool], str]

RULES: tuple[Rule, ...] = (
    ("seed", int, lambda v: v >= 0, "an integer >= 0"),
    ("optimizer.lr", float, lambda v: v > 0, "a positive number"),
    ("optimizer.weight_decay", float, lambda v: v >= 0, "a number >= 0"),
    ("optimizer.momentum", float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("data.batch_size", int, lambda v: v >= 1, "a positive integer"),
    ("data.num_workers", int, lambda v: v >= 0, "an integer >= 0 or auto"),
    ("model.dropout", float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("model.label_smoothing", float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("scheduler.warmup_epochs", float, lambda v: v >= 0, "a number >= 0"),
    ("scheduler.min_lr_ratio", float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("trainer.max_epochs", int, lambda v: v >= 1 or v == -1, "a positive integer (or -1)"),
    ("trainer.log_every_n_steps", int, lambda v: v >= 1, "a positive integer"),
)

#: keys that also accept a word instead of a number
WORDS: dict[str, tuple[str, ...]] = {"data.num_workers": ("auto",)}


def _typed(value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        return None
    if kind is float and isinstance(value, int | float):
        return float(value)
    if kind is int and isinstance(value, int):
        return value
    return None


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first key whose value has the wrong type or range."""
    for key, kind, ok, allowed in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None or value in WORDS.get(key, ()):
            continue
        typed = _typed(value, kind)
        if typed is None or not ok(typed):
            raise ConfigError(
                f"{key}={value!r} is invalid: expected {allowed}", hint=f"e.g. fix {key} on the command line"
            )
