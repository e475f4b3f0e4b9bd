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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor

from resflex.config import TRAINER_TARGET
from resflex.data.arguments import to_plain
from resflex.data.datamodule import ResflexDataModule
from resflex.data.eval_sizes import drop_unfit_sizes
from resflex.data.naflex import is_token_schedule
from resflex.data.sampler import ScheduleLengthSync
from resflex.data.sizes import check_bucketed_size, check_training_sizes_bucketed
from resflex.errors import ConfigError, DataError, find_user_error, first_line
from resflex.models.backbone import TimmBackbone
from resflex.models.checkpoint import init_head_from_checkpoint
from resflex.models.input_shapes import forget_real_twins
from resflex.runtime import resolve_precision
from resflex.training.callbacks import MeasuredOn
from resflex.training.finetune import build_finetuning
from resflex.training.module import ClassificationModule
from resflex.training.run_record import RunRecord, attach_run_record
from resflex.training.safety import AtomicCheckpointIO
from resflex.training.scale_consistency import ScaleConsistency
from resflex.types import Size
from resflex.validation import check_writable_folder


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
    (the ``resolution`` group is its ``schedule``). Run folders of older layouts are migrated to this
    one when they are opened (:mod:`resflex.run`), never here."""
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


def build_module(cfg: DictConfig, num_classes: int) -> ClassificationModule:
    """The LightningModule of ``cfg.model`` (network, optimizer, LR schedule, loss, regularisers, EMA).

    ``model`` is one ``_target_`` node whose keys are the module's arguments, its
    ``net`` nesting the backbone and pooling groups; only the class count comes from
    the data.
    """
    if num_classes < 2:  # else torchmetrics refuses deep inside the module, naming none of this
        root = OmegaConf.select(cfg, "data.root", default=None)
        where = f" under {root}/train" if root else ""
        raise DataError(
            f"the data has {num_classes} class{where}: a classifier needs at least 2",
            hint="one folder per class: <root>/train/<class>/<images>",
        )
    module = build_node(cfg.model, **{"net.num_classes": num_classes})
    init_head_from_checkpoint(module.model)  # backbone.init_from + backbone.init_head=true: pooling, head
    return module


def check_sizes_bucketed(cfg: DictConfig, datamodule: ResflexDataModule) -> None:
    """A ``keep_aspect`` run uses one side of each size it is given: a non-square training size
    (:func:`~resflex.data.sizes.check_training_sizes_bucketed`) or evaluation size is refused in one
    line, after ``geometry=auto`` has chosen, instead of training at the buckets of one side under a
    ``h x w`` label."""
    schedule = datamodule.schedule
    if schedule.geometry != "keep_aspect" or is_token_schedule(schedule):
        return
    resolution = to_plain(cfg.resolution)
    bucket_size = str(getattr(schedule, "bucket_size", "short_side"))
    chosen = str(resolution.get("geometry")) == "auto"
    check_training_sizes_bucketed(resolution, schedule.sizes(), schedule.geometry, bucket_size, chosen)
    if not datamodule.eval_sizes_auto:
        for size in datamodule.eval_sizes:
            check_bucketed_size(size, schedule.geometry, bucket_size, "eval.resolutions")


def check_sizes_fit_backbone(
    datamodule: ResflexDataModule, backbone: TimmBackbone, scale_view: ScaleConsistency | None = None
) -> None:
    """Every shape the run will feed the backbone must suit it (patch size, total stride, and a
    forward on the meta device: :meth:`TimmBackbone.check_input_size`), before the first step.

    The shapes: each training size and, under ``keep_aspect``, each aspect bucket's shape at it;
    the scale-consistency views of those (``scale_view``); each evaluation size and its buckets.
    Evaluation sizes that ``eval.resolutions=auto`` picked are dropped instead of refused (nobody asked
    for them by name). Why all of them: a model that takes 64x64 may not take the 64x128 bucket
    or the 40x40 view (DLA and HRNet add two branches' maps that differ by a pixel unless each side
    is a multiple of 32), and without this check the run stopped at the first such batch.
    """
    schedule = datamodule.schedule
    bucketed = schedule.geometry == "keep_aspect" and not is_token_schedule(schedule)

    def with_buckets(size: Size) -> list[tuple[Size, float | None]]:
        """The size, then (under keep_aspect) each aspect bucket's shape at it, with its aspect."""
        buckets = [(schedule.shape_for(size, a), a) for a in schedule.aspect_ratios] if bucketed else []
        return [(size, None), *buckets]

    train_shapes = [shape for size in schedule.train_sizes() for shape, _ in with_buckets(size)]
    views = [
        (factor, shape, view)
        for shape in dict.fromkeys(train_shapes)
        for factor, view in (scale_view.view_shapes(shape) if scale_view is not None else [])
    ]
    eval_shapes = [shape for size in datamodule.eval_sizes for shape, _ in with_buckets(size)]
    # a hint that frees the input size names one that covers every shape of the run, not the first
    largest = max(max(shape) for shape in [*train_shapes, *(v for _, _, v in views), *eval_shapes])

    def check_shapes(size: Size, key: str) -> None:
        for shape, aspect in with_buckets(size):
            if aspect is None:
                backbone.check_input_size(shape, key, largest)
                continue
            # the size itself passed: one shape for every image runs where the buckets cannot
            square = f"resolution.geometry=square (every image at {size[0]}x{size[1]}, no buckets)"
            with context(f"the keep_aspect bucket of aspect {aspect:g} (w/h) at {key}={size[0]}", square):
                backbone.check_input_size(shape, key, largest)

    try:
        for size in schedule.train_sizes():
            check_shapes(size, "resolution.size")
        for factor, shape, view in views:
            with context(
                f"the {factor:g}x view of the {shape[0]}x{shape[1]} batch", "model.scale_consistency=0"
            ):
                backbone.check_input_size(view, "model.scale_consistency_factors", largest)
        if datamodule.eval_sizes_auto:
            datamodule.eval_sizes = drop_unfit_sizes(
                datamodule.eval_sizes, lambda size: check_shapes(size, "eval.resolutions")
            )
        for size in datamodule.eval_sizes:
            check_shapes(size, "eval.resolutions")
    finally:
        forget_real_twins()  # the run's shapes are known: a real twin's memory is the run's again


