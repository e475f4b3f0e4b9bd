"""Optimizer parameter groups for fine-tuning: which backbone parameter trains, when, at what LR.

:class:`FinetuneSpec` is the validated ``finetune`` config (configs/finetune/);
:func:`build_param_groups` turns it into torch optimizer groups, each tagged with
an ``lr_mult`` and the ``unfreeze_epoch`` the LR schedule
(:mod:`resflex.training.lr_schedule`) reads. The strategies are described in
:mod:`resflex.training.finetune`, whose callback applies the freezing.

Why all parameters of a gradual run are in the optimizer from the start: adding
param groups mid-run (Lightning's ``unfreeze_and_add_param_group``) leaves the
LR scheduler unaware of them. Here every group exists up front with its own LR
factor (zero until its unfreeze epoch, then a ramp), so warm-up, cosine decay and
checkpoint/resume treat all groups alike. Parameters without gradients are
skipped by torch optimizers, so frozen ones really stay bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from resflex.compat import BatchNorm
from resflex.errors import ConfigError

if TYPE_CHECKING:
    from resflex.models.classifier import ImageClassifier

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
    group_matcher = getattr(model, "group_matcher", None)  # timm models have one
    if group_matcher is not None:
        layer_of = group_parameters(model, group_matcher(coarse=True), reverse=True)
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
            if isinstance(module, BatchNorm):
                for pname, _ in module.named_parameters(recurse=False):
                    schedule[f"{module_name}.{pname}" if module_name else pname] = None
    return schedule


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


def build_param_groups(
    model: ImageClassifier, weight_decay: float, spec: FinetuneSpec
) -> list[dict[str, Any]]:
    """Optimizer groups for an ``ImageClassifier``: head at LR×1, backbone at LR×``backbone_lr_mult``
    (×layer decay), split by weight decay (none on biases/norms) and by unfreeze epoch.

    Each group carries ``lr_mult`` (applied to the optimizer's LR) and
    ``unfreeze_epoch`` (read by the LR schedule's ``build``). Parameters that never
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


def apply_lr_mults(optimizer: torch.optim.Optimizer) -> None:
    """Groups were built without an ``lr``, so they got the optimizer's; scale each by its ``lr_mult``."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_mult", 1.0)
