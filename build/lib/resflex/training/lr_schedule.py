"""LR schedules: linear warm-up, then cosine, step, constant or plateau; ramps for unfrozen groups.

``scheduler=cosine|step|constant|plateau`` (configs/scheduler/) builds one of the
:class:`WarmupSchedule` subclasses below; the LightningModule asks it for its
Lightning scheduler entries (:meth:`WarmupSchedule.lightning_config`) once the run
length is known. Why a ``LambdaLR`` of our own factors and not timm's or torch's
schedulers: each param group needs its own curve (a gradual fine-tuning group is at
zero until its unfreeze epoch, then ramps up), every schedule needs the same
warm-up, and a ``LambdaLR`` of picklable factor objects resumes exactly through
Lightning's checkpoint. The plateau rule itself is torch's ``ReduceLROnPlateau``
(:class:`PlateauScale`), applied to a scale inside those factors and stepped after
each validation by a callback (:class:`PlateauStep`).

A warm-up as long as the run or longer (``scheduler.warmup_epochs`` >= ``trainer.max_epochs``:
the default 3 epochs in a run of 1-3) is clamped to the run, so the LR only rises and what follows
the warm-up never starts: one warning line at the start of the fit says so, with the hint, and
the model card describes such a schedule as it ran (:func:`warmup_covers_run`). A warm-up over
half the run or more but shorter than it is not flagged: the decay still runs, over the rest (the
default run warms up for 3 of its 6 epochs).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, SupportsFloat

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.types import LRSchedulerConfigType
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from resflex.errors import ConfigError
from resflex.validation import check_value

log = logging.getLogger(__name__)


def _non_negative(value: float) -> bool:
    return value >= 0


def warmup_covers_run(warmup_epochs: float, epochs: float) -> bool:
    """True when a warm-up of ``warmup_epochs`` lasts a whole run of ``epochs``: the LR rises from
    1 % to its peak at the run's end and the schedule's decay never starts."""
    return warmup_epochs > 0 and warmup_epochs >= epochs


def warmup_hint(epochs: float) -> str:
    """The suggested warm-up for a run of ``epochs``: half of it (the default's 3 of 6 epochs)."""
    return f"scheduler.warmup_epochs={epochs / 2:g}"


@rank_zero_only
def warn_warmup_covers_run(warmup_epochs: float, epochs: float, after: str) -> None:
    log.warning(
        "scheduler: the %g-epoch warm-up covers the whole %g-epoch run: the LR only rises, from 1%% to "
        "its peak at the end, with no %s (hint: %s, or scheduler.warmup_epochs=0)",
        warmup_epochs,
        epochs,
        after,
        warmup_hint(epochs),
    )


# ---- per-group factors (what LambdaLR calls each step) -------------------------------------


class WarmupFactor:
    """LR factor at a step: linear warm-up from 1 % over ``warmup_steps``, then :meth:`decay` × ``scale``;
    zero before ``start_step``, then a linear ramp over ``ramp_steps`` (newly unfrozen parameters).

    After the warm-up this base class is constant (``scheduler=constant``); ``scale`` is 1 unless a
    plateau rule lowered it (:class:`PlateauScale`). A callable object with plain attributes (not
    a lambda) so that ``LambdaLR`` saves it in checkpoints and a resumed run continues the same curve.
    """

    def __init__(self, total_steps: int, warmup_steps: int, start_step: int = 0, ramp_steps: int = 0) -> None:
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = min(max(0, int(warmup_steps)), self.total_steps - 1)
        self.start_step = max(0, int(start_step))
        self.ramp_steps = max(0, int(ramp_steps))
        self.scale = 1.0

    def decay(self, step: int) -> float:
        """The factor after the warm-up (1 here: constant)."""
        return 1.0

    def base(self, step: int) -> float:
        if step < self.warmup_steps:
            return 0.01 + 0.99 * step / self.warmup_steps
        return self.decay(step)

    def __call__(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        factor = self.base(step) * self.scale
        if self.start_step > 0 and self.ramp_steps > 0:
            factor *= min(1.0, (step - self.start_step + 1) / self.ramp_steps)
        return factor


class LrFactor(WarmupFactor):
    """Warm-up, then cosine from 1 to ``min_lr_ratio`` at ``total_steps`` (``scheduler=cosine``)."""

    def __init__(
        self,
        total_steps: int,
        warmup_steps: int,
        min_lr_ratio: float,
        start_step: int = 0,
        ramp_steps: int = 0,
    ) -> None:
        super().__init__(total_steps, warmup_steps, start_step, ramp_steps)
        self.min_lr_ratio = float(min_lr_ratio)

    def decay(self, step: int) -> float:
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class StepFactor(WarmupFactor):
    """Warm-up, then × ``gamma`` at each of ``milestones`` (optimizer steps) (``scheduler=step``)."""

    def __init__(
        self,
        total_steps: int,
        warmup_steps: int,
        milestones: Sequence[int],
        gamma: float,
        start_step: int = 0,
        ramp_steps: int = 0,
    ) -> None:
        super().__init__(total_steps, warmup_steps, start_step, ramp_steps)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)

    def decay(self, step: int) -> float:
        return self.gamma ** sum(step >= m for m in self.milestones)


# ---- the schedules (configs/scheduler/*.yaml) ----------------------------------------------


class WarmupSchedule:
    """Linear warm-up from 1 % of the LR over ``warmup_epochs``, then constant.

    The base of every schedule: subclasses change :meth:`make_factor` (the curve after the
    warm-up) and, for the plateau rule, :meth:`lightning_config`.
    """

    #: what follows the warm-up, in the warning when the warm-up covers the whole run
    after_warmup = "constant phase"

    def __init__(self, warmup_epochs: float = 3.0) -> None:
        self.warmup_epochs = check_value(
            "scheduler.warmup_epochs", warmup_epochs, float, _non_negative, "a number >= 0"
        )

    def as_dict(self) -> dict[str, Any]:
        return {"warmup_epochs": self.warmup_epochs}

    def make_factor(
        self, total_steps: int, warmup_steps: int, start_step: int, ramp_steps: int
    ) -> WarmupFactor:
        """One param group's factor."""
        return WarmupFactor(total_steps, warmup_steps, start_step=start_step, ramp_steps=ramp_steps)

    def build(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        epochs: int,
        unfreeze_warmup_epochs: float = 1.0,
    ) -> LambdaLR:
        """The per-step scheduler for a run of ``total_steps`` optimizer steps over ``epochs`` epochs:
        one factor per param group (a group's ``unfreeze_epoch`` delays and ramps it)."""
        if warmup_covers_run(self.warmup_epochs, max(1, epochs)):
            warn_warmup_covers_run(self.warmup_epochs, max(1, epochs), self.after_warmup)
        steps_per_epoch = total_steps / max(1, epochs)
        warmup_steps = round(self.warmup_epochs * steps_per_epoch)
        ramp_steps = round(unfreeze_warmup_epochs * steps_per_epoch)
        factors: list[Callable[[int], float]] = [
            self.make_factor(
                total_steps,
                warmup_steps,
                start_step=round(group.get("unfreeze_epoch", 0) * steps_per_epoch),
                ramp_steps=ramp_steps,
            )
            for group in optimizer.param_groups
        ]
        return LambdaLR(optimizer, factors)

    def lightning_config(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        epochs: int,
        unfreeze_warmup_epochs: float = 1.0,
    ) -> LRSchedulerConfigType:
        """The ``lr_scheduler`` entry of ``configure_optimizers``: the per-step ``LambdaLR``."""
        scheduler = self.build(optimizer, total_steps, epochs, unfreeze_warmup_epochs)
        return {"scheduler": scheduler, "interval": "step", "name": "train/lr"}

    def callbacks(self) -> list[pl.Callback]:
        """Callbacks the schedule needs in a fit (the module's ``configure_callbacks``)."""
        return []

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"{type(self).__name__}({args})"


class WarmupConstant(WarmupSchedule):
    """``scheduler=constant``: warm up linearly from 1 % of the LR over ``warmup_epochs``, then constant."""


class WarmupCosine(WarmupSchedule):
    """``scheduler=cosine``: warm up linearly from 1 % of the LR over ``warmup_epochs``, then cosine
    decay to ``min_lr_ratio`` × LR, stepped per batch."""

    after_warmup = "cosine decay"

    def __init__(self, warmup_epochs: float = 3.0, min_lr_ratio: float = 0.01) -> None:
        super().__init__(warmup_epochs)
        self.min_lr_ratio = check_value(
            "scheduler.min_lr_ratio", min_lr_ratio, float, lambda v: 0 <= v <= 1, "a number in [0, 1]"
        )

    def as_dict(self) -> dict[str, Any]:
        return {"warmup_epochs": self.warmup_epochs, "min_lr_ratio": self.min_lr_ratio}

    def make_factor(self, total_steps: int, warmup_steps: int, start_step: int, ramp_steps: int) -> LrFactor:
        return LrFactor(total_steps, warmup_steps, self.min_lr_ratio, start_step, ramp_steps)

    def __repr__(self) -> str:
        return f"WarmupCosine(warmup_epochs={self.warmup_epochs:g}, min_lr_ratio={self.min_lr_ratio:g})"


class WarmupStep(WarmupSchedule):
    """``scheduler=step``: warm-up, then the LR × ``gamma`` at each milestone.

    ``milestones`` are fractions of the run's optimizer steps (``[0.5, 0.75]``: at half and
    three quarters of the run), so one setting fits runs of any length; for "epoch 30 of
    90" write 0.333.
    """

    after_warmup = "step decay"

    def __init__(
        self, warmup_epochs: float = 3.0, milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1
    ) -> None:
        super().__init__(warmup_epochs)
        if isinstance(milestones, str) or not isinstance(milestones, Sequence):
            raise ConfigError(
                f"scheduler.milestones must be a list of fractions of the run, got {milestones!r}",
                hint="scheduler.milestones=[0.5,0.75]",
            )
        values = [
            check_value("scheduler.milestones", m, float, lambda v: 0 < v < 1, "fractions in (0, 1)")
            for m in milestones
        ]
        if values != sorted(values):
            raise ConfigError(
                f"scheduler.milestones must increase, got {list(milestones)}",
                hint="scheduler.milestones=[0.5,0.75]",
            )
        self.milestones = values
        self.gamma = check_value("scheduler.gamma", gamma, float, lambda v: 0 < v < 1, "a number in (0, 1)")

    def as_dict(self) -> dict[str, Any]:
        return {"warmup_epochs": self.warmup_epochs, "milestones": list(self.milestones), "gamma": self.gamma}

    def make_factor(
        self, total_steps: int, warmup_steps: int, start_step: int, ramp_steps: int
    ) -> StepFactor:
        steps = [round(m * total_steps) for m in self.milestones]
        return StepFactor(total_steps, warmup_steps, steps, self.gamma, start_step, ramp_steps)


def _warmup_factor(factor: Callable[[int], float]) -> WarmupFactor:
    """``factor`` as the :class:`WarmupFactor` it must be: a plateau rule scales only those."""
    if not isinstance(factor, WarmupFactor):
        raise TypeError(f"scheduler=plateau needs WarmupSchedule's LambdaLR factors, got {factor!r}")
    return factor


class PlateauScale(ReduceLROnPlateau):
    """torch's ``ReduceLROnPlateau`` rule, applied to the ``scale`` of each group's factor of a ``LambdaLR``.

    Why not ``ReduceLROnPlateau`` on the param groups themselves: the per-step
    ``LambdaLR`` (warm-up, unfreeze ramps) sets each group's LR from its base LR at every
    step and would undo a reduction. So around torch's ``step`` each group's LR is
    swapped for its factor's scale (``min_lr`` then bounds the scale), the reduced scale
    goes back into the factor, and the ``LambdaLR`` multiplies it in. The scales are
    saved with the ``LambdaLR``'s factors; this object saves torch's counters.
    """

    def __init__(
        self,
        schedule: LambdaLR,
        mode: Literal["min", "max"] = "max",
        factor: float = 0.1,
        patience: int = 2,
        threshold: float = 1e-4,
        min_scale: float = 0.0,
    ) -> None:
        # the factors of WarmupSchedule.build: the rule lowers their ``scale``
        self._factors = [_warmup_factor(f) for f in schedule.lr_lambdas]
        super().__init__(
            schedule.optimizer,
            mode=mode,
            factor=factor,
            patience=patience,
            threshold=threshold,
            min_lr=min_scale,
        )

    # torch's ReduceLROnPlateau.step(metrics) already breaks LRScheduler.step(epoch) (torch ignores it)
    def step(self, metrics: SupportsFloat, epoch: int | None = None) -> None:  # type: ignore[override]
        groups = self.optimizer.param_groups
        lrs = [group["lr"] for group in groups]
        scales = [factor.scale for factor in self._factors]
        for group, scale in zip(groups, scales, strict=True):
            group["lr"] = scale
        try:
            super().step(metrics, epoch)
        finally:
            for group, factor, lr, scale in zip(groups, self._factors, lrs, scales, strict=True):
                factor.scale = group["lr"]
                group["lr"] = lr * (group["lr"] / scale if scale > 0 else 1.0)

    def state_dict(self) -> dict[str, Any]:
        """torch's counters only: the factors are the ``LambdaLR``'s (and not plain data)."""
        return {k: v for k, v in super().state_dict().items() if k != "_factors"}


class WarmupPlateau(WarmupSchedule):
    """``scheduler=plateau``: warm-up, then constant until ``monitor`` stops improving for more than
    ``patience`` validations; then the LR × ``factor``, down to ``min_lr_ratio`` × LR.

    The rule (:class:`PlateauScale`) is stepped after each validation of the fit by
    :class:`PlateauStep`, which the module registers (:meth:`callbacks`), so the run needs
    a validation split.
    """

    after_warmup = "constant phase for the plateau rule to lower"

    def __init__(
        self,
        warmup_epochs: float = 3.0,
        monitor: str = "val/acc",
        mode: str = "max",
        factor: float = 0.1,
        patience: int = 2,
        threshold: float = 1e-4,
        min_lr_ratio: float = 0.01,
    ) -> None:
        super().__init__(warmup_epochs)
        if not isinstance(monitor, str) or not monitor:
            raise ConfigError(f"scheduler.monitor must be a metric name, got {monitor!r}", hint="val/acc")
        if mode not in ("max", "min"):
            raise ConfigError(
                f"scheduler.mode must be max or min, got {mode!r}", hint="max for val/acc, min for val/loss"
            )
        self.monitor = monitor
        self.mode: Literal["min", "max"] = "max" if mode == "max" else "min"
        self.factor = check_value(
            "scheduler.factor", factor, float, lambda v: 0 < v < 1, "a number in (0, 1)"
        )
        self.patience = check_value("scheduler.patience", patience, int, _non_negative, "an integer >= 0")
        self.threshold = check_value("scheduler.threshold", threshold, float, _non_negative, "a number >= 0")
        self.min_lr_ratio = check_value(
            "scheduler.min_lr_ratio", min_lr_ratio, float, lambda v: 0 <= v <= 1, "a number in [0, 1]"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "warmup_epochs": self.warmup_epochs,
            "monitor": self.monitor,
            "mode": self.mode,
            "factor": self.factor,
            "patience": self.patience,
            "threshold": self.threshold,
            "min_lr_ratio": self.min_lr_ratio,
        }

    def rule(self, schedule: LambdaLR) -> PlateauScale:
        """The plateau rule over the factors of ``schedule`` (this schedule's ``LambdaLR``)."""
        return PlateauScale(
            schedule,
            mode=self.mode,
            factor=self.factor,
            patience=self.patience,
            threshold=self.threshold,
            min_scale=self.min_lr_ratio,
        )

    def callbacks(self) -> list[pl.Callback]:
        return [PlateauStep(self)]


class PlateauStep(pl.Callback):
    """Steps ``scheduler=plateau``'s rule with the monitored value after each validation of a fit.

    Why a callback and not Lightning's ``lr_scheduler`` entry with ``monitor``: Lightning
    steps such a scheduler after the epoch's checkpoints are written, so a run resumed from
    an end-of-epoch ``last.ckpt`` never sees that epoch's value and its reductions come a
    validation late (tests/training/test_recipes_schedules.py shows the exact resume). Checkpoint
    callbacks run after all others in ``on_validation_end``, so the state saved here
    includes the step; the reduced scales live in the ``LambdaLR``'s factors, which
    Lightning checkpoints with the scheduler.
    """

    def __init__(self, schedule: WarmupPlateau) -> None:
        self.schedule = schedule
        self.rule: PlateauScale | None = None
        self._pending: dict[str, Any] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After ``configure_optimizers``: the rule over the run's ``LambdaLR`` (resumed state applied)."""
        (config,) = trainer.lr_scheduler_configs
        if not isinstance(config.scheduler, LambdaLR):  # configure_optimizers: lightning_config's
            raise TypeError(f"scheduler=plateau needs the run's LambdaLR, got {config.scheduler!r}")
        self.rule = self.schedule.rule(config.scheduler)
        if self._pending:
            self.rule.load_state_dict(self._pending)
            self._pending = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.rule is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.schedule.monitor)
        if value is None:
            raise ConfigError(
                f"scheduler=plateau monitors {self.schedule.monitor}, which the validation did not log",
                hint="scheduler.monitor=val/acc or val/loss",
            )
        self.rule.step(float(value))

    def state_dict(self) -> dict[str, Any]:
        return self.rule.state_dict() if self.rule is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called before the optimizers exist (resume): applied in :meth:`on_fit_start`."""
        self._pending = dict(state_dict) or None
