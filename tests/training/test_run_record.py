"""``<run>/metrics.json`` as :class:`resflex.training.run_record.RunRecord` writes it: its key order, the
parts left out when empty, and the parts kept although empty (readers tell "none" from "not known");
and what the end of a run prints from that record (:mod:`resflex.training.end_of_run`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from resflex.training.end_of_run import end_of_run_markdown, end_of_run_text
from resflex.training.finetune import Finetuning
from resflex.training.run_record import FillsRunRecord, RunRecord, attach_run_record


def test_a_fresh_record_is_status_folder_and_metrics_only() -> None:
    """Unset parts and empty parameter counts (a run that failed before fit) are left out, not null."""
    assert RunRecord(output_dir="run").as_dict() == {"status": "running", "output_dir": "run", "metrics": {}}


def test_the_keys_come_in_todays_order_with_metrics_last() -> None:
    record = RunRecord(
        output_dir="run",
        status="completed",
        overrides=["seed=1"],
        resumes=[["trainer.max_epochs=4"]],
        choices={"backbone": "resnet18"},
        data_profile={"images": 10},
        wall_time_s=12.5,
        params={"total": 3, "trainable": 2, "frozen": 1},
        best={"checkpoint": "best.ckpt"},
        measured_on={"test": {"checkpoint": "best.ckpt", "bn_calibration": False}},
        checkpoint="last.ckpt",
        error="boom",
        metrics={"val/acc": 0.5},
    )
    assert list(record.as_dict()) == [
        "status",
        "output_dir",
        "overrides",
        "resumes",
        "choices",
        "data_profile",
        "checkpoint",
        "error",
        "wall_time_s",
        "params",
        "best",
        "measured_on",
        "metrics",
    ]


def test_set_but_empty_or_zero_parts_are_kept() -> None:
    """A run started without overrides records ``overrides: []`` (the resume check compares with it;
    absent means "not known" and checks nothing); a zero wall time is a time, not a missing one."""
    out = RunRecord(output_dir="run", overrides=[], resumes=[[]], wall_time_s=0.0).as_dict()
    assert out["overrides"] == [] and out["resumes"] == [[]] and out["wall_time_s"] == 0.0


def test_every_callback_that_fills_the_record_gets_it_and_others_are_left_alone() -> None:
    record = RunRecord(output_dir="run")
    finetuning, other = Finetuning(), object()
    attach_run_record([finetuning, other], record)
    assert isinstance(finetuning, FillsRunRecord) and finetuning.run_record is record
    assert not hasattr(other, "run_record")


# ---- what the end of a run prints from its record (resflex.training.end_of_run) ----------------------
def _two_sizes(**fields: Any) -> dict[str, Any]:
    metrics = {"val/acc": 0.8, "val/loss": 0.6, "val/acc@32": 0.5, "val/acc@64": 0.8, "val/loss@64": 0.6}
    return {"status": "completed", "output_dir": "/r", "metrics": metrics, **fields}


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (59.94, "59.9 s"),
        (60.0, "1 min 00 s"),
        (3599.0, "59 min 59 s"),
        (3600.0, "1 h 00 min"),
        (7380, "2 h 03 min"),
    ],
)
def test_the_wall_time_reads_in_the_unit_its_size_calls_for(
    seconds: float, shown: str, tmp_path: Path
) -> None:
    text = end_of_run_text(_two_sizes(wall_time_s=seconds), tmp_path)
    assert f"wall time {shown}" in text.splitlines()


def test_one_size_has_no_robustness_line_and_two_sizes_do(tmp_path: Path) -> None:
    """Worst and mean over one size would be that size's accuracy twice: no line."""
    single = {"status": "completed", "metrics": {"val/acc": 0.8, "val/acc@64": 0.8}}
    assert "robustness" not in end_of_run_text(single, tmp_path)
    assert "robustness (val): worst 0.500 at 32 px, mean over sizes 0.650" in end_of_run_text(
        _two_sizes(), tmp_path
    )


def test_the_calibrated_value_beside_the_best_is_shown_only_when_val_was_measured_on_the_best(
    tmp_path: Path,
) -> None:
    """The post-calibration number is the *best checkpoint's* only when the final validation ran on it;
    after a validation of last.ckpt it would be another checkpoint's number printed as the best's."""
    best = {
        "checkpoint": "/r/checkpoints/best-epoch003-acc0.7500.ckpt",
        "monitor": "val/acc",
        "val/acc": 0.75,
    }
    on_best = {"val": {"checkpoint": "best-epoch003-acc0.7500.ckpt", "bn_calibration": True}}
    text = end_of_run_text(_two_sizes(best=best, measured_on=on_best), tmp_path)
    assert "best checkpoint: epoch 3, val/acc 0.7500 during training (0.8000 after calibration)" in text
    # the calibrated file is the best one: not named again
    assert (
        "val: after BatchNorm calibration (eval.bn_calibration); selected on val/acc 0.7500 before it" in text
    )
    on_last = {"val": {"checkpoint": "last.ckpt", "bn_calibration": True}}
    text = end_of_run_text(_two_sizes(best=best, measured_on=on_last), tmp_path)
    assert "best checkpoint: epoch 3, val/acc 0.7500, /r/checkpoints/best-epoch003-acc0.7500.ckpt" in text
    assert "val: after BatchNorm calibration (eval.bn_calibration) of last.ckpt; selected on val/acc" in text


def test_markdown_puts_an_interrupted_runs_checkpoint_path_in_a_code_span(tmp_path: Path) -> None:
    """Markdown would read the ``_`` of a path as emphasis: paths are code spans, numbers are not."""
    record = {
        "status": "interrupted",
        "checkpoint": "/runs/my_run/checkpoints/interrupted.ckpt",
        "metrics": {},
        "wall_time_s": 5.0,
    }
    markdown = end_of_run_markdown(record, tmp_path)
    assert "- checkpoint: `/runs/my_run/checkpoints/interrupted.ckpt`" in markdown
    assert "- train: " not in markdown and "- wall time 5.0 s" in markdown


def test_compare_runs_points_tensorboard_at_the_logs_root_that_holds_the_run(tmp_path: Path) -> None:
    """All runs under the root share one chart; a run outside it (hydra.run.dir elsewhere) is its own."""
    root = tmp_path / "logs"
    run = root / "train" / "runs" / "2026-12-07_08-00-00"
    run.mkdir(parents=True)
    (run / "events.out.tfevents.1.host").touch()
    lines = end_of_run_text(_two_sizes(), run, log_root=root).splitlines()
    assert f"compare runs: tensorboard --logdir {root}" in lines
    elsewhere = tmp_path / "elsewhere"
    lines = end_of_run_text(_two_sizes(), run, log_root=elsewhere).splitlines()
    assert f"compare runs: tensorboard --logdir {run}" in lines
