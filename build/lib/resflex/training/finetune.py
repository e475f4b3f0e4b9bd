"""Fine-tuning strategies: which backbone parameters train, when, and at what learning rate.

``finetune=full|linear_probe|gradual`` (configs/finetune/) picks a strategy:

- ``full``: everything trains from the first step. ``backbone_lr_mult`` scales
  the backbone's LR against the head's (discriminative LRs); ``layer_decay``
  additionally scales each backbone layer by ``layer_decay ** depth_from_top``
  (BEiT-style, with layer ids from timm's ``param_groups_layer_decay``).
- ``linear_probe``: the backbone is frozen — ``requires_grad=False`` *and*
  BatchNorm in eval mode, so its running statistics never move — and only the
  pooling head and classifier train. Frozen tensors are not given to the optimizer.
- ``gradual``: the head trains first; the backbone's stages (timm's coarse
  parameter groups: stem, layer1… for a ResNet, blocks for a ViT) are split into
  ``len(unfreeze_at_epochs)`` chunks and unfrozen top-down, chunk ``i`` at epoch
  ``unfreeze_at_epochs[i]``. A newly unfrozen chunk's LR ramps up linearly from 0
  over ``unfreeze_warmup_epochs``, so fresh gradients through a stable
  pre-trained stage do not wreck it.
- ``freeze_bn`` (any strategy): every backbone BatchNorm stays in eval mode with
  its affine parameters fixed — for small-batch fine-tuning, where batch
  statistics are noise.

This module holds the callback that applies a strategy during training (freezing,
BatchNorm modes, parameter counts). The optimizer groups it relies on are built in
:mod:`resflex.training.param_groups`, their LR curves in :mod:`resflex.training.lr_schedule`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BaseFinetuning
from torch import nn

from resflex.compat import BatchNorm
from resflex.errors import ConfigError
from resflex.models.classifier import ImageClassifier
from resflex.training.param_groups import FinetuneSpec, unfreeze_epochs
from resflex.training.run_record import FillsRunRecord

log = logging.getLogger("resflex")


# ---- parameter counts ---------------------------------------------------------------------
def count_parameters(module: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def format_count(n: int) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def classifier_of(pl_module: pl.LightningModule) -> ImageClassifier:
    """The :class:`ImageClassifier` a resflex ``ClassificationModule`` trains (its ``model``)."""
    model = pl_module.model
    if not isinstance(model, ImageClassifier):
        raise TypeError(f"a resflex ClassificationModule was expected, got {type(pl_module).__name__}")
    return model


# ---- the callback ---------------------------------------------------------------------------
class Finetuning(FillsRunRecord, BaseFinetuning):
    """Freezes/unfreezes backbone parameters per :class:`FinetuneSpec`; keeps frozen BatchNorm in eval mode.

    Built on Lightning's ``BaseFinetuning`` (``freeze_before_training`` runs
    before ``configure_optimizers``; ``finetune_function`` at every epoch start).
    Lightning does not put modules back into train mode itself in 2.x, but user
    code or other callbacks may; frozen BatchNorm layers are therefore put back
    into eval mode at the start of every training batch (a loop over a cached
    list: negligible next to a step).

    Logs parameter counts (trainable / frozen) when fitting starts and after each
    unfreeze; :attr:`param_counts` holds the counts at the start of training.
    """

    def __init__(
        self,
        name: str = "full",
        backbone_lr_mult: float = 1.0,
        layer_decay: float | None = None,
        freeze_bn: bool = False,
        unfreeze_at_epochs: Sequence[int] = (),
        unfreeze_warmup_epochs: float = 1.0,
    ) -> None:
        super().__init__()
        self.spec = FinetuneSpec.from_config(
            dict(
                name=name,
                backbone_lr_mult=backbone_lr_mult,
                layer_decay=layer_decay,
                freeze_bn=freeze_bn,
                unfreeze_at_epochs=list(unfreeze_at_epochs or ()),
                unfreeze_warmup_epochs=unfreeze_warmup_epochs,
            )
        )
        self.schedule: dict[str, int | None] = {}
        self.param_counts: dict[str, int] = {}
        self._frozen_bn: list[nn.Module] = []
        self._epoch = -1

    # -- freezing ---------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.spec.name == "gradual" and trainer.world_size > 1:
            raise ConfigError(
                "finetune=gradual does not support multi-process (DDP) training yet: DDP registers the "
                "trainable parameters once, so stages unfrozen later would not be synchronised",
                hint="use finetune=full with finetune.backbone_lr_mult/layer_decay, or one device",
            )
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.schedule = unfreeze_epochs(classifier_of(pl_module).backbone.model, self.spec)
        self._apply(pl_module, epoch=0)

    def _apply(self, pl_module: pl.LightningModule, epoch: int) -> int:
        """Set ``requires_grad`` for ``epoch``; returns how many parameters were unfrozen now."""
        backbone = classifier_of(pl_module).backbone.model
        unfrozen = 0
        for name, param in backbone.named_parameters():
            first = self.schedule.get(name, 0)
            trainable = first is not None and first <= epoch
            if trainable and not param.requires_grad:
                unfrozen += param.numel()
            param.requires_grad_(trainable)
        previously_frozen = self._frozen_bn
        self._frozen_bn = [
            m
            for m in backbone.modules()
            if isinstance(m, BatchNorm)
            and (
                self.spec.freeze_bn
                or self.spec.name == "linear_probe"
                or any(not p.requires_grad for p in m.parameters(recurse=False))
            )
        ]
        # BatchNorm layers that just got unfrozen go back to train mode (statistics update again);
        # frozen ones are set to eval by the training hooks, after Lightning's check that modules
        # start in train mode (which would warn about these intentional eval-mode layers)
        for module in previously_frozen:
            if not any(module is m for m in self._frozen_bn):
                module.train(pl_module.training)
        return unfrozen

    def _set_bn_eval(self) -> None:
        for module in self._frozen_bn:
            module.eval()

    def finetune_function(
        self, pl_module: pl.LightningModule, epoch: int, optimizer: torch.optim.Optimizer | None
    ) -> None:
        """``optimizer``: unused (no group is added mid-run); None when the trainer has none."""
        if epoch == self._epoch:  # called once per optimizer; apply once per epoch
            return
        self._epoch = epoch
        unfrozen = self._apply(pl_module, epoch)
        if unfrozen:
            counts = count_parameters(classifier_of(pl_module))
            log.info(
                "epoch %d: unfroze %s backbone parameters; trainable now %s, frozen %s",
                epoch,
                format_count(unfrozen),
                format_count(counts["trainable"]),
                format_count(counts["frozen"]),
            )
            self._log_counts(pl_module, counts)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not BaseFinetuning's version: that one records param groups added mid-run so that a resume
        # can re-add them; here no group is ever added (see the module docstring), so nothing to record.
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.finetune_function(pl_module, trainer.current_epoch, optimizer)
        self._set_bn_eval()

    def state_dict(self) -> dict[str, Any]:
        return {}  # the schedule is a pure function of the config and the epoch

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._set_bn_eval()

    # -- reporting ----------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        counts = count_parameters(classifier_of(pl_module))
        self.param_counts = counts
        if self.run_record is not None:
            self.run_record.params = dict(counts)
        message = (
            f"parameters: {format_count(counts['total'])} total, {format_count(counts['trainable'])} "
            f"trainable, {format_count(counts['frozen'])} frozen (finetune={self.spec.name}"
            + (
                f", backbone_lr_mult={self.spec.backbone_lr_mult:g}"
                if self.spec.backbone_lr_mult != 1
                else ""
            )
            + (f", layer_decay={self.spec.layer_decay:g}" if self.spec.layer_decay is not None else "")
            + (", freeze_bn" if self.spec.freeze_bn else "")
            + (
                f", unfreeze_at_epochs={list(self.spec.unfreeze_at_epochs)}"
                if self.spec.unfreeze_at_epochs
                else ""
            )
            + ")"
        )
        if trainer.is_global_zero:  # the console and train.log, once (Lightning's own summary is off)
            log.info(message)
        self._log_counts(pl_module, counts, text=message)

    def _log_counts(
        self, pl_module: pl.LightningModule, counts: dict[str, int], text: str | None = None
    ) -> None:
        trainer = pl_module.trainer
        if not trainer.is_global_zero:
            return
        metrics = {"params/trainable": float(counts["trainable"]), "params/frozen": float(counts["frozen"])}
        # a curve only when the counts change (gradual unfreezing); a constant count would be a one-point
        # chart ahead of the training curves in SCALARS (it is in the text below and in metrics.json)
        changes = bool(self.spec.unfreeze_at_epochs)
        for logger in trainer.loggers:
            if changes:
                logger.log_metrics(metrics, step=trainer.global_step)
            experiment = getattr(logger, "experiment", None)
            if text and experiment is not None and hasattr(experiment, "add_text"):
                experiment.add_text("params", text, global_step=trainer.global_step)


def build_finetuning(cfg: Mapping[str, Any] | None) -> Finetuning:
    """The callback for a ``finetune`` config node (``full`` with defaults when the node is absent)."""
    spec = FinetuneSpec.from_config(cfg)
    return Finetuning(**spec.as_dict())
