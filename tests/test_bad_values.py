"""Every number of the training config, given a word or a negative, is refused in one line before the first
training step: the keys resflex owns in its constructors and checks, Lightning's trainer and callback keys
through the trainer and callback builders, the synthetic data's keys. A key added without a check fails
here (a traceback from deep inside, or a run that trains on a nonsense value)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
from omegaconf import DictConfig, ListConfig, OmegaConf

from resflex.errors import find_user_error
from tests.conftest import TINY, TINY_SYNTHETIC
from tests.test_configs import compose_train

BASE = [*TINY, *TINY_SYNTHETIC, "logger=none"]


def base(option: str | None) -> list[str]:
    """The tiny run with ``option``; a schedule other than fixed has no ``resolution.size``."""
    if option is None:
        return BASE
    keep = [o for o in BASE if not (option.startswith("resolution=") and o.startswith("resolution."))]
    return [*keep, option]


#: free text, or set by the run: any string is a value
FREE_TEXT = {
    "logger.csv.name",
    "logger.csv.version",
    "task_name",
    "data.name",
    "callbacks.model_checkpoint.filename",
    "callbacks.last_checkpoint.filename",
}


def leaves(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every plain leaf: no interpolation, list, null or switch (the CLI checks
    switches), and not Hydra's own node."""
    for key in node:
        if key == "hydra" or str(key).startswith("_"):
            continue
        child = node._get_node(key)
        if child is None or child._is_interpolation():
            continue
        if isinstance(child, DictConfig):
            yield from leaves(child, f"{prefix}{key}.")
        elif not isinstance(child, ListConfig):
            value = child._value()
            if value is not None and not isinstance(value, bool) and value != "???":
                yield f"{prefix}{key}", value


#: group options whose own keys are swept too (data=imagefolder/fashion_mnist read a folder first, and
#: resolution=naflex needs its backbone: their keys have tests of their own)
OPTIONS = [
    *(f"resolution={o}" for o in ("progressive", "random", "multiscale", "multigrid", "fixres")),
    *(f"optimizer={o}" for o in ("sgd", "lamb", "lion")),
    *(f"scheduler={o}" for o in ("step", "plateau", "constant")),
    *(f"finetune={o}" for o in ("linear_probe", "gradual")),
    *(f"pooling={o}" for o in ("avg", "max", "avgmax", "gem")),
    "logger=csv",
]


def bad_values() -> list[tuple[str, str, str | None]]:
    """(key, bad value, the group option it needs or None): every leaf of the default config, then the
    leaves each option in :data:`OPTIONS` adds or changes under its group."""
    default = dict(leaves(compose_train(BASE, Path("unused"))))
    keyed = [(key, value, None) for key, value in default.items()]
    for option in OPTIONS:
        group = option.split("=")[0]
        for key, value in leaves(compose_train(base(option), Path("unused"))):
            if key.split(".")[0] == group and default.get(key, object()) != value:
                keyed.append((key, value, option))
    cases: list[tuple[str, str, str | None]] = []
    for key, value, option in keyed:
        if isinstance(value, int | float):
            cases += [(key, "abc", option), (key, "-7", option)]
        elif isinstance(value, str) and key not in FREE_TEXT:
            cases.append((key, "zzz_bad", option))
    return cases


CASES = bad_values()


def test_the_sweep_covers_the_config() -> None:
    """The cases come from the composed configs (a broken walk would make the test below vacuous)."""
    keys = {key for key, _, _ in CASES}
    assert len(keys) > 60
    assert {"trainer.accumulate_grad_batches", "data.prefetch_factor", "model.ema_decay"} <= keys
    assert {"data.source.noise", "callbacks.model_checkpoint.mode", "pooling.level_scale_init"} <= keys
    assert {"optimizer.momentum", "resolution.end_size", "finetune.unfreeze_warmup_epochs"} <= keys


class FitStarted(Exception):
    """Training would have started: the bad value got through every check."""


@pytest.mark.parametrize(
    ("key", "value", "option"), CASES, ids=[f"{o + ' ' if o else ''}{k}={v}" for k, v, o in CASES]
)
def test_a_bad_value_is_one_line_before_training(
    key: str, value: str, option: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resflex.train import train

    def refuse_to_fit(*args: object, **kwargs: object) -> None:
        raise FitStarted(f"{key}={value} reached trainer.fit")

    monkeypatch.setattr(pl.Trainer, "fit", refuse_to_fit)
    cfg = compose_train([*base(option), f"{key}={value}"], tmp_path)
    saved = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    logging.disable(logging.CRITICAL)
    try:
        with pytest.raises(BaseException) as info:
            train(saved)
    finally:
        logging.disable(logging.NOTSET)
    error = find_user_error(info.value)
    assert error is not None, f"{key}={value}: {type(info.value).__name__}: {info.value}"
    assert key.rsplit(".", 1)[0].split(".")[0] in error.one_line(), error.one_line()
