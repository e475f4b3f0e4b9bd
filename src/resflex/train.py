"""The Hydra task: ``python scripts/train.py [overrides]``.

Reads top to bottom as the experiment's story: seed → data → model →
callbacks/loggers → trainer → fit → test → record. Every object is built by
``hydra.utils.instantiate`` from the composed config, which Hydra saves in
``<run>/.hydra/config.yaml``; the run folder also gets TensorBoard events,
``checkpoints/`` and ``metrics.json``.
"""

from __future__ import annotations

import gc
import logging
import math
import pickle
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from resflex.config import CONFIG_DIR, exit_on_unknown_group_choice
from resflex.data.datamodule import ResflexDataModule
from resflex.errors import (
    ConfigError,
    DataError,
    find_user_error,
    full_error_requested,
    user_errors_as_one_line,
)
from resflex.model_card import write_model_card_quietly
from resflex.models.backbone import TimmBackbone
from resflex.models.checkpoint import init_head_from_checkpoint
from resflex.models.classifier import ImageClassifier
from resflex.sweeps import register_resolvers
from resflex.training.distributed import (
    check_shared_run_dir,
    child_rank_grace,
    ddp_job_scope,
    finish_child_ranks,
)
from resflex.training.eval_sizes import drop_unfit_sizes, is_auto, resolve_eval_resolutions
from resflex.training.finetune import Finetuning, build_finetuning
from resflex.training.module import ClassificationModule
from resflex.training.results import (
    collect_metrics,
    log_hparams_with_metrics,
    run_hparams,
    write_metrics_json,
)
from resflex.training.safety import AtomicCheckpointIO, SaveOnInterrupt
from resflex.validation import validate_config

log = logging.getLogger("resflex")
FAILED_JOBS: list[str] = []
register_resolvers()  # ${resflex.job_dir:...} names sweep job folders (configs/hydra/default.yaml)


def quiet_library_noise() -> None:
    """Drop messages that are advertising or about choices resflex made on purpose."""
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡")
    )


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
    return trainer.is_global_zero if trainer is not None else rank_zero_only.rank == 0


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_interruption(exc: BaseException) -> bool:
    """SIGTERM (Lightning's ``SIGTERMException``) or Ctrl-C (``KeyboardInterrupt``, which Lightning turns
    into ``SystemExit(1)`` after its graceful shutdown)."""
    return isinstance(exc, KeyboardInterrupt | SIGTERMException) or (
        isinstance(exc, SystemExit) and exc.code == 1
    )


def resolve_channels_last(value: Any) -> bool:
    """``auto``: channels-last on a GPU (tensor cores want NHWC); on CPU the benchmark measured it slower."""
    if value == "auto":
        return torch.cuda.is_available()
    return bool(value)


def resolve_precision(precision: Any) -> Any:
    """``auto``: bf16 mixed precision on a GPU that supports it, full fp32 otherwise."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def build_datamodule(cfg: DictConfig) -> ResflexDataModule:
    schedule = instantiate(cfg.resolution)
    # eval.resolutions=auto (the default): a few sizes around the eval size (resflex/training/eval_sizes.py)
    eval_resolutions = resolve_eval_resolutions(
        OmegaConf.select(cfg, "eval.resolutions", default=None), schedule
    )
    source = instantiate(cfg.data.source)
    loader = cfg.data.loader
    return ResflexDataModule(
        source=source,
        schedule=schedule,
        batch_size=cfg.data.batch_size,
        eval_batch_size=loader.get("eval_batch_size"),
        num_workers=cfg.data.num_workers,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
        prefetch_factor=loader.prefetch_factor,
        augment=OmegaConf.to_container(cfg.data.augment, resolve=True),
        eval_crop_pct=cfg.data.eval_crop_pct,
        seed=cfg.seed,
        eval_resolutions=_plain_list(eval_resolutions),
    )


def _plain_list(value: Any) -> Any:
    """ListConfig -> list (anything else is passed on, for the data module to reject with the key named)."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_list(value) else value


def build_optimizer_factory(cfg: DictConfig) -> Any:
    """``optimizer`` minus resflex's own key ``scale_lr_with_world_size`` (not a torch.optim argument)."""
    spec = OmegaConf.to_container(cfg.optimizer, resolve=True)
    assert isinstance(spec, dict)
    spec.pop("scale_lr_with_world_size", None)
    return instantiate(spec)


