"""The Hydra task: ``python scripts/train.py [overrides]``.

:func:`train` reads top to bottom as the experiment's story: checks and trainer → seed → data →
model → fit → test → record. The objects come from :mod:`resflex.build`; the
composed config is saved by Hydra in ``<run>/.hydra/config.yaml``; the run folder
also gets TensorBoard events, ``checkpoints/`` and ``metrics.json`` (the
:class:`~resflex.training.run_record.RunRecord`). :func:`run_task` adds the
command-line policies: one-line errors and exit codes for a single run, record
and go on for a sweep job.
"""

from __future__ import annotations

import logging
import math
import pickle
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from resflex.build import (
    build_datamodule,
    build_module,
    build_trainer,
    check_sizes_bucketed,
    check_sizes_fit_backbone,
)
from resflex.config import CONFIG_DIR, prepare_cli
from resflex.errors import (
    ConfigError,
    DataError,
    describe_error,
    find_user_error,
    full_error_requested,
    user_errors_as_one_line,
)
from resflex.model_card import write_model_card_quietly
from resflex.models.checkpoint import check_resumable, training_progress
from resflex.preflight import check_before_work
from resflex.resume_check import (
    ResumeRefused,
    current_overrides,
    held_run,
    prepare_run_folder,
    refuse_new_run_in_held_folder,
    resume_command,
    resumes_so_far,
)
from resflex.run_folder import (
    METRICS_FILE,
    checkpoints_dir,
    has_checkpoints,
    read_record,
    restore_hydra_files,
)
from resflex.runtime import quiet_library_noise, release_memory, retain_freed_host_memory, size_tag
from resflex.sweeps import (
    current_sweep_text_keys,
    current_swept_keys,
    remember_launch_argv,
    sweep_dir,
    sweep_resume_command,
)
from resflex.training.calibration import calibrate_run_checkpoints
from resflex.training.distributed import (
    check_shared_run_dir,
    child_rank_grace,
    ddp_job_scope,
    finish_child_ranks,
)
from resflex.training.end_of_run import best_epoch, report_end_of_run, tensorboard_logdir
from resflex.training.out_of_memory import out_of_memory_error, run_hint
from resflex.training.results import (
    collect_metrics,
    log_hparams_with_metrics,
    run_hparams,
    write_metrics_json,
)
from resflex.training.run_record import RunRecord
from resflex.training.safety import SigtermOutsideLightning
from resflex.training.selection import apply_monitor

log = logging.getLogger("resflex")


def check_finite(metrics: Mapping[str, Any]) -> None:
    """A diverged run (NaN/inf loss) is a failure, not a result: say so in one line."""
    for key in ("train/loss", "val/loss"):
        value = metrics.get(key)
        if value is not None and not math.isfinite(float(value)):
            raise ConfigError(
                f"training diverged: {key} is {float(value)}",
                hint="lower optimizer.lr or set trainer.gradient_clip_val",
            )


def is_global_zero(trainer: pl.Trainer | None) -> bool:
    """Rank 0 of a distributed run (or a single process); before the trainer exists, from the environment."""
    if trainer is not None:
        return trainer.is_global_zero
    # Lightning sets rank_zero_only.rank (from the environment) at import; the function does not declare it
    return rank_zero_only.rank == 0  # type: ignore[attr-defined]


#: a run or sweep stopped by SIGTERM (143) or Ctrl-C (130), as a shell reports a process killed by them
INTERRUPTED_EXIT_CODES = (130, 143)


def is_interruption(exc: BaseException) -> bool:
    """SIGTERM (Lightning's ``SIGTERMException``) or Ctrl-C (``KeyboardInterrupt``, which Lightning turns
    into ``SystemExit(1)`` after its graceful shutdown)."""
    return isinstance(exc, KeyboardInterrupt | SIGTERMException) or (
        isinstance(exc, SystemExit) and exc.code == 1
    )


def share_data_profile(cfg: DictConfig, sweep: Path | None) -> None:
    """Point the data-profile figure at the sweep's folder, where its jobs agree which one draws it
    (:class:`resflex.training.profile_view.DataProfileFigure`); a single run draws its own."""
    node = OmegaConf.select(cfg, "callbacks.data_profile", default=None)
    if sweep is not None and node is not None and not node.get("shared_dir"):
        with open_dict(cfg):
            node.shared_dir = str(sweep)


