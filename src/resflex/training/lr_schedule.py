"""The LR schedule every run uses: linear warm-up, cosine decay, and ramps for unfrozen groups.

``scheduler=cosine`` (configs/scheduler/cosine.yaml) builds a :class:`WarmupCosine`;
the LightningModule asks it for a per-step ``LambdaLR`` once the run length is known.
Why a ``LambdaLR`` of our own and not timm's ``CosineLRScheduler``: each param group
needs its own curve (a gradual fine-tuning group is at zero until its unfreeze
epoch, then ramps up), and a ``LambdaLR`` of picklable factor objects resumes exactly
through Lightning's checkpoint.
"""

from __future__ import annotations

import math

import torch

from resflex.validation import check_value


def _non_negative(value: float) -> bool:
    return value >= 0


class WarmupCosine:
    """``scheduler=cosine``: warm up linearly from 1 % of the LR over ``warmup_epochs``, then cosine
    decay to ``min_lr_ratio`` × LR, stepped per batch."""

    def __init__(self, warmup_epochs: float = 3.0, min_lr_ratio: float = 0.01) -> None:
        self.warmup_epochs = check_value(
            "scheduler.warmup_epochs", warmup_epochs, float, _non_negative, "a number >= 0"
        )
        self.min_lr_ratio = check_value(
            "scheduler.min_lr_ratio", min_lr_ratio, float, lambda v: 0 <= v <= 1, "a number in [0, 1]"
        )

    def as_dict(self) -> dict[str, float]:
        return {"warmup_epochs": self.warmup_epochs, "min_lr_ratio": self.min_lr_ratio}

    def build(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        epochs: int,
        unfreeze_warmup_epochs: float = 1.0,
    ) -> torch.optim.lr_scheduler.LambdaLR:
        """The per-step scheduler for a run of ``total_steps`` optimizer steps over ``epochs`` epochs."""
        steps_per_epoch = total_steps / max(1, epochs)
        return build_lr_scheduler(
            optimizer,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            warmup_steps=round(self.warmup_epochs * steps_per_epoch),
            min_lr_ratio=self.min_lr_ratio,
            unfreeze_warmup_epochs=unfreeze_warmup_epochs,
        )

    def __repr__(self) -> str:
        return f"WarmupCosine(warmup_epochs={self.warmup_epochs:g}, min_lr_ratio={self.min_lr_ratio:g})"


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
