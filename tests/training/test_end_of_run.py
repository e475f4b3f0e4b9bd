"""Results at a glance: accuracy vs size as one chart across runs, the end-of-run table, LR charts per curve.

One tiny real run (module fixture) is read back from its TensorBoard events, CSV file, ``metrics.json``
and console lines; the pure functions are checked on hand-made records (failed, interrupted, non-square).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from resflex.training.callbacks import lr_chart_names, refine_lr_classes
from resflex.training.end_of_run import (
    best_epoch,
    end_of_run_markdown,
    end_of_run_text,
    report_end_of_run,
    size_rows,
    tensorboard_logdir,
)
from resflex.training.resolution_eval import equivalent_side, size_curve_points
from resflex.training.robustness import range_phrase
from tests.conftest import TINY, TINY_SYNTHETIC, scalar_tags, train_run
from tests.training.test_logging_ui import read_events

SIDES = [16, 32, 48]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-step fit, validated and tested at 16, 32 (main) and 48 px, TensorBoard + CSV; its console lines."""
    run_dir = tmp_path_factory.mktemp("end_of_run") / "run"
    overrides = [
        *TINY,
        *TINY_SYNTHETIC,
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "eval.resolutions=[16,32,48]",
        "logger=[tensorboard,csv]",
    ]
    handler = _ListHandler()
    logger = logging.getLogger("resflex")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        record = train_run(overrides, run_dir, hydra_files=True)  # .hydra/: the model card
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert record["status"] == "completed"
    return {"dir": run_dir, "record": record, "lines": handler.lines}


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_overlay_tags_have_one_point_per_size_stepped_by_the_size(tiny_run: dict[str, Any]) -> None:
    metrics = json.loads((tiny_run["dir"] / "metrics.json").read_text())["metrics"]
    scalars = scalar_tags(tiny_run["dir"])
    for stage in ("val", "test"):
        for metric in ("acc", "loss"):
            points = sorted(scalars[f"eval/{stage}_{metric}_vs_size"])
            assert [step for step, _ in points] == SIDES
            for side, value in points:
                assert value == pytest.approx(metrics[f"{stage}/{metric}@{side}"], abs=1e-6)
    # the CSV logger gets the same points: rows whose step is the side
    with (tiny_run["dir"] / "csv" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("eval/test_acc_vs_size")]
    assert sorted(int(r["step"]) for r in rows) == SIDES


def test_size_summaries_are_logged_only_when_every_size_was_validated(tiny_run: dict[str, Any]) -> None:
    scalars = scalar_tags(tiny_run["dir"])
    # the epoch validated the main size alone (eval.sizes_every_epoch=false): val/acc only; the
    # validation after fit, at every size, gives the one mean over sizes
    assert len(scalars["val/acc"]) == 2 and len(scalars["val/acc@16"]) == 1
    assert len(scalars["val/acc_mean_sizes"]) == len(scalars["val/acc_worst"]) == 1
    metrics = json.loads((tiny_run["dir"] / "metrics.json").read_text())["metrics"]
    mean = sum(metrics[f"val/acc@{side}"] for side in SIDES) / len(SIDES)
    assert scalars["val/acc_mean_sizes"][0][1] == pytest.approx(mean, abs=1e-6)


