"""The Hydra task itself (``resflex.train``): what ``train(cfg)`` records and ``run_task`` answers.

The CLI tests run the task whole; these pin the task's own wiring in this process, where a fault can be
put at an exact step: what ``metrics.json`` says after a stop, a crash or a success, what is printed and
which exit code follows, and what a sweep job records before the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import math
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

import resflex.train as train_module
from resflex.errors import ConfigError, DataError
from resflex.training.results import EVAL_SIZE_COLUMN
from tests.conftest import RESUME_RUN, TINY, scalar_tags, train_run
from tests.test_configs import compose_train
from tests.test_sweeps import hparams_plugin_data
from tests.training.test_reliability import _RunsCode


class KeyboardInterruptAtStep(pl.Callback):
    """Ctrl-C after global step ``step``: the ``KeyboardInterrupt`` Python raises for SIGINT."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


class NanWeightsAtValidation(pl.Callback):
    """Poisons the classifier weights when the first validation starts: training's losses were finite, the
    validation loss is NaN (what a bad BatchNorm statistic or an overflow at another size gives)."""

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with torch.no_grad():
            pl_module.model.head.weight.fill_(float("nan"))


class SavesInitialHead(pl.Callback):
    """Writes the classifier's weights as training starts (before any step) to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save(pl_module.model.head.weight.detach().clone(), self.path)


def _fault(name: str, **kwargs: object) -> list[str]:
    """The overrides that add the callback ``name`` of this module to a run."""
    return [f"+callbacks.fault._target_=tests.test_train_task.{name}"] + [
        f"+callbacks.fault.{key}={value}" for key, value in kwargs.items()
    ]


#: one epoch of RESUME_RUN's tiny deterministic run (a second or so in this process)
ONE_EPOCH = (*RESUME_RUN, "trainer.max_epochs=1")


#: the least of a run: one batch each, no calibration, no test, one evaluation size
QUICK = (
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "eval.bn_calibration=false",
    "eval.resolutions=[]",
)


def _record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def test_an_infinite_loss_is_a_divergence_like_nan() -> None:
    """check_finite must stop an inf loss as it stops NaN: an inf is no result either."""
    for key in ("train/loss", "val/loss"):
        with pytest.raises(ConfigError, match=rf"{key} is inf"):
            train_module.check_finite({"train/loss": 0.3, "val/loss": 1.0, key: math.inf})
        with pytest.raises(ConfigError, match=rf"{key} is -inf"):
            train_module.check_finite({key: -math.inf})


def test_ctrl_c_during_fit_is_recorded_interrupted_saves_and_exits_130(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lightning turns a Ctrl-C during fit into ``SystemExit(1)`` after its graceful shutdown: that is an
    interruption (status interrupted, exit 130, the resume hint), not a failure with exit code 1."""
    run_dir = tmp_path / "run"
    cfg = compose_train([*RESUME_RUN, *_fault("KeyboardInterruptAtStep", step=3)], run_dir)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_info:
            train_module.run_task(cfg, [])
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C while it shuts down
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert f"interrupted: checkpoint saved in {run_dir / 'checkpoints'}" in err and "ckpt_path=last" in err
    record = _record(run_dir)
    assert record["status"] == "interrupted" and record["wall_time_s"] > 0
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert saved["global_step"] == 3


