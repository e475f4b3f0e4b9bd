"""Every option of every config group is *run* once on tiny data, not only composed.

Options are combined so that a handful of in-process fits (a few seconds each) cover them all;
the list below is checked against the config folders, so a new option without a run fails here.
Not run on CPU: ``trainer=gpu`` / ``ddp`` (need GPUs; composed in tests/training/test_distributed.py,
``ddp_sim`` runs two processes there, marked slow), the backbones (built and run forward in
tests/models/test_models.py; here a tiny timm model stands in), ``hparams_search`` (tests/test_sweeps.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from resflex.config import group_options
from resflex.train import train
from tests.conftest import TINY, TINY_SYNTHETIC, make_image_folder
from tests.test_configs import compose_train

# Each run: its options, and the sizes that suit them (the tiny model needs sides >= 16).

RUNS: dict[str, list[str]] = {
    "sgd-step-gem-gradual-csv": [
        "optimizer=sgd",
        "scheduler=step",
        "pooling=gem",
        "finetune=gradual",
        "logger=csv",
        "resolution.size=32",
        "trainer.max_epochs=2",
    ],
    "lamb-constant-avgmax-linear_probe-progressive": [
        "optimizer=lamb",
        "scheduler=constant",
        "pooling=avgmax",
        "finetune=linear_probe",
        "logger=none",
        "resolution=progressive",
        "resolution.start_size=32",
        "resolution.end_size=48",
        "trainer.max_epochs=2",
    ],
    "lion-plateau-max-multigrid-cpu": [
        "optimizer=lion",
        "scheduler=plateau",
        "pooling=max",
        "resolution=multigrid",
        "resolution.size=64",
        "trainer=cpu",
        "logger=tensorboard",
        "trainer.max_epochs=2",
    ],
    "adamw-cosine-pyramid-fixres-full": [
        "optimizer=adamw",
        "scheduler=cosine",
        "pooling=pyramid",
        "resolution=fixres",
        "finetune=full",
        "resolution.size=32",
        "resolution.test_size=48",
        "trainer.max_epochs=2",
    ],
    "avg-random-imagefolder": [
        "pooling=avg",
        "resolution=random",
        "resolution.sizes=[24,32]",
        "data=imagefolder",
    ],
    "fixed-fast": ["resolution=fixed", "resolution.size=32", "debug=fast"],
    "multiscale-bn-per-size": [
        "resolution=multiscale",
        "resolution.size=32",
        "model.bn_stats_per_size=true",
        "resolution.final_epochs=1",
        "trainer.max_epochs=2",
    ],
    "fast_dev_run": ["debug=fast_dev_run", "resolution.size=32"],
    "multiscale_pyramid": [
        "experiment=multiscale_pyramid",
        "resolution.sizes=[24,32]",
        "eval.resolutions=[32]",
    ],
    "small_data_finetune": ["experiment=small_data_finetune", "resolution.size=32"],
}

# gpu/ddp need GPUs; ddp_sim: two processes (tests/training/test_distributed.py, slow); mlflow: a
# sqlite store (tests/training/test_logging_ui.py); overfit: tests/training/test_training.py;
# trainer=default: every other run; resolution=naflex needs backbone=naflexvit: tests/test_naflex_cli.py
COVERED_ELSEWHERE = {
    ("resolution", "naflex"),
    ("trainer", "gpu"),
    ("trainer", "ddp"),
    ("trainer", "ddp_sim"),
    ("trainer", "default"),
    ("logger", "mlflow"),
    ("debug", "overfit"),
}
# default options run in every test that does not override them
DEFAULTS = {("logger", "tensorboard"), ("callbacks", "default"), ("paths", "default"), ("data", "synthetic")}


def _options_in(overrides: list[str]) -> set[tuple[str, str]]:
    return {tuple(o.split("=", 1)) for o in overrides if "." not in o.split("=", 1)[0]}  # type: ignore[misc]


def test_the_runs_cover_every_option() -> None:
    covered = set().union(*(_options_in(o) for o in RUNS.values())) | COVERED_ELSEWHERE | DEFAULTS
    groups = ("optimizer", "scheduler", "pooling", "finetune", "logger", "resolution", "trainer", "debug",
              "experiment", "callbacks", "paths")  # fmt: skip
    missing = sorted((g, o) for g in groups for o in group_options(g) if (g, o) not in covered)
    assert not missing, f"options never run: {missing}"


@pytest.mark.parametrize("name", list(RUNS))
def test_option_runs(name: str, tmp_path: Path) -> None:
    overrides = [o for o in TINY if not o.startswith("resolution.size=")] + RUNS[name]
    if not any(o.startswith("eval.resolutions") for o in overrides):
        overrides.append("eval.resolutions=[]")
    if "data=imagefolder" in overrides:
        root = make_image_folder(tmp_path / "images", per_class=6, splits=("train", "val"))
        overrides.append(f"data.root={root}")
    else:
        overrides += TINY_SYNTHETIC
    record = train(compose_train(overrides, tmp_path))
    assert record["status"] == "completed", record
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert math.isfinite(metrics["train/loss"]) and 0 <= metrics["train/acc"] <= 1, metrics
    if name != "fast_dev_run":  # fast_dev_run writes no checkpoints by design
        assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
