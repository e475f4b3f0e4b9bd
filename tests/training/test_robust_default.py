"""Issue 26, size robustness: the default run (BatchNorm statistics calibrated per evaluation size after
fit, the scale-consistency term: on 16 % of the steps a 0.6x view, or a 1.4x one a third of the time,
weight 0.75) against the default before the study (one size, statistics as trained, no term), the same
training otherwise, evaluated on the embedded shapes from 3/4x to 1 1/2x of the trained size.

Measured before these were written, at seeds 42 (the tests'), 1 and 2, with one thread (``make
test-slow``'s workers on 2 cores) and two (a serial run): the short run below, trained at 32 px to
about 0.5, keeps 40 and 48 px within 0.02 / 0.01 / 0.03 of its 32 px with one thread and 0.04 /
0.03 / 0.04 with two, where the run before the study falls 0.18 / 0.11 / 0.16 and 0.23 / 0.09 /
0.18 below; the spread over 24-48 px (best minus worst) 0.06 / 0.03 / 0.04 and 0.06 / 0.06 / 0.04
against 0.18 / 0.11 / 0.16 and 0.23 / 0.10 / 0.18. The issue's "within 0.05 from 3/4x" is not
asserted: at 24 px the default is 0.06 / -0.01 (above) / 0.04 and 0.06 / 0.02 / 0.03 below 32 px (its 0.6x
view at 32 px is 16 px, sides rounded to 8), a coin flip at this threshold (the run before the study
falls 0.04-0.13 there); the earlier form of this test (small objects, accuracy about 0.4, every size
within a few points of chance's three times) passed or failed with the thread count. The longer run,
trained at 48 px to about 0.85, two threads, seeds 42 / 0 / 1: spread before 0.23 / 0.31 / 0.22,
default 0.14 / 0.16 / 0.12 (narrower by 0.090 / 0.145 / 0.105), worst size +0.16 / +0.17 / +0.16, 48 px
+0.07 / -0.01 / +0.05. It does not stay within 0.05 either: at 3/4x the image holds less than at the
trained size (the study's specialists), so it asserts the gain, not flatness.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from resflex.train import train
from tests.conftest import LEARNING_RUN
from tests.test_configs import compose_train

#: the default before the robustness study: no calibration, no scale-consistency term
BEFORE = ("eval.bn_calibration=false", "model.scale_consistency=0")
#: shapes without distractors or noise: every size holds the class, so flatness is reachable
PLAIN_SHAPES = ("data.source.distractors=0", "data.source.noise=0", "data.source.num_val=200")
#: objects that fill most of the image: the class survives the smaller sizes
LARGE_OBJECTS = ("data.source.object_scale=[0.7,0.95]",)


def _test_accuracy(overrides: list[str], sizes: tuple[int, ...], run_dir: Path) -> dict[int, float]:
    record = train(compose_train(overrides, run_dir))
    assert record["status"] == "completed"
    return {s: record["metrics"][f"test/acc@{s}"] for s in sizes}


def _spread(acc: dict[int, float]) -> float:
    return max(acc.values()) - min(acc.values())


@pytest.mark.slow
def test_the_default_holds_its_trained_size_up_to_one_and_a_half_times_where_a_fixed_run_does_not(
    tmp_path: Path,
) -> None:
    """Trained at 32 px for a few epochs on shapes that fill most of the image: the default keeps
    40 and 48 px within 0.05 of 32 px, where the run before the study does not, its spread over
    24-48 px is far narrower, and it is far above chance."""
    sizes = (24, 32, 40, 48)
    overrides = [
        *LEARNING_RUN,
        *PLAIN_SHAPES,
        *LARGE_OBJECTS,
        "data.source.num_test=400",
        "eval.resolutions=[24,32,40,48]",
    ]
    before = _test_accuracy([*overrides, *BEFORE], sizes, tmp_path / "before")
    default = _test_accuracy(overrides, sizes, tmp_path / "default")
    assert min(default[40], default[48]) >= default[32] - 0.05, default
    assert min(before[40], before[48]) < before[32] - 0.05, before
    assert _spread(default) <= _spread(before) - 0.03, (before, default)
    assert min(default.values()) >= 3 * 0.1, default  # 10 classes: chance is 0.1


@pytest.mark.slow
def test_a_longer_run_keeps_its_trained_size_and_gains_at_the_others(tmp_path: Path) -> None:
    """Trained at 48 px long enough to reach about 0.85: the default is level at 48 px, lifts the
    worst of 36-72 px by a wide margin and narrows the spread (the regime of the study's runs)."""
    sizes = (36, 48, 60, 72)
    overrides = [
        *LEARNING_RUN,
        *PLAIN_SHAPES,
        "data.source.num_train=1600",
        "data.source.num_test=400",
        "trainer.max_epochs=6",
        "resolution.size=48",
        "eval.resolutions=[36,48,60,72]",
    ]
    before = _test_accuracy([*overrides, *BEFORE], sizes, tmp_path / "before")
    default = _test_accuracy(overrides, sizes, tmp_path / "default")
    assert default[48] >= before[48] - 0.05, (before, default)
    assert min(default.values()) >= min(before.values()) + 0.05, (before, default)
    assert _spread(default) <= _spread(before) - 0.03, (before, default)
