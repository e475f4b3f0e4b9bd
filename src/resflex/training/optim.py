"""``optimizer=adamw|lamb|lion|sgd`` (configs/optimizer/): any optimizer timm's factory knows, by name.

The LightningModule hands :class:`OptimizerFactory` the fine-tuning parameter
groups (:mod:`resflex.training.param_groups`, each with its own weight decay and
``lr_mult``); timm's ``create_optimizer_v2`` builds the optimizer from them
unchanged (given groups, not a module, it does no grouping of its own), so
``optimizer.name=lamb`` or ``lion`` keeps discriminative LRs and the
no-decay groups intact.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import torch
from timm.optim import create_optimizer_v2, list_optimizers

from resflex.errors import ConfigError
from resflex.validation import check_value


def plain_value(value: Any) -> Any:
    """``value`` with OmegaConf containers turned into Python lists and dicts (resolved). omegaconf is
    imported only for such a value: the benchmark builds optimizers where it is not installed."""
    if type(value).__module__.split(".")[0] != "omegaconf":
        return value
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True)


class OptimizerFactory:
    """Builds the optimizer for a run's parameter groups; validates its config when constructed.

    ``scale_lr_with_world_size``: multiply ``lr`` by the number of processes (the linear
    scaling rule: the global batch grows with the ranks; docs/scaling.md). Extra keys
    (``momentum``, ``betas``, ``eps``...) go to the optimizer as they are.
    """

    def __init__(
        self,
        name: str = "adamw",
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        scale_lr_with_world_size: bool = False,
        **options: Any,
    ) -> None:
        known = [n for n in list_optimizers() if isinstance(n, str)]  # names (no descriptions asked)
        if name not in known:
            near = difflib.get_close_matches(str(name), known, n=4, cutoff=0.6)
            hint = f"did you mean {', '.join(near)}?" if near else "e.g. adamw, sgd, lamb, lion"
            raise ConfigError(
                f"unknown optimizer.name {name!r}", hint=f"{hint} (every name: timm.optim.list_optimizers())"
            )
        self.name = str(name)
        self.lr = check_value("optimizer.lr", lr, float, lambda v: v > 0, "a positive number")
        self.weight_decay = check_value(
            "optimizer.weight_decay", weight_decay, float, lambda v: v >= 0, "a number >= 0"
        )
        if "momentum" in options:
            options["momentum"] = check_value(
                "optimizer.momentum", options["momentum"], float, lambda v: 0 <= v < 1, "a number in [0, 1)"
            )
        self.scale_lr_with_world_size = bool(scale_lr_with_world_size)
        # plain Python values: Hydra passes a list (``+optimizer.betas=[0.9,0.95]``) as an OmegaConf
        # ListConfig, which the optimizer keeps in its param groups and so in every checkpoint, where a
        # weights_only load refuses it (every checkpoint of the run unloadable)
        self.options = {k: plain_value(v) for k, v in options.items()}

    def __call__(self, param_groups: Iterable[dict[str, Any]], world_size: int = 1) -> torch.optim.Optimizer:
        """The optimizer over ``param_groups``; each group's ``lr`` becomes the base LR × its ``lr_mult``."""
        lr = self.lr * (world_size if self.scale_lr_with_world_size else 1)
        optimizer = create_optimizer_v2(
            list(param_groups), opt=self.name, lr=lr, weight_decay=self.weight_decay, **self.options
        )
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.get("lr_mult", 1.0)
        return optimizer

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "scale_lr_with_world_size": self.scale_lr_with_world_size,
            **self.options,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"OptimizerFactory({args})"
