"""Issue 26, size robustness: the default run (BatchNorm statistics calibrated per evaluation size after
fit, the scale-consistency term: a 0.6x or a 1.4x view on an eighth of the steps, weight 0.75) against
the default before the study (one size, statistics as trained, no term), the same training otherwise,
evaluated on the embedded shapes from 3/4x to 1 1/2x of the trained size.

Measured before these were written, with the term's earlier default (the 0.6x view on a quarter of
the steps; spread = best minus worst test accuracy over the sizes): the short run below at seeds 42
(the tests' seed), 1, 2: before 0.115 / 0.075 / 0.065, default 0.025 / 0.023 / 0.010; the longer run
at 48 px at seeds 0-2: before 0.31 / 0.24 / 0.37, default 0.13 / 0.08 / 0.20 (worst size +0.10 to
+0.12). With today's default (the same views at weight 0.75, experiments/robustness/README.md "Three-
quarter weight"), the longer run at seeds 0, 1 and 42 (the tests'): spread before 0.31 / 0.22 / 0.23,
default 0.13 / 0.15 / 0.18 (narrower by 0.18 / 0.08 / 0.05), worst size +0.19 / +0.16 / +0.10, 48 px
+0.01 / +0.08 / +0.05; at full weight the tests' seed narrows by 0.10. The longer run does not stay
within 0.05: at about 0.85 accuracy its 3/4x size holds less than the trained one (the specialists),
so it asserts the gain, not flatness.
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


def _test_accuracy(overrides: list[str], sizes: tuple[int, ...], run_dir: Path) -> dict[int, float]:
    record = train(compose_train(overrides, run_dir))
    assert record["status"] == "completed"
    return {s: record["metrics"][f"test/acc@{s}"] for s in sizes}


def _spread(acc: dict[int, float]) -> float:
    return max(acc.values()) - min(acc.values())


@pytest.mark.slow
def test_the_default_stays_within_0_05_from_three_quarters_to_one_and_a_half_times(tmp_path: Path) -> None:
    """The issue's test: trained at 32 px for a few epochs, the default keeps test accuracy at 24-48 px
    within 0.05 of its best, where the run before the study does not, and is far above chance."""
    sizes = (24, 32, 40, 48)
    overrides = [*LEARNING_RUN, *PLAIN_SHAPES, "data.source.num_test=400", "eval.resolutions=[24,32,40,48]"]
    before = _test_accuracy([*overrides, *BEFORE], sizes, tmp_path / "before")
    default = _test_accuracy(overrides, sizes, tmp_path / "default")
    assert _spread(default) <= 0.05, default
    assert _spread(before) > 0.05, before
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