def completed_record(cfg: DictConfig, ckpt_path: str | None, output_dir: Path) -> dict[str, Any] | None:
    """The record of this folder's completed run when ``ckpt_path=last`` finds nothing left to train
    (its checkpoint at ``trainer.max_epochs`` or ``max_steps``), else None.

    Why: a sweep run again with ``ckpt_path=last`` (to finish its interrupted and unstarted jobs) also
    "resumes" its completed jobs; Lightning then trains nothing, and the validation and test after it
    replaced their records with a re-test's (no val/* metrics, a wall time of seconds). A larger
    ``trainer.max_epochs`` still trains on. The command's ``.hydra`` files give way to the run's own.
    """
    if str(cfg.get("ckpt_path")) != "last" or ckpt_path is None or not Path(ckpt_path).is_file():
        return None
    record = read_record(output_dir)
    if record.get("status") != "completed":
        return None
    epoch, step = training_progress(ckpt_path)
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    max_steps = OmegaConf.select(cfg, "trainer.max_steps", default=-1)
    steps_done = max_steps is not None and int(max_steps) > 0 and step >= int(max_steps)
    epochs_done = max_epochs is not None and int(max_epochs) >= 0 and epoch + 1 >= int(max_epochs)
    if not (steps_done or epochs_done):
        return None
    if is_global_zero(None):
        restore_hydra_files(output_dir)
    log.info(
        "%s: the run completed (epoch %d of trainer.max_epochs=%s): nothing left to train, its record and "
        "files are kept as they are (a larger trainer.max_epochs trains on)",
        output_dir,
        epoch + 1,
        max_epochs,
    )
    return record


def interruption_cause(exc: BaseException) -> str:
    """What stopped a run, for its record: not Lightning's exception names."""
    return "stopped by SIGTERM" if isinstance(exc, SIGTERMException) else "stopped by Ctrl-C"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment; returns the record also written to ``metrics.json``. A SIGTERM outside
    Lightning's calls (the data scan, the calibration after fit) stops it as one inside does."""
    sigterm = SigtermOutsideLightning()
    with sigterm.installed():
        return _train(cfg, sigterm)


