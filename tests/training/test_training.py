"""Real training runs must learn: accuracy far above chance on the embedded default data, and the
``debug=overfit`` preset drives the loss of its few batches down.

In-process through the same ``train(cfg)`` the CLI runs (the CLI itself is covered in test_cli.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from resflex.train import train
from tests.conftest import LEARNING_RUN, TINY, TINY_SYNTHETIC, scalar_tags
from tests.test_configs import compose_train

CHANCE = 0.1  # 10 balanced classes


def test_short_training_on_default_data_beats_chance(tmp_path: Path) -> None:
    overrides = [
        *LEARNING_RUN,
        "data.source.num_val=200",
        "data.source.num_test=0",
        "eval.resolutions=[]",  # learning is the point here; sizes: tests/training/test_multires_eval.py
    ]
    record = train(compose_train(overrides, tmp_path))
    assert record["status"] == "completed"
    val_acc = [v for _, v in sorted(scalar_tags(tmp_path)["val/acc"])]
    assert len(val_acc) == 4, val_acc
    assert val_acc[-1] >= 3 * CHANCE, val_acc
    assert val_acc[-1] > val_acc[0], val_acc
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["val/acc"] == val_acc[-1]


def test_overfit_preset_drives_the_training_loss_down(tmp_path: Path) -> None:
    """debug=overfit: the same 2 batches for 20 epochs; the loss on them must fall far."""
    overrides = [
        *(a for a in TINY if not a.startswith(("trainer.max_epochs", "trainer.limit_train"))),
        *TINY_SYNTHETIC,
        "debug=overfit",
        "eval.resolutions=[]",
        "test_after_fit=false",
    ]
    record = train(compose_train(overrides, tmp_path))
    assert record["status"] == "completed"
    losses = [v for _, v in sorted(scalar_tags(tmp_path)["train/loss"])]
    assert len(losses) == 20 * 2, len(losses)  # max_epochs=20, overfit_batches=2: the preset's values
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.5 * first, (first, last)