def test_console_table_equals_metrics_json(tiny_run: dict[str, Any]) -> None:
    record = json.loads((tiny_run["dir"] / "metrics.json").read_text())
    metrics = record["metrics"]
    lines = tiny_run["lines"]
    start = next(k for k, line in enumerate(lines) if line.startswith("run completed"))
    header = lines[start + 1].split()
    assert header[:4] == ["size", "x", "main", "val"]
    rows = [line.split() for line in lines[start + 2 : start + 2 + len(SIDES)]]
    assert [int(row[0]) for row in rows] == SIDES
    assert [row[2] for row in rows] == ["0.5x", "1x", "1.5x"]  # x of the main size (32 px)
    best = max(metrics[f"test/acc@{side}"] for side in SIDES)
    for side, row in zip(SIDES, rows, strict=True):
        val_acc, val_loss, test_acc, test_loss = (float(v) for v in row[3:7])
        assert val_acc == pytest.approx(metrics[f"val/acc@{side}"], abs=5e-4)
        assert val_loss == pytest.approx(metrics[f"val/loss@{side}"], abs=5e-4)
        assert test_acc == pytest.approx(metrics[f"test/acc@{side}"], abs=5e-4)
        assert test_loss == pytest.approx(metrics[f"test/loss@{side}"], abs=5e-4)
        drop = best - metrics[f"test/acc@{side}"]
        assert row[7] == "best" if drop == 0 else float(row[7]) == pytest.approx(drop, abs=5e-4)
    text = "\n".join(lines[start:])
    run_dir = tiny_run["dir"]
    assert f"run folder: {run_dir}" in text and f"model card: {run_dir / 'model_card.md'}" in text
    assert str(record["best"]["checkpoint"]) in text and "tensorboard --logdir" in text
    assert "robustness (test): worst" in text and "wall time" in text
    # the range in words, from the run's own tags (never a bare "1x-1x")
    low, high = metrics["test/acc_range_low"], metrics["test/acc_range_high"]
    assert range_phrase(low, high) in text
    assert "within 0.03 of its best " + ("only at" if low == high else "from") in text
    assert not any(line.startswith("finished:") for line in lines)  # the dict of raw floats is gone


def test_tensorboard_has_the_summary_text_one_lr_chart_and_no_clutter(tiny_run: dict[str, Any]) -> None:
    events = read_events(tiny_run["dir"])
    summary = events["text"]["summary/results"]
    assert "| size | x main | val acc |" in summary and "| 48 px | 1.5x |" in summary
    scalars = scalar_tags(tiny_run["dir"])
    # the four parameter groups share one learning-rate curve: one chart, every step
    assert [t for t in scalars if t.startswith("train/lr")] == ["train/lr"]
    assert len(scalars["train/lr"]) == 2
    assert "data/bad_images" not in scalars  # no unreadable images: no chart of zeros
    assert "figures/confusion_matrix_val" in events["images"]  # one tag whatever the run's size
    assert not [t for t in events["images"] if t.startswith("figures/confusion_matrix_val@")]


def test_size_curve_points_put_non_square_sizes_at_the_side_of_equal_area() -> None:
    metrics = {
        "val/acc@48x80": 0.5,
        "val/loss@48x80": 1.2,
        "val/acc@64": 0.7,
        "test/acc@64": 0.1,
        "val/acc": 1,
    }
    assert equivalent_side(48, 80) == round(math.sqrt(48 * 80)) == 62
    assert size_curve_points(metrics, "val") == {
        62: {"eval/val_acc_vs_size": 0.5, "eval/val_loss_vs_size": 1.2},
        64: {"eval/val_acc_vs_size": 0.7},
    }
    rows = size_rows(metrics, main=(48, 80))
    assert [(row.label, round(row.scale, 3)) for row in rows] == [("48x80 px", 1.0), ("64 px", 1.033)]


def _record(**fields: Any) -> dict[str, Any]:
    metrics = {
        "val/acc": 0.8,
        "val/loss": 0.6,
        "val/acc@32": 0.4,
        "val/loss@32": 1.7,
        "val/acc@64": 0.8,
        "val/loss@64": 0.6,
        "val/acc@128": 0.7,
        "val/loss@128": None,  # NaN in the run: null in metrics.json
    }
    return {"status": "completed", "output_dir": "/r", "metrics": metrics, **fields}


def test_main_size_is_inferred_from_the_headline_and_drop_uses_val_without_test(tmp_path: Path) -> None:
    (tmp_path / "events.out.tfevents.1.host").touch()
    text = end_of_run_text(_record(wall_time_s=3723.0), tmp_path, log_root=tmp_path.parent)
    lines = text.splitlines()
    assert lines[1].split() == ["size", "x", "main", "val", "acc", "val", "loss", "drop", "(val)"]
    assert lines[2].split() == ["32", "px", "0.5x", "0.400", "1.700", "0.400"]
    assert lines[3].split() == ["64", "px", "1x", "0.800", "0.600", "best"]
    assert lines[4].split() == ["128", "px", "2x", "0.700", "-", "0.100"]
    assert "wall time 1 h 02 min" in text and f"tensorboard --logdir {tmp_path.parent}" in text
    assert "robustness (val): worst 0.400 at 32 px, mean over sizes 0.633" in text
    markdown = end_of_run_markdown(_record(), tmp_path)
    assert "| 128 px | 2x | 0.700 | - | 0.100 |" in markdown
    # paths and the command as code: Markdown would turn --logdir into an en dash
    assert f"- compare runs: `tensorboard --logdir {tmp_path}`" in markdown
    assert f"- run folder: `{tmp_path}`" in markdown
    assert tensorboard_logdir(Path("/elsewhere/run"), tmp_path) == Path("/elsewhere/run")
    assert best_epoch("ckpts/best-epoch012-acc0.8.ckpt") == 12 and best_epoch("last.ckpt") is None