@contextmanager
def context(where: str, hint: str | None = None) -> Iterator[None]:
    """A :class:`ConfigError` raised inside the block says ``where`` it happened (a shape the user did
    not type: a bucket, a view), and ``hint`` joins its own."""
    try:
        yield
    except ConfigError as exc:
        hints = [h for h in (exc.hint, hint) if h]
        raise ConfigError(f"{exc.message}, in {where}", hint="; ".join(hints) or None) from None


def build_loggers(cfg: DictConfig) -> list[Any]:
    """The ``logger`` group's loggers. One that cannot start (a save_dir that cannot be made, a
    tracking URI nothing serves) is one line naming it, not Hydra's instantiation report: the
    logger's own error, which is all the user needs, sits two causes deep in it."""
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        logger = instantiate_in_one_line(
            node,
            f"the {name} logger cannot start",
            hint=f"check logger.{name}.* (a writable save_dir, a tracking URI that answers)",
        )
        save_dir = getattr(logger, "save_dir", None)
        if isinstance(save_dir, str):  # Lightning makes it at fit's start: a failure then is a traceback
            check_writable_folder(Path(save_dir), f"logger.{name}.save_dir")
        loggers.append(logger)
    return loggers


def build_callbacks(cfg: DictConfig, with_loggers: bool) -> list[pl.Callback]:
    """``callbacks`` group, the fine-tuning callback (``full`` without a ``finetune`` node) and epoch sync.

    The module adds its own for each fit (the EMA, the plateau rule): ``configure_callbacks``.
    """
    callbacks = [
        build_callback(name, node) for name, node in (cfg.get("callbacks") or {}).items() if node is not None
    ]
    finetune = OmegaConf.select(cfg, "finetune", default=None)
    callbacks.append(instantiate(finetune) if finetune is not None else build_finetuning(None))
    callbacks.append(ScheduleLengthSync())  # multigrid / batch scaling: epochs of varying length
    callbacks.append(MeasuredOn())  # the record's measured_on: which checkpoint the final numbers are of
    if not with_loggers:  # logger=none: the LR monitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def build_callback(name: str, node: DictConfig) -> pl.Callback:
    """One callback of the ``callbacks`` group; what its constructor refuses (Lightning's
    ``ModelCheckpoint(mode=...)``, a resflex callback's check) is one line naming the node."""
    target = str(node.get("_target_", "")).rsplit(".", 1)[-1]
    return instantiate_in_one_line(
        node, f"callbacks.{name}", hint=f"the callbacks.{name}.* keys are {target}'s arguments"
    )


def instantiate_in_one_line(node: Any, what: str, hint: str, **objects: Any) -> Any:
    """``instantiate(node, **objects)`` for the nodes whose constructor checks the user's keys (a logger,
    a callback, the Trainer): its refusal is one line, not Hydra's instantiation report, where the
    constructor's own error sits a cause or two deep. A resflex error comes out as itself; any other as
    ``what: Type: its first line`` with ``hint``."""
    try:
        return instantiate(node, **objects)
    except InstantiationException as exc:
        user_error = find_user_error(exc)
        if user_error is not None:
            raise user_error from None
        cause = exc.__cause__ or exc
        reason = first_line(cause)
        reason = reason if len(reason) <= 160 else reason[:160] + "..."
        raise ConfigError(f"{what}: {type(cause).__name__}: {reason}", hint=hint) from exc


def check_accelerator_present(accelerator: str) -> None:
    """A GPU (or Apple MPS) accelerator asked for on a machine without one, in one line with the switch
    that runs here: Lightning's own words ("No supported gpu backend found!") name no way out."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator}: torch sees no CUDA GPU on this machine",
            hint="trainer=cpu (or trainer.accelerator=auto: a GPU where there is one)",
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "trainer.accelerator=mps: this machine has no Apple MPS device",
            hint="trainer=cpu (or trainer.accelerator=auto)",
        )


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
    objects["precision"] = resolve_precision(spec.pop("precision", "auto"), key="trainer.precision")
    if "fsdp" not in str(spec.get("strategy", "auto")) and not spec.get("plugins"):
        objects["plugins"] = [AtomicCheckpointIO()]  # temp file + rename; weights_only loads
        spec.pop("plugins", None)
    check_accelerator_present(str(spec.get("accelerator", "auto")))
    # Lightning's checks of trainer.*: a Trainer that cannot be built is always its keys' doing
    return instantiate_in_one_line(
        spec, "trainer", hint="the trainer.* keys are pytorch_lightning.Trainer arguments", **objects
    )
