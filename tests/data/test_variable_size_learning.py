"""On images of varied aspect, keep_aspect and squash must learn at least as fast as square crops.

Slow: real short training runs (``make test-slow``). Data: the embedded synthetic shapes,
whose canvases have independent sides (aspect ~0.4-2.5) and objects anywhere on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, scalar_tags

pytestmark = pytest.mark.slow

COMMON = (
    "backbone.name=test_resnet",
    "data.source.num_train=800",
    "data.source.num_val=300",
    "data.source.num_test=0",
    "data.source.min_side=24",
    "data.source.max_side=96",
    "data.num_workers=0",
    "data.batch_size=16",
    "resolution.size=32",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=4",
    "trainer.enable_progress_bar=false",
    "optimizer.lr=0.004",
)
# Measured first (2-core CPU, 2026-12-01): final val/acc square 0.357, keep_aspect 0.367, squash 0.360
# (pad 0.313: at 32 px padding costs pixels, experiments/variable_size/). A 4-epoch run moves by a few
# points between machines and library versions, so the assertion allows 0.03 below square. With the
# scale-consistency default (2026-12-06, seeds 42 / 1 / 2): square 0.407 / 0.367 / 0.380, keep_aspect
# 0.377 / 0.380 / 0.390: level, the tests' seed exactly 0.03 below (9 of the 300 val images), which
# the margin includes (a float tolerance, so 9 images read as 0.03 pass on either side of rounding).
# squash 0.347 / 0.367 / 0.327: 0.06 / 0.00 / 0.05 below square, so this test fails at the tests'
# seed (open: is squash behind at this budget with the term on, or is 4 epochs too noisy to tell?)
MARGIN = 0.03 + 1e-6


def _final_val_acc(tmp_path: Path, geometry: str) -> float:
    run_dir = tmp_path / geometry
    result = run_cli(
        [*COMMON, f"resolution.geometry={geometry}", f"hydra.run.dir={run_dir}"], tmp_path, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["data_profile"]["geometry"] == geometry
    return [v for _, v in scalar_tags(run_dir)["val/acc"]][-1]


def test_keep_aspect_and_squash_learn_at_least_as_fast_as_square(tmp_path: Path) -> None:
    square = _final_val_acc(tmp_path, "square")
    keep_aspect = _final_val_acc(tmp_path, "keep_aspect")
    squash = _final_val_acc(tmp_path, "squash")  # what geometry=auto picks for such data
    print(f"final val/acc: square {square:.3f}, keep_aspect {keep_aspect:.3f}, squash {squash:.3f}")
    assert square > 0.2, square  # all three really learn (chance 0.1)
    assert keep_aspect >= square - MARGIN, (keep_aspect, square)
    assert squash >= square - MARGIN, (squash, square)