def test_a_crash_that_is_no_user_error_keeps_its_traceback_without_a_resume_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The "checkpoints kept ...; once fixed: <resume>" line belongs before a one-line user error; a bug's
    traceback follows unannounced, whatever checkpoints the run left."""
    run_dir = tmp_path / "run"
    cfg = compose_train([], run_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"saved")

    def crash(cfg: object) -> None:
        raise RuntimeError("a bug in a callback")

    monkeypatch.setattr(train_module, "train", crash)
    with pytest.raises(RuntimeError, match="a bug in a callback"):
        train_module.run_task(cfg, [])
    assert "checkpoints kept" not in capsys.readouterr().err


def test_the_record_names_the_config_groups_chosen_and_the_model_card_is_written(tmp_path: Path) -> None:
    """``choices`` in metrics.json is the run's config groups (pooling=avg); Hydra's own groups (launcher,
    sweeper, job_logging ...) are the same in every run and stay out. The run folder gets its model card."""
    overrides = [*ONE_EPOCH, *QUICK, "pooling=avg"]
    record = train_run(overrides, tmp_path, hydra_files=True)
    assert record["status"] == "completed" and record["overrides"] == overrides  # the command line's
    choices = _record(tmp_path)["choices"]
    assert choices["pooling"] == "avg" and choices["backbone"]
    assert not [key for key in choices if key.startswith("hydra")], choices
    assert "pooling" in (tmp_path / "model_card.md").read_text()


def test_a_run_that_fails_before_saving_weights_writes_no_model_card(tmp_path: Path) -> None:
    """A folder whose class folders hold no image fails as its images are listed, after the run started
    its folder: its record says why, and no card describes (and shows how to load) a checkpoint that was
    never written."""
    from resflex.errors import DataError

    root = tmp_path / "images"
    for split in ("train", "val"):
        for name in ("cats", "dogs"):
            (root / split / name).mkdir(parents=True)
    with pytest.raises(DataError):
        train_run([*TINY, "data=imagefolder", f"data.root={root}"], tmp_path / "run", hydra_files=True)
    assert _record(tmp_path / "run")["status"] == "failed"
    assert not (tmp_path / "run" / "model_card.md").exists()


def test_the_seed_decides_the_initial_weights(tmp_path: Path) -> None:
    """``seed`` seeds the model's initial weights (the data's own seeds aside): one seed twice starts from
    the same weights, another seed from others."""

    def initial_head(seed: int, name: str) -> torch.Tensor:
        path = tmp_path / f"{name}.pt"
        overrides = [*ONE_EPOCH, *QUICK, f"seed={seed}", *_fault("SavesInitialHead", path=path)]
        assert train_module.train(compose_train(overrides, tmp_path / name))["status"] == "completed"
        return torch.load(path, weights_only=True)

    first = initial_head(1, "a")
    assert torch.equal(initial_head(1, "b"), first)
    assert not torch.equal(initial_head(2, "c"), first)


def test_top5_accuracy_can_select_the_best_checkpoint(tmp_path: Path) -> None:
    """A model with 10 classes logs val/acc_top5, so it is a valid ``model_checkpoint.monitor``: the run
    selects its best checkpoint by it rather than refusing the key."""
    overrides = [*ONE_EPOCH, "callbacks.model_checkpoint.monitor=val/acc_top5"]
    record = train_module.train(compose_train(overrides, tmp_path))
    assert record["status"] == "completed"
    assert record["best"]["monitor"] == "val/acc_top5"
    assert record["best"]["val/acc_top5"] == pytest.approx(record["metrics"]["val/acc_top5"], abs=1e-6)


def test_a_nan_validation_loss_fails_the_run_as_diverged(tmp_path: Path) -> None:
    """Training's NaN guard watches the training loss; a NaN validation loss at the end of fit must still
    fail the run in one line (lower the learning rate), not record it as completed with a NaN result, nor
    put it in TensorBoard's HPARAMS table of finished runs."""
    with pytest.raises(ConfigError, match=r"training diverged: val/loss is nan"):
        train_module.train(compose_train([*ONE_EPOCH, *_fault("NanWeightsAtValidation")], tmp_path))
    record = _record(tmp_path)
    assert record["status"] == "failed" and "diverged" in record["error"]
    # HPARAMS compares finished runs: a failed one adds no row with its NaN
    assert hparams_plugin_data(tmp_path) == {"tags": set(), "hparams": {}}


def test_an_hpc_checkpoint_that_runs_code_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ckpt_path=hpc`` names no file, so no check reads it before Lightning does: its safe load still
    ends in a one-line refusal, and the payload never runs."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"state_dict": {}, "payload": _RunsCode()}, run_dir / "hpc_ckpt_1.ckpt")
    with pytest.raises(DataError, match="refusing to .*it contains code"):
        train_module.train(compose_train([*ONE_EPOCH, "ckpt_path=hpc"], run_dir))
    assert not (tmp_path / "HACKED").exists()
    assert _record(run_dir)["status"] == "failed"


def test_the_final_numbers_are_the_best_checkpoints_and_the_record_says_so(tmp_path: Path) -> None:
    """After fit the run validates (calibrated) and tests the *best* checkpoint, not the last weights;
    metrics.json holds those numbers (TensorBoard's last point), and ``measured_on`` names that file.
    ``mode=min`` on val/acc keeps epoch 0 as best (a later epoch must be strictly better), so the best
    and the last weights differ."""
    overrides = [*RESUME_RUN, "callbacks.model_checkpoint.mode=min", "test_after_fit=true"]
    record = train_module.train(compose_train(overrides, tmp_path))
    assert record["status"] == "completed" and record["best"]["epoch"] == 0
    best = Path(record["best"]["checkpoint"])
    assert best.parent == tmp_path / "checkpoints" and best.name.startswith("best-epoch000")
    entry = {"checkpoint": best.name, "bn_calibration": True}
    assert record["measured_on"] == {"val": entry, "test": entry}
    val_loss = sorted(scalar_tags(tmp_path)["val/loss"])
    assert len(val_loss) == 3  # epoch 0, epoch 1, the best checkpoint after fit
    assert val_loss[-1][1] == pytest.approx(val_loss[0][1]) and val_loss[1][1] != pytest.approx(
        val_loss[0][1]
    )
    metrics = _record(tmp_path)["metrics"]
    assert metrics["val/loss"] == pytest.approx(val_loss[-1][1], abs=1e-6)
    assert metrics["test/loss"] > 0
    # the best epoch's numbers beside the final ones (BestEpochMetrics): HPARAMS columns, summaries
    assert metrics["val/acc_best"] == pytest.approx(record["best"]["val/acc"], abs=1e-6)
    assert metrics["val/best_epoch"] == 0
    # HPARAMS names the size behind val/acc: the training size 32, the first of the evaluation sizes
    assert hparams_plugin_data(tmp_path)["hparams"][EVAL_SIZE_COLUMN] == "32"


