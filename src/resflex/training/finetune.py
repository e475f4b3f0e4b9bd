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

Why all parameters of a gradual run are in the optimizer from the start: adding
param groups mid-run (Lightning's ``unfreeze_and_add_param_group``) leaves the
LR scheduler unaware of them. Here every group exists up front with its own LR
factor (zero until its unfreeze epoch, then a ramp), so warm-up, cosine decay and
checkpoint/resume treat all groups alike. Parameters without gradients are
skipped by torch optimizers, so frozen ones really stay bit-identical.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BaseFinetuning
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from resflex.errors import ConfigError

log = logging.getLogger("resflex")

STRATEGIES = ("full", "linear_probe", "gradual")


@dataclass(frozen=True)
class FinetuneSpec:
    """The validated ``finetune`` config; plain values only (it is saved in checkpoints)."""

    name: str = "full"
    backbone_lr_mult: float = 1.0
    layer_decay: float | None = None
    freeze_bn: bool = False
    unfreeze_at_epochs: tuple[int, ...] = field(default_factory=tuple)
    unfreeze_warmup_epochs: float = 1.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | FinetuneSpec | None) -> FinetuneSpec:
        """Validate a ``finetune`` mapping (``_target_`` ignored); errors name the offending key."""
        if isinstance(cfg, FinetuneSpec):
            return cfg
        values = {k: v for k, v in dict(cfg or {}).items() if not str(k).startswith("_")}
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"unknown finetune key(s): {', '.join(unknown)}",
                hint=f"valid keys: {', '.join(cls.__dataclass_fields__)}",
            )
        name = values.get("name", "full")
        if name not in STRATEGIES:
            raise ConfigError(f"unknown finetune {name!r}", hint=f"choose one of: {', '.join(STRATEGIES)}")
        mult = values.get("backbone_lr_mult", 1.0)
        if isinstance(mult, bool) or not isinstance(mult, int | float) or mult < 0:
            raise ConfigError(f"finetune.backbone_lr_mult must be a number >= 0, got {mult!r}")
        decay = values.get("layer_decay")
        if decay is not None and (
            isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 < decay <= 1
        ):
            raise ConfigError(
                f"finetune.layer_decay must be in (0, 1] or null, got {decay!r}", hint="e.g. 0.75"
            )
        epochs = values.get("unfreeze_at_epochs") or ()
        if isinstance(epochs, int):
            epochs = (epochs,)
        epochs = tuple(epochs)
        if any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in epochs) or list(
            epochs
        ) != sorted(epochs):
            raise ConfigError(
                f"finetune.unfreeze_at_epochs must be non-decreasing epoch numbers >= 0, got {list(epochs)}",
                hint="e.g. finetune.unfreeze_at_epochs=[2,4]",
            )
        if name == "gradual" and not epochs:
            raise ConfigError(
                "finetune=gradual needs finetune.unfreeze_at_epochs",
                hint="e.g. finetune.unfreeze_at_epochs=[2,4]",
            )
        warmup = values.get("unfreeze_warmup_epochs", 1.0)
        if isinstance(warmup, bool) or not isinstance(warmup, int | float) or warmup < 0:
            raise ConfigError(f"finetune.unfreeze_warmup_epochs must be >= 0, got {warmup!r}")
        return cls(
            name=name,
            backbone_lr_mult=float(mult),
            layer_decay=None if decay is None else float(decay),
            freeze_bn=bool(values.get("freeze_bn", False)),
            unfreeze_at_epochs=epochs if name == "gradual" else (),
            unfreeze_warmup_epochs=float(warmup),
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["unfreeze_at_epochs"] = list(self.unfreeze_at_epochs)
        return out


# ---- which backbone parameter trains from which epoch ----------------------------------
def backbone_stages(model: nn.Module) -> list[list[str]]:
    """Parameter names of the backbone's stages, input to output (timm's coarse ``group_matcher``)."""
    names = [n for n, _ in model.named_parameters()]
    if hasattr(model, "group_matcher"):
        layer_of = group_parameters(model, model.group_matcher(coarse=True), reverse=True)
        ids = sorted({layer_of.get(n, math.inf) for n in names})
        return [[n for n in names if layer_of.get(n, math.inf) == i] for i in ids]
    # no matcher: one stage per top-level child that owns parameters
    stages: dict[str, list[str]] = {}
    for n in names:
        stages.setdefault(n.split(".", 1)[0], []).append(n)
    return list(stages.values())


def unfreeze_epochs(model: nn.Module, spec: FinetuneSpec) -> dict[str, int | None]:
    """Backbone parameter name -> first epoch it trains (``None``: never)."""
    names = [n for n, _ in model.named_parameters()]
    if spec.name == "full":
        schedule: dict[str, int | None] = dict.fromkeys(names, 0)
    elif spec.name == "linear_probe":
        schedule = dict.fromkeys(names, None)
    else:
        stages = backbone_stages(model)[::-1]  # top (output side) first
        chunks = len(spec.unfreeze_at_epochs)
        if chunks > len(stages):
            raise ConfigError(
                f"finetune.unfreeze_at_epochs has {chunks} entries but the backbone has only "
                f"{len(stages)} stages",
                hint=f"use at most {len(stages)} epochs",
            )
        schedule = {}
        base, extra = divmod(len(stages), chunks)
        start = 0
        for i, epoch in enumerate(spec.unfreeze_at_epochs):
            size = base + (1 if i < extra else 0)
            for stage in stages[start : start + size]:
                schedule.update(dict.fromkeys(stage, epoch))
            start += size
    if spec.freeze_bn:
        for module_name, module in model.named_modules():
            if isinstance(module, _BatchNorm):
                for pname, _ in module.named_parameters(recurse=False):
                    schedule[f"{module_name}.{pname}" if module_name else pname] = None
    return schedule


# ---- optimizer param groups and LR schedule -------------------------------------------------
@contextmanager
def _all_trainable(module: nn.Module) -> Iterator[None]:
    """timm's group helpers skip ``requires_grad=False``; gradual runs need frozen stages grouped too."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def build_param_groups(model: nn.Module, weight_decay: float, spec: FinetuneSpec) -> list[dict[str, Any]]:
    """Optimizer groups for an ``ImageClassifier``: head at LR×1, backbone at LR×``backbone_lr_mult``
    (×layer decay), split by weight decay (none on biases/norms) and by unfreeze epoch.

    Each group carries ``lr_mult`` (applied to the optimizer's LR) and
    ``unfreeze_epoch`` (read by :func:`build_lr_scheduler`). Parameters that never
    train are left out.
    """
    backbone = model.backbone.model
    schedule = unfreeze_epochs(backbone, spec)
    no_wd = tuple(getattr(backbone, "no_weight_decay", lambda: ())())
    with _all_trainable(backbone):
        if spec.layer_decay is not None:
            raw = param_groups_layer_decay(
                backbone, weight_decay=weight_decay, no_weight_decay_list=no_wd, layer_decay=spec.layer_decay
            )
        else:
            raw = param_groups_weight_decay(backbone, weight_decay=weight_decay, no_weight_decay_list=no_wd)
    name_of = {id(p): n for n, p in backbone.named_parameters()}
    groups: list[dict[str, Any]] = []
    for group in raw:
        by_epoch: dict[int, list[torch.Tensor]] = {}
        for p in group["params"]:
            epoch = schedule[name_of[id(p)]]
            if epoch is not None:
                by_epoch.setdefault(epoch, []).append(p)
        for epoch, params in sorted(by_epoch.items()):
            groups.append(
                {
                    "params": params,
                    "weight_decay": group["weight_decay"],
                    "lr_mult": spec.backbone_lr_mult * float(group.get("lr_scale", 1.0)),
                    "unfreeze_epoch": epoch,
                }
            )
    groups = [g for g in groups if g["params"]]
    head_from = len(groups)
    head = nn.ModuleDict({"pooling": model.pooling, "head": model.head})
    for group in param_groups_weight_decay(head, weight_decay=weight_decay):
        if group["params"]:
            groups.append({**group, "lr_mult": 1.0, "unfreeze_epoch": 0})
    _name_groups(groups, head_from)
    return groups


def _name_groups(groups: list[dict[str, Any]], head_from: int) -> None:
    """Readable, unique ``name`` per group: LearningRateMonitor logs ``train/lr/<name>``."""
    used: set[str] = set()
    for i, group in enumerate(groups):
        name = "head" if i >= head_from else "backbone"
        if i < head_from and group["lr_mult"] != 1.0:
            name += f"_x{group['lr_mult']:.3g}"
        if group["unfreeze_epoch"]:
            name += f"_from_epoch{group['unfreeze_epoch']}"
        if not group["weight_decay"]:
            name += "_no_wd"
        unique, k = name, 2
        while unique in used:
            unique, k = f"{name}_{k}", k + 1
        used.add(unique)
        group["name"] = unique


class LrFactor:
    """LR factor at a step: linear warm-up (from 1%) then cosine to ``min_lr_ratio``; zero before
    ``start_step``, then a linear ramp over ``ramp_steps`` (newly unfrozen parameters).

    A callable object with plain attributes (not a lambda) so that ``LambdaLR``
    saves it in checkpoints and a resumed run continues the same curve.
    """

    def __init__(
        self,
        total_steps: int,
        warmup_steps: int,
        min_lr_ratio: float,
        start_step: int = 0,
        ramp_steps: int = 0,
    ) -> None:
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = min(max(0, int(warmup_steps)), self.total_steps - 1)
        self.min_lr_ratio = float(min_lr_ratio)
        self.start_step = max(0, int(start_step))
        self.ramp_steps = max(0, int(ramp_steps))

    def base(self, step: int) -> float:
        if step < self.warmup_steps:
            return 0.01 + 0.99 * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def __call__(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        factor = self.base(step)
        if self.start_step > 0 and self.ramp_steps > 0:
            factor *= min(1.0, (step - self.start_step + 1) / self.ramp_steps)
        return factor


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: float,
    warmup_steps: int,
    min_lr_ratio: float,
    unfreeze_warmup_epochs: float = 1.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """One :class:`LrFactor` per param group, stepped per batch."""
    factors = []
    for group in optimizer.param_groups:
        start = round(group.get("unfreeze_epoch", 0) * steps_per_epoch)
        factors.append(
            LrFactor(
                total_steps,
                warmup_steps,
                min_lr_ratio,
                start_step=start,
                ramp_steps=round(unfreeze_warmup_epochs * steps_per_epoch),
            )
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def apply_lr_mults(optimizer: torch.optim.Optimizer) -> None:
    """Groups were built without an ``lr``, so they got the optimizer's; scale each by its ``lr_mult``."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_mult", 1.0)


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


# ---- the callback ---------------------------------------------------------------------------
class Finetuning(BaseFinetuning):
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
        self.schedule = unfreeze_epochs(pl_module.model.backbone.model, self.spec)
        self._apply(pl_module, epoch=0)

    def _apply(self, pl_module: pl.LightningModule, epoch: int) -> int:
        """Set ``requires_grad`` for ``epoch``; returns how many parameters were unfrozen now."""
        backbone = pl_module.model.backbone.model
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
            if isinstance(m, _BatchNorm)
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
        self, pl_module: pl.LightningModule, epoch: int, optimizer: torch.optim.Optimizer
    ) -> None:
        if epoch == self._epoch:  # called once per optimizer; apply once per epoch
            return
        self._epoch = epoch
        unfrozen = self._apply(pl_module, epoch)
        if unfrozen:
            counts = count_parameters(pl_module.model)
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
        self.finetune_function(pl_module, trainer.current_epoch, optimizer)  # type: ignore[arg-type]
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
        counts = count_parameters(pl_module.model)
        self.param_counts = counts
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
        if trainer.is_global_zero:
            print(message)
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
            if text and hasattr(experiment, "add_text"):
                experiment.add_text("params", text, global_step=trainer.global_step)


def build_finetuning(cfg: Mapping[str, Any] | None) -> Finetuning:
    """The callback for a ``finetune`` config node (``full`` with defaults when the node is absent)."""
    spec = FinetuneSpec.from_config(cfg)
    return Finetuning(**spec.as_dict())
