"""Reading a sweep's job folders as ``scripts/summarize.py`` does: every state a folder can be in (running,
killed, unreadable, written by hand), the names of nested jobs, the override columns and their order."""

from __future__ import annotations

import os
import time
from pathlib import Path

from resflex.sweep_jobs import Job, find_jobs, load_job, resolution_columns, varying_overrides
from tests.test_summarize import write_job


def test_a_job_is_running_while_any_of_its_files_is_fresh(tmp_path: Path) -> None:
    """A job writing only its TensorBoard events (deep in the folder) for 5 minutes is still running;
    one that has touched nothing for 20 minutes is missing (killed)."""
    job = tmp_path / "sweep" / "pooling=avg"
    events = job / "tb" / "version_0" / "events.out"
    events.parent.mkdir(parents=True)
    events.write_text("x")
    write_job(tmp_path / "sweep", "pooling=avg", ["pooling=avg"], None, age_s=3600)
    assert load_job(job).status == "missing"
    with open(events, "a") as f:  # appending leaves the folders' own times as they were
        f.write("y")
    assert load_job(job).status == "running"
    five_min = time.time() - 5 * 60
    for path in [job, *job.rglob("*")]:
        os.utime(path, (five_min, five_min))
    assert load_job(job).status == "running"
    assert load_job(job, now=time.time() + 15 * 60).status == "missing"


def test_overrides_become_columns_without_prefixes_and_deletions_are_no_column(tmp_path: Path) -> None:
    """``+x=1`` is the column ``x``; ``~pooling`` (a deletion, no value) is no column."""
    job = write_job(tmp_path, "run", ["+x=1", "~pooling", "seed=2"], {"status": "completed", "metrics": {}})
    assert load_job(job).overrides == {"x": "1", "seed": "2"}


def test_a_folder_with_only_metrics_json_keeps_its_overrides(tmp_path: Path) -> None:
    """A run copied without ``.hydra/`` still shows its overrides: ``metrics.json`` records them."""
    job = write_job(tmp_path, "run", ["pooling=max"], {"status": "completed", "metrics": {"val/acc": 0.5}})
    (job / ".hydra" / "overrides.yaml").unlink()
    (job / ".hydra").rmdir()
    [loaded] = find_jobs(tmp_path)
    assert loaded.overrides == {"pooling": "max"} and loaded.status == "completed"


def test_best_val_acc_is_the_best_epochs_val_acc_when_logged(tmp_path: Path) -> None:
    """``val/acc_best`` (val/acc at the epoch the checkpoint monitor chose) wins over the checkpoint's
    recorded score, which only runs from before it was logged fall back on."""
    record = {"status": "completed", "best": {"val/acc": 0.9}, "metrics": {"val/acc_best": 0.7}}
    assert load_job(write_job(tmp_path, "new", [], record)).value("best val/acc") == 0.7
    old = {"status": "completed", "best": {"val/acc": 0.9}, "metrics": {"val/acc": 0.8}}
    assert load_job(write_job(tmp_path, "old", [], old)).value("best val/acc") == 0.9


def test_a_corrupt_metrics_json_is_a_row_not_a_crash(tmp_path: Path) -> None:
    """A record cut short (disk full, a job killed while writing) is reported as unreadable."""
    job = write_job(tmp_path, "run", ["seed=1"], None)
    (job / "metrics.json").write_text('{"status": "compl')
    loaded = load_job(job)
    assert loaded.status == "unreadable" and loaded.error.startswith("metrics.json: ")


def test_jobs_in_nested_sweep_folders_are_named_by_their_path(tmp_path: Path) -> None:
    """Two sweeps under one folder both have ``pooling=avg``: the rows tell them apart."""
    for sweep in ("a", "b"):
        write_job(tmp_path / sweep, "pooling=avg", ["pooling=avg"], {"status": "completed", "metrics": {}})
    assert [job.name for job in find_jobs(tmp_path)] == ["a/pooling=avg", "b/pooling=avg"]


def test_resolution_columns_are_val_then_test_by_height_then_width() -> None:
    """Only ``<split>/acc@<size>`` tags: not the loss, nor ``val/acc@32_best`` (the best epoch's value
    when checkpoints are selected by ``callbacks.model_checkpoint.monitor=val/acc@32``)."""
    keys = ("test/acc@32", "val/acc@48x40", "val/acc@32x64", "val/acc@32", "val/loss@32", "val/acc@32_best")
    metrics = dict.fromkeys(keys, 0.5)
    jobs = [Job("a", Path("a"), "completed", metrics=metrics)]
    assert resolution_columns(jobs) == ["val/acc@32", "val/acc@32x64", "val/acc@48x40", "test/acc@32"]


def test_varying_overrides_one_job_and_a_key_only_some_jobs_have() -> None:
    """One job: every override is a column (nothing to be common with). A key that only some jobs set
    differs between them, so it is a column, not a common override."""

    def job(name: str, overrides: dict[str, str]) -> Job:
        return Job(name, Path(name), "completed", overrides=overrides)

    assert varying_overrides([job("a", {"pooling": "avg", "seed": "1"})]) == (["pooling", "seed"], {})
    jobs = [job("a", {"pooling": "avg", "seed": "1"}), job("b", {"pooling": "max", "seed": "1", "x": "2"})]
    assert varying_overrides(jobs) == (["pooling", "x"], {"seed": "1"})


def test_a_record_without_a_status_is_unknown_not_completed(tmp_path: Path) -> None:
    """A hand-written or foreign ``metrics.json`` is not claimed as a finished run."""
    job = write_job(tmp_path, "run", [], {"metrics": {"val/acc": 0.5}})
    assert load_job(job).status == "unknown"


def test_a_run_folder_given_directly_is_one_job_named_by_its_folder(tmp_path: Path) -> None:
    """``summarize.py logs/train/runs/<time>``: one row, named as the folder, not ``.``."""
    run = write_job(tmp_path, "2026-01-01_10-00-00", ["pooling=max"], {"status": "completed", "metrics": {}})
    (run / "checkpoints").mkdir()
    assert [(job.name, job.path) for job in find_jobs(run)] == [("2026-01-01_10-00-00", run)]
