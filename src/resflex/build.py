"""From a composed config to the objects of a run: data module, LightningModule, callbacks, trainer.

One home for these builders, shared by training (:mod:`resflex.train`), evaluation,
prediction and export, so a checkpoint is always rebuilt the way it was trained.
They need a composed config (an OmegaConf ``DictConfig``) but not a running Hydra
app: tests and notebooks call them on ``hydra.compose`` output. Every group is a
``_target_`` node built by ``hydra.utils.instantiate`` (``data`` and ``model`` nest the
others by interpolation), and each object validates its own arguments. Machine-dependent rules (precision,
channels-last) live in :mod:`resflex.runtime`.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from resflex.config import TRAINER_TARGET
from resflex.data.datamodule import ResflexDataModule, to_plain
from resflex.data.eval_sizes import drop_unfit_sizes
from resflex.data.sampler import ScheduleLengthSync
from resflex.errors import ConfigError, find_user_error, first_line
from resflex.models.backbone import TimmBackbone
from resflex.models.checkpoint import init_head_from_checkpoint
from resflex.models.classifier import ImageClassifier
from resflex.runtime import resolve_precision
from resflex.training.finetune import build_finetuning
from resflex.training.module import ClassificationModule
from resflex.training.optim import OptimizerFactory
from resflex.training.run_record import RunRecord, attach_run_record
from resflex.training.safety import AtomicCheckpointIO


def build_node(node: DictConfig, **fill: Any) -> Any:
    """``instantiate`` a config node with its interpolations resolved against the whole config, after
    setting ``fill`` (dotted keys); a constructor's one-line :class:`ResflexError` comes out as itself,
    not wrapped in Hydra's ``InstantiationException``."""
    spec = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    for key, value in fill.items():
        OmegaConf.update(spec, key, value, force_add=True)
    try:
        return instantiate(spec)
    except InstantiationException as exc:
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        raise user_error from None


def build_datamodule(cfg: DictConfig) -> ResflexDataModule:
    """The data module of ``cfg.data``: one ``_target_`` node whose keys are the module's arguments
    (the ``resolution`` group is its ``schedule``); run folders from before that rebuild through
    :func:`legacy_datamodule`."""
    if "_target_" not in cfg.data:
        return legacy_datamodule(cfg)
    check_source_decoder(cfg.data)
    return build_node(cfg.data)


def check_source_decoder(data: DictConfig) -> None:
    """``+data.source.decoder=...`` on a source with no image files (``data=synthetic``, ``fashion_mnist``):
    one line here, where Hydra would fail on the unexpected argument with a traceback."""
    source = data.get("source")
    if not isinstance(source, DictConfig) or "decoder" not in source or "_target_" not in source:
        return
    try:
        target = get_class(str(source["_target_"]))
    except Exception:  # not a class: instantiating it reports that
        return
    if "decoder" not in inspect.signature(target).parameters:
        raise ConfigError(
            f"data.source.decoder={source['decoder']} decodes image files, and "
            f"data={data.get('name') or target.__name__} has none (only data=imagefolder reads files)",
            hint="data=imagefolder data.root=DIR, or drop data.source.decoder",
        )


def legacy_datamodule(cfg: DictConfig) -> ResflexDataModule:
    """A run config from before the ``data`` node had a ``_target_`` (``data.loader.*``, a whole source)."""
    loader = cfg.data.loader
    return ResflexDataModule(
        source=instantiate(cfg.data.source),
        schedule=instantiate(cfg.resolution),
        batch_size=cfg.data.batch_size,
        eval_batch_size=loader.get("eval_batch_size"),
        num_workers=cfg.data.num_workers,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
        prefetch_factor=loader.prefetch_factor,
        augment=cfg.data.get("augment"),
        eval_crop_pct=cfg.data.eval_crop_pct,
        seed=cfg.seed,
        eval_resolutions=to_plain(OmegaConf.select(cfg, "eval.resolutions", default=None)),
        name=str(cfg.data.get("name", "")),
    )


def build_optimizer(cfg: DictConfig) -> OptimizerFactory:
    """``cfg.optimizer`` as an :class:`OptimizerFactory`.

    Run folders written before the factory existed name a torch class as a partial
    (``_target_: torch.optim.AdamW``); their checkpoints still load for evaluation,
    prediction and export, so such a node is read as the timm name of that class.
    """
    spec = to_plain(cfg.optimizer)
    target = str(spec.get("_target_", ""))
    if target.startswith("torch.optim."):
        spec = {k: v for k, v in spec.items() if not k.startswith("_") and k != "nesterov"}
        return OptimizerFactory(name=target.rsplit(".", 1)[-1].lower(), **spec)
    return instantiate(spec)


def build_module(cfg: DictConfig, num_classes: int) -> ClassificationModule:
    """The LightningModule of ``cfg.model`` (network, optimizer, LR schedule, loss, regularisers, EMA).

    ``model`` is one ``_target_`` node whose keys are the module's arguments, its
    ``net`` nesting the backbone and pooling groups; only the class count comes from
    the data. Run folders written before that node existed rebuild through
    :func:`legacy_module`.
    """
    if "_target_" not in cfg.model:
        return legacy_module(cfg, num_classes)
    module = build_node(cfg.model, **{"net.num_classes": num_classes})
    init_head_from_checkpoint(module.model)  # backbone.init_from + backbone.init_head=true: pooling, head
    return module