def build_module(cfg: DictConfig, num_classes: int) -> ClassificationModule:
    backbone = instantiate(cfg.backbone)
    pooling = instantiate(cfg.pooling)
    model = ImageClassifier(backbone, pooling, num_classes=num_classes, dropout=cfg.model.dropout)
    init_head_from_checkpoint(model)  # backbone.init_from + backbone.init_head=true: pooling and head too
    finetune = OmegaConf.select(cfg, "finetune", default=None)
    return ClassificationModule(
        model=model,
        optimizer=build_optimizer_factory(cfg),
        warmup_epochs=cfg.scheduler.warmup_epochs,
        min_lr_ratio=cfg.scheduler.min_lr_ratio,
        label_smoothing=cfg.model.label_smoothing,
        channels_last=resolve_channels_last(cfg.model.channels_last),
        finetune=OmegaConf.to_container(finetune, resolve=True) if finetune is not None else None,
        compile=OmegaConf.select(cfg, "model.compile", default=False),
        compile_mode=OmegaConf.select(cfg, "model.compile_mode", default=None),
        compile_dynamic=OmegaConf.select(cfg, "model.compile_dynamic", default=None),
        scale_lr_with_world_size=OmegaConf.select(cfg, "optimizer.scale_lr_with_world_size", default=False),
    )


def check_sizes_fit_backbone(
    datamodule: ResflexDataModule, backbone: TimmBackbone, auto_eval_sizes: bool = False
) -> None:
    """Every training and evaluation size must suit the backbone (patch size, total stride).

    Sizes that ``eval.resolutions=auto`` picked are dropped instead (nobody asked for them by name).
    """
    for size in datamodule.schedule.train_sizes():
        backbone.check_input_size(size, "resolution.size")
    if auto_eval_sizes:
        datamodule.eval_sizes = drop_unfit_sizes(
            datamodule.eval_sizes, lambda size: backbone.check_input_size(size, "eval.resolutions")
        )
    for size in datamodule.eval_sizes:
        backbone.check_input_size(size, "eval.resolutions")


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    finetune = OmegaConf.select(cfg, "finetune", default=None)
    # freezing / unfreezing / BatchNorm modes and parameter counts (configs/finetune/)
    callbacks.append(instantiate(finetune) if finetune is not None else build_finetuning(None))
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    if not loggers:  # logger=none: the LR monitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer_cfg, dict)
    trainer_cfg.pop("_target_", None)
    trainer_cfg["precision"] = resolve_precision(trainer_cfg.get("precision", "auto"))
    if "fsdp" not in str(trainer_cfg.get("strategy", "auto")) and not trainer_cfg.get("plugins"):
        trainer_cfg["plugins"] = [AtomicCheckpointIO()]  # temp file + rename; weights_only loads
    return pl.Trainer(**trainer_cfg, callbacks=callbacks, logger=loggers or False)


def resolve_ckpt_path(ckpt_path: Any) -> str | None:
    """``ckpt_path``: null, ``last`` (this run folder's last checkpoint, if any) or an existing file."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path in ("last", "best", "hpc", "registry"):
        return str(ckpt_path)
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path does not exist: {path}",
            hint="pass an existing .ckpt file, or ckpt_path=last with the same hydra.run.dir",
        )
    return str(path)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment; returns the record also written to ``metrics.json``."""
    output_dir = Path(cfg.paths.output_dir)
    record: dict[str, Any] = {"status": "running", "output_dir": str(output_dir)}
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        record["overrides"] = list(hc.overrides.task)
        record["choices"] = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    started = time.time()
    quiet_library_noise()
    trainer: pl.Trainer | None = None
    fit_metrics: dict[str, Any] = {}
    try:
        validate_config(cfg)
        pl.seed_everything(cfg.seed, workers=True)
        datamodule = build_datamodule(cfg)
        record["data_profile"] = datamodule.profile.as_dict()  # incl. the geometry auto resolved to
        module = build_module(cfg, datamodule.num_classes)
        auto_sizes = is_auto(OmegaConf.select(cfg, "eval.resolutions", default=None))
        check_sizes_fit_backbone(datamodule, module.model.backbone, auto_sizes)
        trainer = build_trainer(cfg)
        log.info(
            "classes: %d, train images: %d", datamodule.num_classes, len(datamodule.source.splits["train"])
        )
        ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"))
        try:
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
            record["status"] = "interrupted"
        else:
            record["status"] = "completed"
            if cfg.get("test_after_fit") and datamodule.has_split("test"):
                best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
                trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=True)
    except BaseException as exc:
        user_error = find_user_error(exc)
        record["status"] = "interrupted" if is_interruption(exc) else "failed"
        saved = next(
            (c.saved_path for c in getattr(trainer, "callbacks", []) if isinstance(c, SaveOnInterrupt)), None
        )
        if saved:
            record["checkpoint"] = saved
        record["error"] = (
            user_error.one_line() if user_error else f"{type(exc).__name__}: {exc}".splitlines()[0]
        )
        raise
    finally:
        record["wall_time_s"] = round(time.time() - started, 2)
        if trainer is not None:
            finetuning = next((c for c in trainer.callbacks if isinstance(c, Finetuning)), None)
            if finetuning is not None and finetuning.param_counts:
                record["params"] = dict(finetuning.param_counts)
        throughput = {}
        if trainer is not None:
            throughput = next((c.last for c in trainer.callbacks if hasattr(c, "last")), {})
            ckpt = trainer.checkpoint_callback
            if ckpt is not None and getattr(ckpt, "best_model_score", None) is not None:
                record["best"] = {"val/acc": float(ckpt.best_model_score), "checkpoint": ckpt.best_model_path}
        record["metrics"] = {**fit_metrics, **collect_metrics(trainer, throughput)}
        if is_global_zero(trainer):  # metrics are synced across ranks; one writer per run folder
            write_metrics_json(output_dir / "metrics.json", record)
            write_model_card_quietly(output_dir)  # <run>/model_card.md + classes.json (resflex.model_card)
        if trainer is not None and trainer.is_global_zero and record["status"] == "completed":
            hparams, varied = run_hparams(cfg, record.get("choices", {}), record.get("overrides", []))
            log_hparams_with_metrics(trainer, hparams, record["metrics"], varied)
    log.info("finished: %s", {k: v for k, v in record["metrics"].items() if "/" in k and "step" not in k})
    return record


