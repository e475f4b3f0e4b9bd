"""From a composed config to the objects of a run: data module, LightningModule, callbacks, trainer.

One home for these builders, shared by training (:mod:`resflex.train`), evaluation,
prediction and export, so a checkpoint is always rebuilt the way it was trained.
They need a composed config (an OmegaConf ``DictConfig``) but not a running Hydra
app: tests and notebooks call them on ``hydra.compose`` output. Every group with a
``_target_`` (backbone, pooling, resolution, data source, optimizer, scheduler,
finetune, callbacks, loggers) is built by ``hydra.utils.instantiate``, and each
object validates its own arguments. Machine-dependent rules (precision,
channels-last) live in :mod:`resflex.runtime`.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor

from resflex.data.datamodule import ResflexDataModule, ScheduleLengthSync
from resflex.errors import ConfigError
from resflex.models.backbone import TimmBackbone
from resflex.models.checkpoint import init_head_from_checkpoint
from resflex.models.classifier import ImageClassifier
from resflex.runtime import resolve_channels_last, resolve_precision
from resflex.training.ema import ModelEma
from resflex.training.eval_sizes import drop_unfit_sizes, is_auto, resolve_eval_resolutions
from resflex.training.finetune import build_finetuning
from resflex.training.module import ClassificationModule
from resflex.training.optim import OptimizerFactory
from resflex.training.run_record import RunRecord, attach_run_record
from resflex.training.safety import AtomicCheckpointIO


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (anything else is passed on for its owner to reject)."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


#: ``data.augment`` keys applied on the device, per batch, by the LightningModule (not the data workers)
DEVICE_AUGMENT = ("random_erasing",)


def data_augment(cfg: DictConfig) -> dict[str, Any]:
    """``data.augment`` for the data workers' transforms: the device keys left to :func:`build_module`."""
    augment = _plain(cfg.data.get("augment")) or {}
    if not isinstance(augment, dict):
        raise ConfigError(f"data.augment must be a mapping, got {augment!r}")
    return {k: v for k, v in augment.items() if k not in DEVICE_AUGMENT}


def build_datamodule(cfg: DictConfig) -> ResflexDataModule:
    """The data module of ``cfg.data`` with the ``cfg.resolution`` schedule."""
    schedule = instantiate(cfg.resolution)
    # eval.resolutions=auto (the default): a few sizes around the eval size (resflex/training/eval_sizes.py)
    eval_resolutions = resolve_eval_resolutions(
        OmegaConf.select(cfg, "eval.resolutions", default=None), schedule
    )
    loader = cfg.data.loader
    return ResflexDataModule(
        source=instantiate(cfg.data.source),
        schedule=schedule,
        batch_size=cfg.data.batch_size,
        eval_batch_size=loader.get("eval_batch_size"),
        num_workers=cfg.data.num_workers,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
        prefetch_factor=loader.prefetch_factor,
        augment=data_augment(cfg),
        eval_crop_pct=cfg.data.eval_crop_pct,
        seed=cfg.seed,
        eval_resolutions=_plain(eval_resolutions),
    )


def build_classifier(cfg: DictConfig, num_classes: int) -> ImageClassifier:
    """Backbone + pooling head + linear classifier (the network alone, no training logic)."""
    model = ImageClassifier(
        instantiate(cfg.backbone),
        instantiate(cfg.pooling),
        num_classes=num_classes,
        dropout=cfg.model.dropout,
    )
    init_head_from_checkpoint(model)  # backbone.init_from + backbone.init_head=true: pooling and head too
    return model


def build_optimizer(cfg: DictConfig) -> OptimizerFactory:
    """``cfg.optimizer`` as an :class:`OptimizerFactory`.

    Run folders written before the factory existed name a torch class as a partial
    (``_target_: torch.optim.AdamW``); their checkpoints still load for evaluation,
    prediction and export, so such a node is read as the timm name of that class.
    """
    spec = _plain(cfg.optimizer)
    target = str(spec.get("_target_", ""))
    if target.startswith("torch.optim."):
        spec = {k: v for k, v in spec.items() if not k.startswith("_") and k != "nesterov"}
        return OptimizerFactory(name=target.rsplit(".", 1)[-1].lower(), **spec)
    return instantiate(spec)


