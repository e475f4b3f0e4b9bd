"""resflex.run_folder, the layout of a run folder and its plain readers: which folders are runs, where a
checkpoint's config is, what a damaged record or class list reads as, what a resume keeps of the run's
start, and which checkpoint and numbers a run folder stands for. Built from files, without training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from resflex.errors import ConfigError
from resflex.run_folder import (
    find_run_config,
    hydra_file,
    hydra_job_num,
    is_run_folder,
    load_record,
    metrics_of_checkpoint,
    read_classes,
    read_original,
    read_record,
    read_sweep_overrides,
    resolve_checkpoint_path,
    restore_hydra_files,
    run_checkpoint,
    save_original,
)

BEST = "best-epoch002-loss0.4000.ckpt"


def test_a_run_folder_is_one_with_a_record_or_with_hydra_files(tmp_path: Path) -> None:
    """A run still in its first epoch has only ``.hydra/``; a copied record has only ``metrics.json``:
    both are runs, so ``summarize.py`` on such a folder shows one job named after it, not a sweep of "."."""
    from resflex.sweep_jobs import find_jobs

    running = tmp_path / "running"
    (running / ".hydra").mkdir(parents=True)
    (running / ".hydra" / "overrides.yaml").write_text("- pooling=gem\n")
    record_only = tmp_path / "record_only"
    record_only.mkdir()
    (record_only / "metrics.json").write_text(json.dumps({"status": "completed", "metrics": {}}))
    (tmp_path / "plain").mkdir()
    assert is_run_folder(running) and is_run_folder(record_only) and not is_run_folder(tmp_path / "plain")
    assert [job.name for job in find_jobs(running)] == ["running"]
    assert [job.name for job in find_jobs(record_only)] == ["record_only"]


def test_the_config_of_a_checkpoint_is_found_beside_it_or_one_folder_up(tmp_path: Path) -> None:
    """``<run>/checkpoints/x.ckpt`` (training's layout) and ``<run>/x.ckpt`` (a checkpoint copied into
    the run folder) both find ``<run>/.hydra/config.yaml``."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    assert find_run_config(run / "checkpoints" / "last.ckpt") == hydra_file(run)
    assert find_run_config(run / "copied.ckpt") == hydra_file(run)
    assert find_run_config(tmp_path / "elsewhere" / "x.ckpt") is None


def test_a_damaged_record_or_class_list_reads_as_absent(tmp_path: Path) -> None:
    """A metrics.json or classes.json cut short (a killed write, a full disk) must not stop the run
    from opening: the record reads as empty, the class names as unknown; the sweep summary's own
    reader still raises, to report the file as unreadable."""
    (tmp_path / "metrics.json").write_text('{"status": "compl')
    (tmp_path / "classes.json").write_text('["cat", "do')
    assert read_record(tmp_path) == {}
    with pytest.raises(ValueError):
        load_record(tmp_path)
    assert read_classes(tmp_path) is None
    (tmp_path / "classes.json").write_text('{"0": "cat"}')  # not a list: not class names
    assert read_classes(tmp_path) is None
    (tmp_path / "classes.json").write_text('["cat", 7]')
    assert read_classes(tmp_path) == ["cat", "7"]
    assert read_classes(None) is None and read_record(None) == {}


def test_a_sweep_folders_job_number_and_overrides_are_read_from_what_hydra_saved(tmp_path: Path) -> None:
    """The sweep folder naming matches a job folder to its job by ``hydra.job.num``, and a sweep's
    command by ``hydra.overrides.task`` (not Hydra's own ``hydra.overrides.hydra``)."""
    job = tmp_path / "job"
    (job / ".hydra").mkdir(parents=True)
    assert hydra_job_num(job) is None  # not written yet
    saved = {"hydra": {"job": {"num": 3, "id": "77_3"}}}
    OmegaConf.save(OmegaConf.create(saved), hydra_file(job, "hydra.yaml"))
    assert hydra_job_num(job) == "3"
    assert read_sweep_overrides(tmp_path) is None
    multirun = {"hydra": {"overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": ["pooling=avg,max"]}}}
    OmegaConf.save(OmegaConf.create(multirun), tmp_path / "multirun.yaml")
    assert read_sweep_overrides(tmp_path) == ["pooling=avg,max"]