def _train(cfg: DictConfig, sigterm: SigtermOutsideLightning) -> dict[str, Any]:
    output_dir = Path(cfg.paths.output_dir)
    record = RunRecord(output_dir=str(output_dir))
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        record.overrides = list(hc.overrides.task)
        record.choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    started = time.time()
    quiet_library_noise()
    trainer: pl.Trainer | None = None
    try:
        # a new run in a folder that holds another: refused before anything is written there
        refuse_new_run_in_held_folder(cfg, output_dir, restore=is_global_zero(None))
        # every key and path, before any data is read (resflex/preflight.py): a mistake costs one line
        ckpt_path = check_before_work(cfg)
        completed = completed_record(cfg, ckpt_path, output_dir)
        if completed is not None:  # ckpt_path=last on a finished run (a sweep run again): kept as it is
            return completed
        # a resume continues the run's own experiment (or is refused in one line); a run that starts
        # here keeps the config it was started with (resflex/resume_check.py)
        original = prepare_run_folder(cfg, ckpt_path, output_dir, write=is_global_zero(None))
        if original is not None:  # this folder's run, continued: the record keeps how it was started
            record.resumes = [*resumes_so_far(output_dir), record.overrides or []]
            record.overrides = original
            earlier = read_record(output_dir).get("wall_time_s")  # the run's time so far, resumes included
            started -= float(earlier) if isinstance(earlier, int | float) else 0.0
        share_data_profile(cfg, sweep_dir())  # in a sweep: the data profile figure once
        trainer = build_trainer(cfg, record)  # Lightning checks the trainer.* keys
    except BaseException as exc:
        if isinstance(exc, ResumeRefused):
            raise  # the run folder stays the original run's: its record and its .hydra files
        record.status, record.error = "failed", describe_error(exc)
        if is_interruption(exc):
            record.status, record.error = "interrupted", interruption_cause(exc)
        record.wall_time_s = round(time.time() - started, 2)
        if is_global_zero(None) and held_run(output_dir) is not None:
            restore_hydra_files(output_dir)  # a resume refused before work: the run's record stays its own
        elif is_global_zero(None):  # nothing ran: the record says why, no end-of-run report
            write_metrics_json(output_dir / METRICS_FILE, record.as_dict())
        raise
    fit_metrics: dict[str, Any] = {}
    module: Any = None
    try:
        pl.seed_everything(cfg.seed, workers=True)
        datamodule = build_datamodule(cfg)
        record.data_profile = datamodule.profile.as_dict()  # incl. the geometry auto resolved to
        check_sizes_bucketed(cfg, datamodule)  # keep_aspect: a non-square size would train by one side
        module = build_module(cfg, datamodule.num_classes)
        # callbacks.model_checkpoint.monitor: known, and validated at every size when it needs them
        apply_monitor(cfg, datamodule, top5=bool(getattr(module, "top5", False)))
        check_sizes_fit_backbone(datamodule, module.model.backbone, module.scale_view)
        if isinstance(trainer.accelerator, CPUAccelerator) and retain_freed_host_memory():
            log.info(
                "CPU run: freed host memory is kept for the next batch (glibc mallopt; "
                "MALLOC_TRIM_THRESHOLD_=131072 in the environment turns this off)"
            )
        log.info(
            "classes: %d, train images: %d", datamodule.num_classes, len(datamodule.source.splits["train"])
        )
        # ckpt_path=last: the run's newest readable checkpoint (a cut-short last.ckpt is skipped, warned)
        if ckpt_path is not None and Path(ckpt_path).is_file():
            check_resumable(ckpt_path, module)  # another model's checkpoint: one line, not Lightning's page
        try:
            with sigterm.lightning():
                trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except pickle.UnpicklingError:
            raise DataError(
                f"refusing to resume from {ckpt_path}: it contains code or Python objects, not just "
                "tensors, and unpickling it could run arbitrary code",
                hint="resume only from checkpoints written by resflex/Lightning",
            ) from None
        fit_metrics = collect_metrics(trainer)  # trainer.test() replaces callback_metrics
        check_finite(trainer.callback_metrics)
        if trainer.interrupted:
            record.status = "interrupted"
        else:
            record.status = "completed"
            calibrated = bool(cfg.eval.bn_calibration) and bool(
                calibrate_run_checkpoints(trainer, module, datamodule, cfg.eval.bn_calibration_batches)
            )  # BatchNorm statistics per evaluation size, written into the checkpoints
            best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
            # val/* of the last epoch are another checkpoint's than test/*'s when the best is earlier
            earlier = best is not None and best_epoch(best) != trainer.current_epoch - 1
            if calibrated or datamodule.extra_sizes_after_fit or earlier:
                # the best checkpoint at every evaluation size (with its per-size statistics): val/* of
                # metrics.json, the model card's robust range and the val size curve are these
                with sigterm.lightning():
                    trainer.validate(
                        module, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False
                    )
                fit_metrics = {**fit_metrics, **collect_metrics(trainer)}
            if cfg.get("test_after_fit") and datamodule.has_split("test"):
                best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
                # verbose=False: the end-of-run table replaces Lightning's (a sparse column per size)
                with sigterm.lightning():
                    trainer.test(
                        module, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False
                    )
    except BaseException as exc:
        record.status = "interrupted" if is_interruption(exc) else "failed"
        batch = getattr(module, "last_batch", None)
        precision = None if isinstance(trainer.accelerator, CPUAccelerator) else str(trainer.precision)
        memory = out_of_memory_error(exc, batch, run_hint(cfg, batch, precision))
        record.error = describe_error(memory or exc)
        if is_interruption(exc):  # not Lightning's exception names: what stopped it
            record.error = interruption_cause(exc)
        if memory is not None:  # the batch it was at and the keys that lower it, not the allocator's page
            raise memory from exc
        raise
    finally:
        record.wall_time_s = round(time.time() - started, 2)
        ckpt = trainer.checkpoint_callback if trainer is not None else None
        if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_score is not None:
            # {monitor: value, "monitor", "epoch" (BestEpochMetrics), "checkpoint"}
            record.best = {
                str(ckpt.monitor): float(ckpt.best_model_score),
                "monitor": str(ckpt.monitor),
                **(record.best or {}),
                "checkpoint": ckpt.best_model_path,
            }
        extra = {**record.throughput, **record.best_metrics}
        record.metrics = {**fit_metrics, **collect_metrics(trainer, extra)}
        if is_global_zero(trainer):  # metrics are synced across ranks; one writer per run folder
            write_metrics_json(output_dir / METRICS_FILE, record.as_dict())
            if has_checkpoints(output_dir):  # a run that never saved weights: no card
                write_model_card_quietly(
                    output_dir
                )  # <run>/model_card.md + classes.json (resflex.model_card)
        if trainer is not None and trainer.is_global_zero and record.status == "completed":
            sizes = getattr(getattr(trainer, "datamodule", None), "eval_sizes", None) or []
            hparams, varied = run_hparams(
                cfg,
                record.choices or {},
                record.overrides or [],
                eval_size=size_tag(*sizes[0]) if sizes else None,
                swept=current_swept_keys(),  # a sweep: what differs between its jobs comes first
                text_keys=current_sweep_text_keys(),  # a sweep over null,0.4: text in every job
            )
            log_hparams_with_metrics(trainer, hparams, record.metrics, varied)
        if is_global_zero(trainer):  # also for a failed or interrupted run: what exists (never raises)
            log_root = OmegaConf.select(cfg, "paths.log_dir", default=None, throw_on_resolution_failure=False)
            sweep = sweep_dir()
            if sweep is not None and tensorboard_logdir(output_dir, log_root) == output_dir:
                log_root = str(sweep)  # a sweep outside the logs folder: its jobs on one chart
            report_end_of_run(record.as_dict(), output_dir, trainer, log_root)
    return record.as_dict()


