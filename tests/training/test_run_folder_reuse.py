"""A run folder typed again: its run is never overwritten or mixed with another.

Found by a sweep audit and a transfer audit: a new run in a folder that held a finished run replaced its
record and config (then its checkpoints no longer loaded with them) and printed a "resume" command for
that other run's checkpoints; a sweep run again with ``ckpt_path=last`` replaced its completed jobs'
records with a re-test's (no val/* metrics, a wall time of seconds); SIGTERM during a sweep exited 0 and
said nothing of the jobs left. Now: a new run there is refused in one line, ``ckpt_path=last`` keeps a
completed run as it is (or trains on with a larger ``trainer.max_epochs``), and a stopped sweep exits
130 / 143 with the command that continues it.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import read_write
from pytorch_lightning.utilities.exceptions import SIGTERMException

import resflex.train as train_module
from resflex.errors import ConfigError
from resflex.resume_check import ResumeRefused
from resflex.sweep_jobs import load_job
from tests.conftest import RESUME_RUN
from tests.test_configs import compose_train
from tests.test_train_task import _as_sweep_job, _fault, sweep_exit_code

#: one epoch, one batch each: the least of a run that saves checkpoints and a record
QUICK = (*RESUME_RUN, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "eval.resolutions=[]")


def _record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def _train(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    return train_module.train(compose_train(overrides, run_dir))


def _files_outside_hydra(run_dir: Path) -> dict[str, int]:
    return {
        str(p): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts
    }


def _finished_run(run_dir: Path) -> tuple[bytes, bytes]:
    """A completed run in ``run_dir``; its record's and its kept config's bytes."""
    assert _train(list(QUICK), run_dir)["status"] == "completed"
    return (run_dir / "metrics.json").read_bytes(), (
        run_dir / ".hydra" / "original" / "config.yaml"
    ).read_bytes()


def test_a_new_run_in_a_folder_holding_a_finished_run_is_refused_and_leaves_it_as_it_was(
    tmp_path: Path,
) -> None:
    record, kept = _finished_run(tmp_path)
    (tmp_path / ".hydra" / "config.yaml").write_text("backbone: another\n")  # what Hydra's start rewrites
    with pytest.raises(ResumeRefused) as info:
        _train([*QUICK, "pooling=avg"], tmp_path)
    line = info.value.one_line()
    assert (
        line.startswith(f"{tmp_path} already holds a completed run with checkpoints")
        and "ckpt_path=last" in line
    )
    assert (tmp_path / "metrics.json").read_bytes() == record
    assert (tmp_path / ".hydra" / "config.yaml").read_bytes() == kept  # the run's own config, back


def test_the_refusal_prints_no_resume_command_for_the_other_runs_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _finished_run(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train_module.run_task(compose_train([*QUICK, "pooling=avg"], tmp_path), [])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "already holds a completed run" in err
    assert "checkpoints kept" not in err and "once fixed" not in err


def test_a_run_refused_before_saving_anything_can_be_run_again_in_its_folder(tmp_path: Path) -> None:
    """The fix-and-rerun loop: a refused command left only a failed record, nothing to lose."""
    with pytest.raises(ConfigError):
        _train([*QUICK, "backbone.name=resnet19"], tmp_path)
    assert _record(tmp_path)["status"] == "failed"
    assert _train(list(QUICK), tmp_path)["status"] == "completed"


def test_ckpt_path_last_on_a_completed_run_keeps_its_record_and_files(tmp_path: Path) -> None:
    record, _ = _finished_run(tmp_path)
    files = _files_outside_hydra(tmp_path)
    kept = _train([*QUICK, "ckpt_path=last"], tmp_path)
    assert kept == json.loads(record) and (tmp_path / "metrics.json").read_bytes() == record
    assert _files_outside_hydra(tmp_path) == files  # no new events, no re-test


def test_ckpt_path_last_with_more_epochs_trains_on(tmp_path: Path) -> None:
    _finished_run(tmp_path)
    first = _record(tmp_path)["wall_time_s"]
    record = _train([*QUICK, "ckpt_path=last", "trainer.max_epochs=2"], tmp_path)
    assert record["status"] == "completed"
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["epoch"] == 1 and last["global_step"] == 4  # the second epoch's two steps, on the first's
    assert record["wall_time_s"] > first  # the run's time, both parts


def test_a_resume_refused_before_work_keeps_the_runs_record(tmp_path: Path) -> None:
    record, _ = _finished_run(tmp_path)
    with pytest.raises(ConfigError):
        _train([*QUICK, "ckpt_path=last", "trainer.max_epochs=2", "eval.resolutions=[4]"], tmp_path)
    assert (tmp_path / "metrics.json").read_bytes() == record


def test_ctrl_c_during_a_sweep_exits_130_with_the_command_that_continues_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "sweep"
    cfg = compose_train(
        [*QUICK, "pooling=avg", *_fault("KeyboardInterruptAtStep", step=1)], sweep / "pooling=avg"
    )
    with read_write(cfg.hydra):
        cfg.hydra.sweep.dir = str(sweep)
    monkeypatch.setattr("sys.argv", ["scripts/train.py", "-m", "pooling=avg,max", "trainer.max_epochs=1"])
    monkeypatch.setattr("resflex.sweeps._LAUNCH_ARGV", None)  # another test's main() may have kept its own
    sigint = signal.getsignal(signal.SIGINT)
    failed: list[str] = []
    try:
        with _as_sweep_job(cfg), pytest.raises(SystemExit) as exit_info:
            train_module.run_task(cfg, failed)
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C while it shuts down
    assert exit_info.value.code == 130 and failed == []
    err = capsys.readouterr().err
    assert (
        f"interrupted: job pooling=avg (checkpoint saved in {sweep / 'pooling=avg' / 'checkpoints'})" in err
    )
    command = "python scripts/train.py -m pooling=avg,max trainer.max_epochs=1 ckpt_path=last"
    assert err.strip().endswith(f"{command} hydra.sweep.dir={sweep}")
    assert _record(sweep / "pooling=avg")["error"] == "stopped by Ctrl-C"


def test_sigterm_during_a_sweep_job_exits_143_however_many_jobs_failed_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    def job(cfg: object, failed_jobs: list[str]) -> None:
        if failed_jobs:
            raise SystemExit(143)  # what run_task raises for SIGTERM in the second job
        failed_jobs.append("job0")

    assert sweep_exit_code(monkeypatch, job, 3) == 143


def test_a_sigterm_is_recorded_as_what_stopped_the_run() -> None:
    assert train_module.is_interruption(SIGTERMException())


def test_how_a_job_was_launched_is_no_column_of_the_summary(tmp_path: Path) -> None:
    job = tmp_path / "pooling=max"
    job.mkdir()
    overrides = ["pooling=max", "ckpt_path=last", "hydra.sweep.dir=/x", "paths.log_dir=/y"]
    (job / "metrics.json").write_text(json.dumps({"status": "completed", "overrides": overrides}))
    assert load_job(job).overrides == {"pooling": "max"}