def _task(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if not multirun:
        with user_errors_as_one_line():
            check_shared_run_dir()  # torchrun / srun: every rank must write to the same folder
            try:
                record = train(cfg)
            except BaseException as exc:
                if not is_interruption(exc) or full_error_requested():
                    raise
                # SIGTERM / Ctrl-C: the checkpoint is saved (SaveOnInterrupt); say how to resume
                print(
                    f"interrupted: checkpoint saved in {Path(cfg.paths.output_dir) / 'checkpoints'}; "
                    f"resume with ckpt_path=last hydra.run.dir={cfg.paths.output_dir}",
                    file=sys.stderr,
                )
                raise SystemExit(143 if isinstance(exc, SIGTERMException) else 130) from None
            finally:
                finish_child_ranks()  # strategy=ddp: rank 0 reports the error, not a SIGKILL
        return record["metrics"].get("val/acc")
    # In a sweep, a failing job is recorded and the sweep goes on with the next one.
    # ddp_job_scope: strategy=ddp launches this job's ranks into this job's folder (docs/scaling.md).
    hc = HydraConfig.get()
    try:
        with ddp_job_scope(hc.runtime.output_dir, list(hc.overrides.task), hc.job.config_name):
            record = train(cfg)
        return record["metrics"].get("val/acc")
    except Exception as exc:
        if full_error_requested():
            raise
        user_error = find_user_error(exc)
        cause = user_error.one_line() if user_error else f"{type(exc).__name__}: {exc}".splitlines()[0]
        job = Path(HydraConfig.get().runtime.output_dir).name  # the job's folder: named by what differs
        FAILED_JOBS.append(job)
        release_memory()  # an OOM job must not take the next job's memory with it
        log.error("job %s failed: %s", job, cause)
        print(f"error: job {job} failed: {cause}", file=sys.stderr)
        return None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_entry(cfg: DictConfig) -> float | None:
    return _task(cfg)


def main() -> None:
    """Console entry point: validates group choices, runs Hydra, exits with the number of failed jobs."""
    exit_on_unknown_group_choice(sys.argv[1:])
    # configs/hydra/launcher/submitit_*.yaml deliberately share the plugin's names (its schema checks them)
    warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema with the same name")
    try:
        with child_rank_grace(sys.argv):  # strategy=ddp: let rank 0 report a failure all ranks share
            _hydra_entry()
    except SystemExit as exc:
        # the sweeper itself gave up after failed jobs (Optuna with no completed trial):
        # Hydra has printed why; the exit code still counts the failed jobs
        if not FAILED_JOBS or exc.code in (None, 0):
            raise
    if FAILED_JOBS:
        print(f"{len(FAILED_JOBS)} job(s) failed: {', '.join(FAILED_JOBS)}", file=sys.stderr)
        raise SystemExit(min(len(FAILED_JOBS), 125))


if __name__ == "__main__":
    main()
