"""A short real training run on the embedded default data must learn: accuracy far above chance."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli, scalar_tags

CHANCE = 0.1  # 10 balanced classes


def test_short_training_on_default_data_beats_chance(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            "backbone.name=test_resnet",
            "data.source.num_train=800",
            "data.source.num_val=200",
            "data.source.num_test=0",
            "data.num_workers=0",
            "data.batch_size=16",
            "resolution.size=32",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=4",
            "trainer.enable_progress_bar=false",
            "optimizer.lr=0.004",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    val_acc = [v for _, v in scalar_tags(run_dir)["val/acc"]]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "completed"
    assert val_acc[-1] >= 3 * CHANCE, val_acc
    assert val_acc[-1] > val_acc[0], val_acc