def legacy_module(cfg: DictConfig, num_classes: int) -> ClassificationModule:
    """A run config from before the ``model`` node had a ``_target_`` (its flat keys; the switches that
    did not exist then are off), so old checkpoints still evaluate, predict and export."""
    net = ImageClassifier(
        instantiate(cfg.backbone),
        instantiate(cfg.pooling),
        num_classes=num_classes,
        dropout=cfg.model.dropout,
    )
    init_head_from_checkpoint(net)
    finetune = OmegaConf.select(cfg, "finetune", default=None)
    scheduler = OmegaConf.select(cfg, "scheduler", default=None)
    return ClassificationModule(
        net,
        optimizer=build_optimizer(cfg),
        # runs from before the scheduler had a _target_ name only warm-up and floor: rebuild those
        lr_schedule=instantiate(scheduler) if scheduler is not None and "_target_" in scheduler else None,
        label_smoothing=cfg.model.label_smoothing,
        channels_last=cfg.model.channels_last,
        finetune=to_plain(finetune),
        compile=OmegaConf.select(cfg, "model.compile", default=False),
        compile_mode=OmegaConf.select(cfg, "model.compile_mode", default=None),
        compile_dynamic=OmegaConf.select(cfg, "model.compile_dynamic", default=None),
        mixup=OmegaConf.select(cfg, "model.mixup", default=0.0),
        cutmix=OmegaConf.select(cfg, "model.cutmix", default=0.0),
        mix_prob=OmegaConf.select(cfg, "model.mix_prob", default=1.0),
        mix_switch_prob=OmegaConf.select(cfg, "model.mix_switch_prob", default=0.5),
        random_erasing=OmegaConf.select(cfg, "data.augment.random_erasing", default=0.0),
        seed=OmegaConf.select(cfg, "seed", default=0),
        ema=OmegaConf.select(cfg, "model.ema", default=False),
        ema_decay=OmegaConf.select(cfg, "model.ema_decay", default=0.999),
        ema_warmup=OmegaConf.select(cfg, "model.ema_warmup", default=True),
    )


def check_sizes_fit_backbone(datamodule: ResflexDataModule, backbone: TimmBackbone) -> None:
    """Every training and evaluation size must suit the backbone (patch size, total stride).

    Sizes that ``eval.resolutions=auto`` picked are dropped instead (nobody asked for them by name).
    """
    for size in datamodule.schedule.train_sizes():
        backbone.check_input_size(size, "resolution.size")
    if datamodule.eval_sizes_auto:
        datamodule.eval_sizes = drop_unfit_sizes(
            datamodule.eval_sizes, lambda size: backbone.check_input_size(size, "eval.resolutions")
        )
    for size in datamodule.eval_sizes:
        backbone.check_input_size(size, "eval.resolutions")


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def build_callbacks(cfg: DictConfig, with_loggers: bool) -> list[pl.Callback]:
    """``callbacks`` group, the fine-tuning callback (``full`` without a ``finetune`` node) and epoch sync.

    The module adds its own for each fit (the EMA, the plateau rule): ``configure_callbacks``.
    """
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    finetune = OmegaConf.select(cfg, "finetune", default=None)
    callbacks.append(instantiate(finetune) if finetune is not None else build_finetuning(None))
    callbacks.append(ScheduleLengthSync())  # multigrid / batch scaling: epochs of varying length
    if not with_loggers:  # logger=none: the LR monitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def build_trainer(cfg: DictConfig, record: RunRecord | None = None) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` (a ``_target_`` node, built by ``instantiate`` like every group)
    with resflex's callbacks, loggers and atomic checkpoint IO.

    ``record``: the run record that callbacks fill as the run goes (``metrics.json``). Lightning checks
    the ``trainer.*`` keys; what it refuses comes out as one :class:`ConfigError` line.
    """
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, with_loggers=bool(loggers))
    attach_run_record(callbacks, record)
    spec = to_plain(cfg.trainer)
    spec.setdefault("_target_", TRAINER_TARGET)  # run folders saved before the trainer node had one
    objects: dict[str, Any] = {"callbacks": callbacks, "logger": loggers or False}
    objects["precision"] = resolve_precision(spec.pop("precision", "auto"))
    if "fsdp" not in str(spec.get("strategy", "auto")) and not spec.get("plugins"):
        objects["plugins"] = [AtomicCheckpointIO()]  # temp file + rename; weights_only loads
        spec.pop("plugins", None)
    try:
        return instantiate(spec, **objects)
    except InstantiationException as exc:  # Lightning's checks of trainer.* (its message, one line)
        cause = exc.__cause__ or exc
        if not isinstance(cause, TypeError | ValueError | MisconfigurationException):
            raise
        raise ConfigError(
            f"trainer: {first_line(cause)}", hint="the trainer.* keys are pytorch_lightning.Trainer arguments"
        ) from exc