def build_module(cfg: DictConfig, num_classes: int) -> ClassificationModule:
    """The LightningModule: classifier, optimizer, LR schedule, loss and fine-tuning groups."""
    finetune = OmegaConf.select(cfg, "finetune", default=None)
    scheduler = OmegaConf.select(cfg, "scheduler", default=None)
    return ClassificationModule(
        model=build_classifier(cfg, num_classes),
        optimizer=build_optimizer(cfg),
        # runs from before the scheduler had a _target_ name only warm-up and floor: rebuild those
        lr_schedule=instantiate(scheduler) if scheduler is not None and "_target_" in scheduler else None,
        label_smoothing=cfg.model.label_smoothing,
        channels_last=resolve_channels_last(cfg.model.channels_last),
        finetune=_plain(finetune),
        compile=OmegaConf.select(cfg, "model.compile", default=False),
        compile_mode=OmegaConf.select(cfg, "model.compile_mode", default=None),
        compile_dynamic=OmegaConf.select(cfg, "model.compile_dynamic", default=None),
        # runs from before issue #17 have none of these keys: off
        mixup=OmegaConf.select(cfg, "model.mixup", default=0.0),
        cutmix=OmegaConf.select(cfg, "model.cutmix", default=0.0),
        mix_prob=OmegaConf.select(cfg, "model.mix_prob", default=1.0),
        mix_switch_prob=OmegaConf.select(cfg, "model.mix_switch_prob", default=0.5),
        random_erasing=OmegaConf.select(cfg, "data.augment.random_erasing", default=0.0),
        seed=OmegaConf.select(cfg, "seed", default=0),
    )


def check_sizes_fit_backbone(datamodule: ResflexDataModule, backbone: TimmBackbone, cfg: DictConfig) -> None:
    """Every training and evaluation size must suit the backbone (patch size, total stride).

    Sizes that ``eval.resolutions=auto`` picked are dropped instead (nobody asked for them by name).
    """
    for size in datamodule.schedule.train_sizes():
        backbone.check_input_size(size, "resolution.size")
    if is_auto(OmegaConf.select(cfg, "eval.resolutions", default=None)):
        datamodule.eval_sizes = drop_unfit_sizes(
            datamodule.eval_sizes, lambda size: backbone.check_input_size(size, "eval.resolutions")
        )
    for size in datamodule.eval_sizes:
        backbone.check_input_size(size, "eval.resolutions")


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def build_ema(cfg: DictConfig) -> ModelEma | None:
    """``model.ema=true``: the weight-averaging callback (validation, test and checkpoints use the EMA)."""
    ema = OmegaConf.select(cfg, "model.ema", default=False)
    if not isinstance(ema, bool):
        raise ConfigError(f"model.ema must be true or false, got {ema!r}", hint="model.ema=true")
    if not ema:
        return None
    return ModelEma(
        decay=OmegaConf.select(cfg, "model.ema_decay", default=0.999),
        warmup=OmegaConf.select(cfg, "model.ema_warmup", default=True),
    )


def build_callbacks(cfg: DictConfig, with_loggers: bool) -> list[pl.Callback]:
    """``callbacks`` group, the fine-tuning callback (``full`` without a ``finetune`` node), epoch sync,
    and the EMA (``model.ema``)."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    finetune = OmegaConf.select(cfg, "finetune", default=None)
    callbacks.append(instantiate(finetune) if finetune is not None else build_finetuning(None))
    callbacks.append(ScheduleLengthSync())  # multigrid / batch scaling: epochs of varying length
    ema = build_ema(cfg)
    if ema is not None:
        callbacks.append(ema)
    if not with_loggers:  # logger=none: the LR monitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def build_trainer(cfg: DictConfig, record: RunRecord | None = None) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` with resflex's callbacks, loggers and atomic checkpoint IO.

    ``record``: the run record that callbacks fill as the run goes (``metrics.json``).
    """
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, with_loggers=bool(loggers))
    attach_run_record(callbacks, record)
    trainer_cfg = _plain(cfg.trainer)
    trainer_cfg["precision"] = resolve_precision(trainer_cfg.get("precision", "auto"))
    if "fsdp" not in str(trainer_cfg.get("strategy", "auto")) and not trainer_cfg.get("plugins"):
        trainer_cfg["plugins"] = [AtomicCheckpointIO()]  # temp file + rename; weights_only loads
    return pl.Trainer(**trainer_cfg, callbacks=callbacks, logger=loggers or False)
