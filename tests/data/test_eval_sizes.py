"""``eval.resolutions``: the sizes ``auto`` picks, the unfit ones it drops, and how the training side
reads the loaders' sizes (:func:`resflex.data.eval_sizes.loader_sizes`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from resflex.data.eval_sizes import auto_eval_sizes, drop_unfit_sizes, loader_sizes, resolve_eval_resolutions
from resflex.errors import ConfigError


def test_auto_eval_sizes_are_around_the_main_size_rounded_to_the_multiple() -> None:
    assert auto_eval_sizes((64, 64), 8) == [(32, 32), (48, 48), (64, 64), (96, 96), (128, 128)]
    assert auto_eval_sizes((224, 224), 32) == [(128, 128), (160, 160), (224, 224), (352, 352), (448, 448)]
    assert auto_eval_sizes((48, 80), 8) == [(24, 40), (40, 64), (48, 80), (72, 120), (96, 160)]
    assert auto_eval_sizes((8, 8), 8) == [(8, 8), (16, 16)]  # never below the multiple, each size once
    # an odd main size is itself at 1x, with no rounded near-twin (32) beside it
    assert auto_eval_sizes((33, 33), 8) == [(16, 16), (24, 24), (33, 33), (48, 48), (64, 64)]

    class Schedule:
        eval_size, multiple = (64, 64), 8

    assert resolve_eval_resolutions("auto", Schedule()) == [32, 48, 64, 96, 128]
    assert resolve_eval_resolutions([40], Schedule()) == [40]

    class Wide:
        eval_size, multiple = (48, 80), 8

    # a non-square run: [h, w] entries, as eval.resolutions reads them (parse_size: [h, w])
    assert resolve_eval_resolutions("auto", Wide()) == [[24, 40], [40, 64], [48, 80], [72, 120], [96, 160]]

    def fits(size: tuple[int, int]) -> None:
        if size[0] < 40:
            raise ConfigError("too small")

    assert drop_unfit_sizes([(64, 64), (32, 32), (48, 48)], fits) == [(64, 64), (48, 48)]
    with pytest.raises(ConfigError):
        drop_unfit_sizes([(32, 32), (64, 64)], fits)  # the main size is not optional


def test_loader_sizes_are_the_data_modules_eval_sizes_by_loader_index() -> None:
    trainer = SimpleNamespace(datamodule=SimpleNamespace(eval_sizes=[(64, 64), (32, 48)]))
    assert loader_sizes(trainer) == [(64, 64), (32, 48)]
    assert loader_sizes(SimpleNamespace(datamodule=SimpleNamespace(eval_sizes=[[40, 40]]))) == [(40, 40)]
    # no trainer, a trainer fitted with plain loaders, a data module without sizes: none
    assert loader_sizes(None) is None
    assert loader_sizes(SimpleNamespace(datamodule=None)) is None
    assert loader_sizes(SimpleNamespace(datamodule=SimpleNamespace())) is None
