"""A batch that cannot fit the device is refused before any work, in one line naming its keys; a
training batch whose kept activations would not fit is warned about (resflex.models.batch_memory)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from torch import nn

from resflex.errors import ConfigError
from resflex.models.batch_memory import activations, check_batch_fits
from tests.conftest import TINY, TINY_SYNTHETIC
from tests.test_configs import compose_train

GIB = 2**30


def test_the_activations_are_the_leaf_outputs_counted_by_hand() -> None:
    """8 channels at 10x10 (800), an in-place ReLU on them (the same memory: not counted again), 4
    channels at 10x10 (400), then 4 pooled values."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
    ).to("meta")
    assert activations(model, (10, 10)) == (800, 800 + 400 + 4)
    assert activations(model, (20, 10)) == (1600, 1600 + 800 + 4)
    assert model.training  # the mode it came in


def test_a_batch_over_the_memory_is_refused_at_its_bound_and_not_below_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)).to("meta")
    need = 4 * (8 * 100 + 3 * 100) * 4  # a batch of 4, the largest layer and the input, float32
    check_batch_fits(model, (10, 10), 4, "resolution.size", "data.batch_size", (need, "the test's memory"))
    with pytest.raises(ConfigError) as info:
        check_batch_fits(
            model, (10, 10), 4, "resolution.size", "data.batch_size", (need - 1, "the test's memory")
        )
    assert info.value.one_line() == (
        "resolution.size=10x10: a batch of 4 images needs at least 17 MiB at its largest layer alone, more "
        "than the test's memory (hint: a smaller resolution.size, or a smaller data.batch_size)"
    ).replace("17 MiB", f"{need / 2**20:.1f} MiB")
    check_batch_fits(model, (10, 10), 4, "k", "b", (need - 1, "half"), element_bytes=2)  # bf16: fits
    assert not caplog.records


def test_a_size_far_too_large_is_refused_before_work_and_a_large_one_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``resolution.size=10000`` ran for a minute until the kernel killed the process without a word;
    a size whose training activations cannot fit is said to be likely to run out, and still runs."""
    from resflex import preflight

    monkeypatch.setattr(preflight, "device_memory", lambda accelerator: (GIB, "a 1.0 GiB machine"))
    cfg = compose_train([*TINY, *TINY_SYNTHETIC, "resolution.size=4096"], tmp_path)
    with pytest.raises(ConfigError, match=r"resolution\.size=4096x4096: a batch of 8 images needs at least"):
        preflight.check_before_work(cfg)
    evaluation = compose_train([*TINY, *TINY_SYNTHETIC, "eval.resolutions=[32,4096]"], tmp_path)
    with pytest.raises(ConfigError, match=r"eval\.resolutions=4096x4096: .* data\.eval_batch_size"):
        preflight.check_before_work(evaluation)
    caplog.set_level(logging.WARNING, logger="resflex")
    warned = compose_train([*TINY, *TINY_SYNTHETIC, "resolution.size=1024", "eval.resolutions=[]"], tmp_path)
    assert preflight.check_before_work(warned) is None
    assert [r.getMessage() for r in caplog.records if "likely run out of memory" in r.getMessage()]
    caplog.clear()
    assert preflight.check_before_work(compose_train([*TINY, *TINY_SYNTHETIC], tmp_path)) is None
    assert not [r for r in caplog.records if "memory" in r.getMessage()]