def test_a_resume_keeps_the_runs_start_unresolved_and_puts_both_files_back(tmp_path: Path) -> None:
    """The kept copy is the config as Hydra saved it (interpolations unresolved, so a resume compares
    like with like) and the overrides the run started with; a refused resume puts back both the config
    and the overrides that Hydra's start has just rewritten in ``.hydra/``."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    config = OmegaConf.create({"size": 64, "eval": {"size": "${size}"}})
    save_original(run, config, ["resolution.size=64", "+tag=a b"])
    hydra_file(run).write_text("size: 48\n")  # the refused resume's start rewrote both
    hydra_file(run, "overrides.yaml").write_text("- resolution.size=48\n")
    assert read_original(run) == (
        {"size": 64, "eval": {"size": "${size}"}},
        ["resolution.size=64", "+tag=a b"],
    )
    restore_hydra_files(run)
    assert OmegaConf.load(hydra_file(run)).eval.size == 64  # the run's config, interpolation intact
    assert list(OmegaConf.load(hydra_file(run, "overrides.yaml"))) == ["resolution.size=64", "+tag=a b"]
    assert read_original(tmp_path / "before_the_copy") == (None, None)


def _run_with_checkpoints(root: Path, record: dict, files: tuple[str, ...]) -> Path:
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(record))
    for i, name in enumerate(files):
        torch.save({"state_dict": {"w": torch.full((2,), float(i))}}, run / "checkpoints" / name)
    return run


def test_the_reason_for_a_run_folders_checkpoint_names_the_runs_monitor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run selected on val/loss: the line saying which file a run folder stands for says val/loss."""
    best = {"monitor": "val/loss", "val/loss": 0.4, "checkpoint": f"/moved/checkpoints/{BEST}"}
    run = _run_with_checkpoints(tmp_path, {"status": "completed", "best": best}, (BEST, "last.ckpt"))
    assert run_checkpoint(run) == (run / "checkpoints" / BEST, "the run's best checkpoint by val/loss")
    with caplog.at_level(logging.INFO, logger="resflex"):
        assert resolve_checkpoint_path(run) == run / "checkpoints" / BEST
    assert "the run's best checkpoint by val/loss" in caplog.text


@pytest.mark.parametrize("unset", [None, "", "None", "null"])
def test_an_unset_checkpoint_path_is_one_line_saying_so(unset: object) -> None:
    """``ckpt_path=null`` on the command line arrives as None or as the text "null": not a file name."""
    with pytest.raises(ConfigError, match="ckpt_path is not set") as info:
        resolve_checkpoint_path(unset)  # type: ignore[arg-type]
    assert "ckpt_path=" in (info.value.hint or "")


def test_numbers_of_a_checkpoint_holding_the_same_weights_are_kept(tmp_path: Path) -> None:
    """The best epoch was the last: the val curve measured on last.ckpt is the best checkpoint's too
    (``same_as``), so it is kept; a split with no numbers at all is not reported as left out."""
    record = {
        "best": {"checkpoint": BEST},
        "measured_on": {"val": {"checkpoint": "last.ckpt"}, "test": {"checkpoint": "last.ckpt"}},
        "metrics": {"val/acc": 0.8, "val/acc@64": 0.8, "train/loss": 0.1},
    }
    assert metrics_of_checkpoint(record, BEST) == ({"train/loss": 0.1}, {"val": "last.ckpt"})
    kept, other = metrics_of_checkpoint(record, BEST, same_as=("last.ckpt",))
    assert kept == record["metrics"] and other == {}
    assert metrics_of_checkpoint(record, None) == (record["metrics"], {})