def test_a_sweep_shares_the_data_profile_figure_unless_a_folder_is_given() -> None:
    """In a sweep the figure goes to the sweep's folder, where its jobs agree which one draws it; a
    ``shared_dir`` the user set is kept, and a single run (no sweep) keeps its own."""
    from omegaconf import OmegaConf

    def shared(node: dict[str, Any], sweep: Path | None) -> object:
        cfg = OmegaConf.create({"callbacks": {"data_profile": node}})
        train_module.share_data_profile(cfg, sweep)
        return cfg.callbacks.data_profile.get("shared_dir")

    assert shared({"shared_dir": None}, Path("/sweeps/s1")) == "/sweeps/s1"
    assert shared({"shared_dir": "/mine"}, Path("/sweeps/s1")) == "/mine"
    assert shared({"shared_dir": None}, None) is None


def sweep_exit_code(monkeypatch: pytest.MonkeyPatch, job: Any, jobs: int) -> Any:
    """The exit code of ``train.main()`` for a sweep of ``jobs`` jobs, each run by ``job(cfg, failed_jobs)``
    in place of ``run_task`` (no Hydra, no config)."""
    import hydra

    def sweep_of(**kwargs: object) -> Any:
        return lambda task: lambda: [task(None) for _ in range(jobs)]

    monkeypatch.setattr(train_module, "prepare_cli", lambda argv, name: None)
    monkeypatch.setattr(hydra, "main", sweep_of)
    monkeypatch.setattr(train_module, "run_task", job)
    monkeypatch.setattr("resflex.sweeps._LAUNCH_ARGV", None)  # main() keeps pytest's argv: put back after
    with pytest.raises(SystemExit) as exit_info:
        train_module.main()
    return exit_info.value.code


