"""Which checkpoint a run folder stands for, and whose numbers its records are.

A run folder given to ``load_classifier``/``predict``/``eval``/``export`` is its best checkpoint (the
record's ``best.checkpoint``), else ``last.ckpt``; the model card names that file; readers of the
accuracy per size use a split's curve only for the checkpoint it was measured on (``measured_on``);
the end-of-run table labels numbers after BatchNorm calibration; ``eval.py``'s robust range is × of
the run's eval size. The run folders here are built from files, without training (the end-to-end
checks are in ``tests/test_predict.py``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from resflex.model_card import build_model_card
from resflex.run_folder import metrics_of_checkpoint, resolve_checkpoint_path, run_checkpoint
from resflex.training.end_of_run import end_of_run_text
from tests.test_model_card_robustness import fabricated_run, tags

BEST = "best-epoch000-acc0.0600.ckpt"
CURVE = {"32": 0.55, "48": 0.80, "64": 0.82, "96": 0.81, "128": 0.60}


def run_with_checkpoints(tmp_path: Path, record: dict, files: tuple[str, ...] = (BEST, "last.ckpt")) -> Path:
    """A run folder (config, metrics.json ``record``) with tensors-only checkpoint files ``files``."""
    run_dir = fabricated_run(tmp_path, record.get("metrics") or {})
    (run_dir / "metrics.json").write_text(json.dumps(record))
    (run_dir / "checkpoints").mkdir()
    for i, name in enumerate(files):
        torch.save({"state_dict": {"w": torch.full((2,), float(i))}}, run_dir / "checkpoints" / name)
    return run_dir


def best_record(**fields: object) -> dict:
    # the path as training wrote it: absolute, maybe of a folder since moved (only the name counts)
    best = {"val/acc": 0.06, "monitor": "val/acc", "epoch": 0, "checkpoint": f"/elsewhere/checkpoints/{BEST}"}
    return {"status": "completed", "best": best, **fields}


def test_a_run_folder_is_its_best_checkpoint_with_a_line_saying_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = run_with_checkpoints(tmp_path, best_record(metrics={"val/acc": 0.5}))
    with caplog.at_level(logging.INFO, logger="resflex"):
        chosen = resolve_checkpoint_path(run_dir)
    assert chosen == run_dir / "checkpoints" / BEST
    assert f"{BEST}, the run's best checkpoint by val/acc" in caplog.text
    assert resolve_checkpoint_path(run_dir / "checkpoints") == chosen  # its checkpoints/ folder too
    assert (
        resolve_checkpoint_path(run_dir / "checkpoints" / "last.ckpt").name == "last.ckpt"
    )  # a file: itself


def test_without_a_recorded_or_present_best_it_is_last_ckpt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone = run_with_checkpoints(tmp_path / "gone", best_record(), files=("last.ckpt",))
    with caplog.at_level(logging.INFO, logger="resflex"):
        assert resolve_checkpoint_path(gone) == gone / "checkpoints" / "last.ckpt"
    assert f"its best checkpoint {BEST} is not there" in caplog.text
    none = run_with_checkpoints(tmp_path / "none", {"status": "completed"})
    assert resolve_checkpoint_path(none).name == "last.ckpt"
    assert run_checkpoint(none)[1] == "the run records no best checkpoint"


def test_an_unreadable_best_checkpoint_falls_back_to_last(tmp_path: Path) -> None:
    run_dir = run_with_checkpoints(tmp_path, best_record())
    (run_dir / "checkpoints" / BEST).write_bytes(b"cut short")
    assert resolve_checkpoint_path(run_dir).name == "last.ckpt"


def test_the_model_card_names_the_file_a_run_folder_loads_and_says_what_its_numbers_are(
    tmp_path: Path,
) -> None:
    measured = {"val": {"checkpoint": BEST, "bn_calibration": True}}
    metrics = {"val/acc": 0.82, **tags("val", CURVE)}
    run_dir = run_with_checkpoints(tmp_path, best_record(metrics=metrics, measured_on=measured))
    card = build_model_card(run_dir, ["a", "b"])
    use = card.split("## Use it", 1)[1]
    assert f'load_classifier("{run_dir}/checkpoints/{BEST}")' in use
    assert f"predict.py ckpt_path={run_dir}/checkpoints/{BEST} " in use
    assert f"export.py ckpt_path={run_dir}/checkpoints/{BEST} " in use
    assert "last.ckpt" not in card
    assert f"Checkpoint: `{BEST}` (the run's best checkpoint by val/acc)" in card
    assert "Val numbers are after BatchNorm calibration" in card
    assert f"Selected as the best by val/acc 0.0600 during training (`{BEST}`)." in card
    assert "- val: accuracy within 0.03 of the best" in card  # the best's own curve: its range


def test_a_curve_of_another_checkpoint_is_not_the_loaded_ones(tmp_path: Path) -> None:
    """The val curve measured on last.ckpt (the last epoch's validation), the test on the best: the card
    (of the best) shows only the test numbers; last.ckpt gets only the val numbers."""
    measured = {"val": {"checkpoint": "last.ckpt"}, "test": {"checkpoint": BEST}}
    test_curve = {"32": 0.50, "48": 0.79, "64": 0.80}
    metrics = {"val/acc": 0.82, **tags("val", CURVE), "test/acc": 0.8, **tags("test", test_curve)}
    record = best_record(metrics=metrics, measured_on=measured)
    run_dir = run_with_checkpoints(tmp_path, record)
    card = build_model_card(run_dir)
    assert "| val |" not in card and "| test | 48 | 0.7900 |" in card
    assert "Not shown: the val numbers, measured on `last.ckpt`" in card
    robustness = card.split("## Robustness across sizes", 1)[1].split("\n## ", 1)[0]
    assert "- test:" in robustness and "- val:" not in robustness

    kept, other = metrics_of_checkpoint(record, run_dir / "checkpoints" / "last.ckpt")
    assert other == {"test": BEST} and "val/acc@48" in kept and not any(k.startswith("test/") for k in kept)
    # a record written before measured_on: both splits are taken to be the best checkpoint's
    old = best_record(metrics=metrics)
    assert metrics_of_checkpoint(old, Path("x") / BEST)[1] == {}
    assert metrics_of_checkpoint(old, "last.ckpt")[1] == {"val": BEST, "test": BEST}


def test_the_end_of_run_table_labels_calibrated_numbers_and_shows_the_selection_value(tmp_path: Path) -> None:
    metrics = {"val/acc": 0.04, "val/loss": 2.3, "val/acc@64": 0.04, "val/loss@64": 2.3, "val/acc_best": 0.06}
    record = best_record(metrics=metrics, measured_on={"val": {"checkpoint": BEST, "bn_calibration": True}})
    text = end_of_run_text(record, tmp_path)
    assert (
        "val: after BatchNorm calibration (eval.bn_calibration); selected on val/acc 0.0600 before it" in text
    )
    assert "best checkpoint: epoch 0, val/acc 0.0600 during training (0.0400 after calibration)" in text
    # no calibration: no label, the plain selection value
    plain = end_of_run_text(best_record(metrics=metrics, measured_on={"val": {"checkpoint": BEST}}), tmp_path)
    assert "calibration" not in plain and "best checkpoint: epoch 0, val/acc 0.0600, /elsewhere" in plain


def test_eval_robust_range_is_times_the_runs_eval_size() -> None:
    from resflex.evaluate import robustness_summary, robustness_text

    rows = [
        {"height": s, "width": s, "seq_len": None, "acc": acc, "resolution": f"{s}x{s}"}
        for s, acc in ((32, 0.80), (48, 0.81), (64, 0.60))
    ]
    summary = robustness_summary(rows, tokens=False, main=(64, 64))  # listed first: 32; trained at 64
    assert summary is not None
    assert (summary["range_low"], summary["range_high"]) == (0.5, 0.75)
    assert robustness_text(summary).endswith("from 0.5x to 0.75x (x of the run's eval size, 64 px)")
    tokens = robustness_summary([{**r, "seq_len": r["height"]} for r in rows], tokens=True)
    assert tokens is not None and tokens["range_low"] == 1.0  # NaFlex: × of the first length, as documented


def test_measured_on_names_the_checkpoint_each_evaluation_ran_on() -> None:
    from types import SimpleNamespace

    from resflex.training.callbacks import MeasuredOn
    from resflex.training.run_record import RunRecord

    def trainer(fn: str, ckpt_path: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn=fn), ckpt_path=ckpt_path)

    callback = MeasuredOn()
    callback.run_record = record = RunRecord(output_dir="r")
    callback.on_validation_end(trainer("fit"), None)  # the last epoch's weights
    assert record.measured_on == {"val": {"checkpoint": "last.ckpt", "bn_calibration": False}}
    callback.note_calibrated([BEST, "last.ckpt"])
    callback.on_validation_end(trainer("validate", f"/r/checkpoints/{BEST}"), None)
    callback.on_test_end(trainer("test", f"/r/checkpoints/{BEST}"), None)
    assert record.as_dict()["measured_on"] == {
        "val": {"checkpoint": BEST, "bn_calibration": True},
        "test": {"checkpoint": BEST, "bn_calibration": True},
    }