def test_failed_and_interrupted_runs_print_what_exists(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    failed = {"status": "failed", "output_dir": str(tmp_path), "error": "DataError: no images", "metrics": {}}
    text = end_of_run_text(failed, tmp_path)
    assert text.splitlines()[0] == "run failed: DataError: no images"
    assert f"run folder: {tmp_path}" in text and "model card" not in text and "tensorboard" not in text
    interrupted = {
        "status": "interrupted",
        "output_dir": str(tmp_path),
        "checkpoint": str(tmp_path / "checkpoints" / "interrupted.ckpt"),
        "metrics": {"val/acc@32": 0.25, "train/loss": float("nan")},
    }
    text = end_of_run_text(interrupted, tmp_path, main=(32, 32))
    assert "run interrupted" in text and "interrupted.ckpt" in text and "0.250" in text
    with caplog.at_level(logging.INFO, logger="resflex"):
        report_end_of_run({"status": "failed"}, tmp_path)  # no metrics, no trainer: still its lines
    assert "run failed" in caplog.text and "could not" not in caplog.text

    class BrokenTrainer:
        datamodule = None

        @property
        def loggers(self) -> list[Any]:
            raise RuntimeError("logger gone")

    with caplog.at_level(logging.INFO, logger="resflex"):
        report_end_of_run(failed, tmp_path, trainer=BrokenTrainer())  # warns, never raises
    assert "could not write the end-of-run summary: logger gone" in caplog.text


def test_lr_groups_with_one_curve_share_one_chart_and_split_when_they_differ() -> None:
    tags = ["train/lr/backbone", "train/lr/backbone_no_wd", "train/lr/head", "train/lr/head_no_wd"]
    same = dict.fromkeys(tags, ("train/lr", 1.0, 0))
    classes = refine_lr_classes(same, dict.fromkeys(tags, 1e-3))
    assert lr_chart_names(classes) == {"train/lr/backbone": "train/lr"}
    # finetune.backbone_lr_mult=0.1: the backbone's two groups and the head's two are two curves
    lrs = {tags[0]: 1e-4, tags[1]: 1e-4, tags[2]: 1e-3, tags[3]: 1e-3}
    classes = refine_lr_classes(same, lrs)
    assert sorted(lr_chart_names(classes).values()) == ["train/lr/backbone", "train/lr/head"]
    # a later step where two merged groups differ splits them for good
    classes = refine_lr_classes(classes, {**lrs, tags[1]: 2e-4})
    assert sorted(lr_chart_names(classes).values()) == [*tags[:2], "train/lr/head"]
    classes = refine_lr_classes(classes, lrs)
    assert sorted(lr_chart_names(classes).values()) == [*tags[:2], "train/lr/head"]
    assert lr_chart_names({"train/lr": 0}) == {"train/lr": "train/lr"}  # one group, no group names


def test_a_naflex_runs_sizes_are_sequence_lengths_in_tokens_not_pixels() -> None:
    """The table, the robustness line and the status said "32 px" for a NaFlex run's 32-token sequences
    (found by a ViT audit)."""
    record = {
        "status": "completed",
        "choices": {"resolution": "naflex"},
        "metrics": {"val/acc": 0.5, "val/acc@64": 0.5, "val/acc@32": 0.25, "val/acc_worst": 0.25},
    }
    text = end_of_run_text(record, Path("run"))
    assert "32 tokens" in text and "64 tokens" in text and " px" not in text, text
    image_run = {**record, "choices": {"resolution": "fixed"}}
    assert "32 px" in end_of_run_text(image_run, Path("run"))