@pytest.mark.parametrize(("failures", "code"), [(3, 3), (130, 125)])
def test_the_exit_code_counts_the_failed_jobs(
    failures: int, code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a sweep, ``main`` exits with the number of failed jobs and names them; capped at 125, since
    126 and up mean "cannot run" and 128+N "killed by signal N" to a shell."""

    def fails(cfg: object, failed_jobs: list[str]) -> None:
        failed_jobs.append(f"job{len(failed_jobs)}")

    assert sweep_exit_code(monkeypatch, fails, failures) == code
    assert capsys.readouterr().err.strip().startswith(f"{failures} job(s) failed: job0, job1, job2")


def test_a_run_refused_before_any_work_records_why_and_how_long(tmp_path: Path) -> None:
    """A config mistake stops the run before data is read: metrics.json still says failed, why in one
    line, and its wall time (a number, as for any run: summaries add them up)."""
    with pytest.raises(ConfigError):
        train_module.train(compose_train([*ONE_EPOCH, "backbone.name=resnet19"], tmp_path))
    record = _record(tmp_path)
    assert record["status"] == "failed" and "\n" not in record["error"]
    assert record["error"].startswith("unknown backbone 'resnet19' (backbone.name) (hint: did you mean")
    assert isinstance(record["wall_time_s"], float) and record["wall_time_s"] >= 0


def test_automatic_evaluation_sizes_too_small_for_the_backbone_are_dropped(tmp_path: Path) -> None:
    """``eval.resolutions=auto`` at 16 px would evaluate at 8 px, below test_resnet's smallest side (16):
    nobody asked for that size by name, so the run drops it and evaluates at the others."""
    overrides = [
        *ONE_EPOCH,
        "resolution.size=16",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
    ]
    record = train_module.train(compose_train(overrides, tmp_path))
    assert record["status"] == "completed"
    sides = {int(key.split("@")[1].split("x")[0]) for key in record["metrics"] if key.startswith("val/acc@")}
    assert sides == {16, 24, 32}


def test_a_run_validated_at_every_size_during_fit_still_reports_its_calibrated_best_checkpoint(
    tmp_path: Path,
) -> None:
    """A monitor over sizes validates every size every epoch, so no size is left for after fit; the
    BatchNorm calibration still changes the checkpoints, so the best one is validated again and the
    record's val numbers are of that calibrated file."""
    overrides = [*ONE_EPOCH, "callbacks.model_checkpoint.monitor=val/acc_mean_sizes"]
    record = train_module.train(compose_train(overrides, tmp_path))
    assert record["status"] == "completed"
    best = Path(record["best"]["checkpoint"]).name
    assert record["measured_on"]["val"] == {"checkpoint": best, "bn_calibration": True}


def test_a_sweep_job_points_tensorboard_at_the_sweep_and_claims_the_data_profile_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A job of a sweep outside the logs folder says ``tensorboard --logdir <sweep>``: all its jobs on one
    chart, not only this job's folder. Its data profile is claimed in the sweep's folder, where the other
    jobs with the same data find it and do not draw it again."""
    sweep = tmp_path / "sweep"
    monkeypatch.setattr(train_module, "sweep_dir", lambda: sweep)
    with caplog.at_level(logging.INFO, logger="resflex"):
        record = train_module.train(compose_train([*ONE_EPOCH, *QUICK], sweep / "job"))
    assert record["status"] == "completed"
    assert f"compare runs: tensorboard --logdir {sweep}\n" in caplog.text + "\n"
    assert len(list((sweep / ".data_profiles").iterdir())) == 1


@contextmanager
def _as_sweep_job(cfg: Any) -> Iterator[None]:
    """The composed config as Hydra's launcher sets it for one job of ``-m``, for the block."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    with read_write(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    try:
        yield
    finally:
        with read_write(cfg.hydra):
            cfg.hydra.mode = RunMode.RUN
        HydraConfig.instance().set_config(cfg)


def test_a_sweep_job_returns_val_acc_to_the_sweeper_and_a_failed_one_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Optuna maximises what the job returns: val/acc, not another metric. A job that fails (any error,
    not only a config mistake) returns nothing, is named by its folder in ``failed_jobs`` and on stderr,
    and the sweep goes on."""
    job = tmp_path / "sweep" / "pooling=avg"
    cfg = compose_train(["pooling=avg"], job)
    monkeypatch.setattr(train_module, "train", lambda cfg: {"metrics": {"val/acc": 0.75, "val/loss": 1.5}})
    failed: list[str] = []
    with _as_sweep_job(cfg):
        assert train_module.run_task(cfg, failed) == 0.75 and failed == []

    def crash(cfg: object) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(train_module, "train", crash)
    with _as_sweep_job(cfg):
        assert train_module.run_task(cfg, failed) is None
    assert failed == ["pooling=avg"]
    assert "error: job pooling=avg failed: RuntimeError: CUDA out of memory" in capsys.readouterr().err

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the traceback asked for: the error stops the sweep
    with _as_sweep_job(cfg), pytest.raises(RuntimeError, match="CUDA out of memory"):
        train_module.run_task(cfg, failed)
    assert failed == ["pooling=avg"]


def test_hydra_full_error_shows_a_ctrl_c_as_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``HYDRA_FULL_ERROR=1`` a stopped run raises its ``KeyboardInterrupt`` (where it stopped) instead
    of the one-line "interrupted" and exit 130."""
    cfg = compose_train([], tmp_path / "run")

    def stop(cfg: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", stop)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(KeyboardInterrupt):
        train_module.run_task(cfg, [])


def test_a_crash_before_training_is_recorded_by_its_type_and_first_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error that is no user mistake (here from building the trainer) is recorded as its type and the
    first line of its message: one line in metrics.json, as the sweep summary shows it."""

    def broken_trainer(cfg: object, record: object) -> None:
        raise RuntimeError("the accelerator went away\nsecond line of detail")

    monkeypatch.setattr(train_module, "build_trainer", broken_trainer)
    with pytest.raises(RuntimeError):
        train_module.train(compose_train([*ONE_EPOCH], tmp_path))
    record = _record(tmp_path)
    assert record["status"] == "failed"
    assert record["error"] == "RuntimeError: the accelerator went away"


def test_one_evaluation_size_and_an_earlier_best_epoch_report_the_best_checkpoints_val_too(
    tmp_path: Path,
) -> None:
    """With one evaluation size nothing is calibrated or validated after fit: the table's val column was
    the last epoch's beside the best checkpoint's test column (found by a transfer audit). The best
    checkpoint is now validated when it is not the last epoch's (here the first of two, by mode=min)."""
    overrides = [
        *RESUME_RUN,
        "eval.resolutions=[]",
        "callbacks.model_checkpoint.mode=min",
        "test_after_fit=true",
    ]
    record = train_run(overrides, tmp_path)
    best = Path(record["best"]["checkpoint"]).name
    assert record["best"]["epoch"] == 0 and best.startswith("best-epoch000")
    assert record["measured_on"]["val"]["checkpoint"] == best == record["measured_on"]["test"]["checkpoint"]
    assert record["metrics"]["val/acc"] == record["best"]["val/acc"]
