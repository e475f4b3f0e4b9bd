"""Issue #17: a run with EMA, mixing, random erasing, an augmentation policy and the plateau rule,
killed mid-epoch (SIGTERM) and resumed, ends with the same metrics and weights as an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import RESUME_RUN, run_cli
from tests.faults import sigterm_at

RECIPE_RUN = [
    *RESUME_RUN,
    # the recipe switches
    "model.ema=true",
    "model.ema_decay=0.9",
    "model.mixup=0.2",
    "model.cutmix=1.0",
    "model.mix_prob=0.7",
    "data.augment.random_erasing=0.5",
    "data.augment.auto=trivial",
    "data.augment.color_jitter=0.3",
    "scheduler=plateau",
    "scheduler.warmup_epochs=1",
    "scheduler.patience=0",
]


def test_sigterm_and_resume_with_the_recipe_switches_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    whole = run_cli([*RECIPE_RUN, f"hydra.run.dir={tmp_path / 'whole'}"], cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]

    run_dir = tmp_path / "killed"
    killed = run_cli(
        [
            *RECIPE_RUN,
            *sigterm_at(7),
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert killed.returncode == 143, killed.stderr[-3000:]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert saved["global_step"] == 7 and "current_model_state" in saved  # mid-epoch 2, with the EMA

    resumed = run_cli([*RECIPE_RUN, "ckpt_path=last", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = json.loads((tmp_path / "whole" / "metrics.json").read_text())["metrics"]
    got = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for key in ("val/loss", "val/acc", "train/loss", "train/acc", "train/megapixels"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    final = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
        for d in (tmp_path / "whole", run_dir)
    ]
    for part in ("state_dict", "current_model_state"):  # the EMA and the live weights
        for name, tensor in final[0][part].items():
            torch.testing.assert_close(
                final[1][part][name], tensor, rtol=1e-5, atol=1e-6, msg=f"{part} {name}"
            )
    assert final[0]["averaging_state"]["n_averaged"] == final[1]["averaging_state"]["n_averaged"] == 10