def run_task(cfg: DictConfig, failed_jobs: list[str]) -> float | None:
    """One Hydra job: a single run exits on failure; a sweep job records it in ``failed_jobs`` and goes on."""
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if not multirun:
        with user_errors_as_one_line():
            check_shared_run_dir()  # torchrun / srun: every rank must write to the same folder
            try:
                record = train(cfg)
            except BaseException as exc:
                if full_error_requested():
                    raise
                # SIGTERM / Ctrl-C: the checkpoint is saved (SaveOnInterrupt); say how to resume: the
                # run's own overrides, or the resume would be refused (resflex/resume_check.py). A
                # failure after a checkpoint was written (a bad image, a full disk) can resume too.
                checkpoints = checkpoints_dir(cfg.paths.output_dir)
                saved = has_checkpoints(cfg.paths.output_dir)
                if saved:
                    overrides, config_name = current_overrides()
                    command = resume_command(overrides, cfg.paths.output_dir, "last", config_name)
                if not is_interruption(exc):
                    user_error = find_user_error(exc)  # refused resume: the checkpoints are another run's
                    if saved and user_error is not None and not isinstance(user_error, ResumeRefused):
                        print(f"checkpoints kept in {checkpoints}; once fixed: {command}", file=sys.stderr)
                    raise
                if saved:
                    message = f"interrupted: checkpoint saved in {checkpoints}; resume with: {command}"
                else:  # before training began (imports, the data scan): nothing to resume
                    message = "interrupted before training began: nothing saved"
                print(message, file=sys.stderr)
                raise SystemExit(143 if isinstance(exc, SIGTERMException) else 130) from None
            finally:
                finish_child_ranks()  # strategy=ddp: rank 0 reports the error, not a SIGKILL
        return record["metrics"].get("val/acc")
    # ddp_job_scope: strategy=ddp launches this job's ranks into this job's folder (docs/scaling.md).
    hc = HydraConfig.get()
    try:
        with ddp_job_scope(hc.runtime.output_dir, list(hc.overrides.task), hc.job.config_name):
            record = train(cfg)
        return record["metrics"].get("val/acc")
    except BaseException as exc:
        if full_error_requested():
            raise
        job = Path(hc.runtime.output_dir).name  # the job's folder: named by what differs
        if is_interruption(exc):  # SIGTERM / Ctrl-C stops the sweep, not just this job: say how to go on
            saved = has_checkpoints(hc.runtime.output_dir)
            what = (
                f"checkpoint saved in {checkpoints_dir(hc.runtime.output_dir)}" if saved else "nothing saved"
            )
            print(
                f"interrupted: job {job} ({what}); the jobs after it did not run. Continue the sweep "
                f"(completed jobs are kept, this one resumes, the rest start) with: {sweep_resume_command()}",
                file=sys.stderr,
            )
            raise SystemExit(143 if isinstance(exc, SIGTERMException) else 130) from None
        if not isinstance(exc, Exception):
            raise
        failed_jobs.append(job)
        release_memory()  # an OOM job must not take the next job's memory with it
        cause = describe_error(exc)
        log.error("job %s failed: %s", job, cause)
        print(f"error: job {job} failed: {cause}", file=sys.stderr)
        return None


def main() -> None:
    """Console entry point: validates group choices, runs Hydra, exits with the number of failed jobs."""
    prepare_cli(sys.argv[1:], "train")
    remember_launch_argv(sys.argv[1:])  # an Optuna sweep's jobs see only their own overrides
    quiet_library_noise()
    failed_jobs: list[str] = []

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
    def hydra_entry(cfg: DictConfig) -> float | None:
        return run_task(cfg, failed_jobs)

    try:
        with child_rank_grace(sys.argv):  # strategy=ddp: let rank 0 report a failure all ranks share
            hydra_entry()
    except SystemExit as exc:
        # the sweeper itself gave up after failed jobs (Optuna with no completed trial):
        # Hydra has printed why; the exit code still counts the failed jobs
        if not failed_jobs or exc.code in (None, 0, *INTERRUPTED_EXIT_CODES):
            raise
    if failed_jobs:
        print(f"{len(failed_jobs)} job(s) failed: {', '.join(failed_jobs)}", file=sys.stderr)
        raise SystemExit(min(len(failed_jobs), 125))


if __name__ == "__main__":
    main()
