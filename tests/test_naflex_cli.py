"""backbone=naflexvit resolution=naflex from the command line: bad combinations refused before any work,
a short run's metrics, and (slow) a real run that learns."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from resflex.errors import ConfigError
from resflex.models.naflex import check_naflex_config
from tests.conftest import load_experiment, make_image_folder, run_cli, scalar_tags, train_run
from tests.test_cli import assert_one_line_error
from tests.test_configs import compose_train

NAFLEX = ("backbone=naflexvit", "resolution=naflex")
SMALL_MODEL = (
    "backbone.model_kwargs.embed_dim=24",
    "backbone.model_kwargs.depth=1",
    "backbone.model_kwargs.num_heads=2",
)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["resolution=naflex"], "backbone resnet18 takes image batches"),
        (["resolution=naflex", "backbone=vit_small_patch16"], "takes image batches"),
        (["backbone=naflexvit"], "hint: resolution=naflex"),
        (
            [*NAFLEX, "resolution.patch_size=16"],
            "resolution.patch_size=16 but naflexvit_base_patch16_gap takes 8x8",
        ),
        ([*NAFLEX, "backbone.model_kwargs.patch_size=16", "resolution.patch_size=8"], "takes 16x16 patches"),
        ([*NAFLEX, "resolution.tokens_per_batch=95"], "below one image at the longest sequence (96 tokens)"),
        ([*NAFLEX, "backbone.name=resnet18", "~backbone.model_kwargs"], "not a NaFlex vision transformer"),
        ([*NAFLEX, "model.mixup=0.2"], "model.mixup=0.2"),
        ([*NAFLEX, "data.augment.random_erasing=0.25"], "model.random_erasing=0.25"),
        # ignored without a word before, where scripts/eval.py refused it (found by a ViT audit)
        ([*NAFLEX, "eval.resolutions=[32,48]"], "[32, 48] sizes images, and this NaFlex run"),
        ([*NAFLEX, "resolution.batch_scaling=true"], "a NaFlex batch is already sized by its tokens"),
    ],
)
def test_bad_combinations_are_refused_from_the_config(
    overrides: list[str], fragment: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        check_naflex_config(compose_train(overrides, tmp_path))
    message = str(info.value)
    assert fragment in message and "\n" not in message and "hint:" in message


def test_good_combinations_pass(tmp_path: Path) -> None:
    check_naflex_config(compose_train(list(NAFLEX), tmp_path))
    check_naflex_config(compose_train([], tmp_path))  # no NaFlex at all: nothing to check
    vit = ["backbone.name=vit_tiny_patch16_224", "~backbone.model_kwargs", "resolution.patch_size=16"]
    check_naflex_config(compose_train([*NAFLEX, *vit], tmp_path))


def test_cli_refuses_before_reading_any_data(tmp_path: Path) -> None:
    """The data root does not exist: the NaFlex refusal comes first, in one line, and nothing is written."""
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            "resolution=naflex",
            "data=imagefolder",
            f"data.root={tmp_path / 'missing'}",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert_one_line_error(result, "resolution=naflex makes token batches", "hint: backbone=naflexvit")
    assert not (run_dir / "checkpoints").exists()


def test_a_short_run_logs_padding_and_evaluates_at_each_sequence_length(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images", per_class=10, splits=("train", "val"))
    record = train_run(
        [
            *NAFLEX,
            *SMALL_MODEL,
            "data=imagefolder",
            f"data.root={folder}",
            "data.num_workers=0",
            "data.batch_size=4",
            "resolution.tokens_per_batch=null",
            "resolution.seq_lens=[16,32]",
            "resolution.max_seq_len=32",
            "eval.seq_lens=[16]",
            "trainer.max_epochs=1",
            "trainer.num_sanity_val_steps=0",
            "trainer.enable_progress_bar=false",
            "logger=tensorboard",
        ],
        tmp_path / "run",
    )
    assert record["status"] == "completed"
    metrics = record["metrics"]
    assert 0 <= metrics["train/padding_share"] < 0.5
    assert {"val/acc", "val/acc@32", "val/acc@16"} <= set(metrics)
    tags = scalar_tags(tmp_path / "run")
    assert {v for _, v in tags["train/resolution"]} <= {16.0, 32.0}  # the steps' sequence lengths


def _make_digits() -> ModuleType:
    return load_experiment("naflex", "make_digits")


@pytest.mark.slow
def test_naflex_defaults_learn_variable_aspect_digits(tmp_path: Path) -> None:
    """The defaults (``backbone=naflexvit resolution=naflex``, nothing else but the data) learn: a shorter
    version of issue 30's target (4,000 digits, 5 epochs, val/acc >= 0.5; measured in experiments/naflex/)."""
    _make_digits().build(tmp_path / "digits", train_per_class=400, val_per_class=50, seed=1)
    run_dir = tmp_path / "run"
    result = run_cli(
        [*NAFLEX, "data=imagefolder", f"data.root={tmp_path / 'digits'}", "trainer.max_epochs=5",
         "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    # issue 30's target; chance: 0.1; the study's folder: 0.65-0.70 at the default budget (experiments/naflex)
    assert metrics["val/acc"] >= 0.5
    assert metrics["train/padding_share"] <= 0.1
