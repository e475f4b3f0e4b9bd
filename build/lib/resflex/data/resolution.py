"""The schedules the ``resolution`` config group names: one class per ``configs/resolution/*.yaml``
(``naflex``'s token schedule lives with its loader, :mod:`resflex.data.naflex`).

Each answers "which (h, w) and batch size for this training step?" as a pure function of
(epoch, step) — plus its own seed where it is random — through the contract of
:class:`~resflex.data.schedule.ResolutionSchedule`, which also holds the knobs every schedule
shares (``eval_size``, ``geometry``, ``multiple``, ``aspect_ratios``, ``bucket_size``,
``batch_scaling``). Epoch-based schedules (progressive, multigrid, fixres) need the
length of training: the data module calls :meth:`ResolutionSchedule.bind` with
``trainer.max_epochs`` in ``setup()``; tests call it directly.

=============  ===========================================================
fixed          one size (the default, with the scale-consistency view of
               ``model.scale_consistency`` for robustness across sizes)
progressive    FFCV-style low -> high ramp over epochs, rounded to ``multiple``,
               optional final phase at ``final_size``
random         a random size per batch from ``sizes`` (optional ``probs``)
multigrid      Wu et al.: long cycles over epochs and/or short cycles over
               steps of (size, batch size) with pixels per batch ~constant
fixres         Touvron et al.: train at ``size``, then the last
               ``final_epochs`` at ``test_size`` with weaker crop augmentation
multiscale     size-robust training: a size per batch drawn around ``size``, at
               a fixed run's cost per epoch
=============  ===========================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from resflex.data.schedule import ResolutionSchedule, check_int
from resflex.data.sizes import parse_size, parse_size_list, round_to
from resflex.errors import ConfigError
from resflex.types import Size, as_size
from resflex.validation import check_value


class FixedResolution(ResolutionSchedule):
    """One size for every step."""

    def __init__(self, size: int | Sequence[int] = 64, **common: Any) -> None:
        super().__init__(**common)
        self.size = parse_size(size)

    def size_at(self, epoch: int, step: int) -> Size:
        return self.size

    def train_sizes(self) -> list[Size]:
        return [self.size]

    def __repr__(self) -> str:
        return self._describe(size=self.size)


class ProgressiveResolution(ResolutionSchedule):
    """FFCV-style ramp: ``start_size`` until ``start_epoch``, linear to ``end_size`` at ``end_epoch``.

    Sizes are rounded to ``multiple`` (FFCV uses 32 on ImageNet; the stride of
    the backbone is the natural choice). ``end_epoch=None`` ends the ramp on the
    last epoch before the final phase. ``final_epochs`` > 0 adds a final phase
    at ``final_size`` (default ``end_size``), e.g. the test size, FixRes-like.
    """

    needs_max_epochs = True
    #: a ramp in steps of 16 px: each step changes the cost (8 px steps at 48-64 px barely do)
    default_multiple = 16

    def __init__(
        self,
        start_size: int | Sequence[int] = 48,
        end_size: int | Sequence[int] = 64,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        final_size: int | Sequence[int] | None = None,
        final_epochs: int = 0,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.start_size = parse_size(start_size, "resolution.start_size")
        self.end_size = parse_size(end_size, "resolution.end_size")
        self.start_epoch = check_int(start_epoch, "resolution.start_epoch")
        self.end_epoch = None if end_epoch is None else check_int(end_epoch, "resolution.end_epoch")
        if self.end_epoch is not None and self.end_epoch < self.start_epoch:
            raise ConfigError(
                f"resolution.end_epoch ({end_epoch}) must be >= resolution.start_epoch ({start_epoch})"
            )
        self.final_size = parse_size(final_size, "resolution.final_size") if final_size is not None else None
        self.final_epochs = check_int(final_epochs, "resolution.final_epochs")

    def _ramp_end(self) -> int:
        if self.end_epoch is not None:
            return self.end_epoch
        return max(self.start_epoch, self._epochs() - self.final_epochs - 1)

    def size_at(self, epoch: int, step: int) -> Size:
        if self.final_epochs and epoch >= self._epochs() - self.final_epochs:
            return self.final_size or self.end_size
        start, end = self.start_epoch, self._ramp_end()
        if epoch <= start:
            return self.start_size
        if epoch >= end:
            return self.end_size
        t = (epoch - start) / (end - start)
        pairs = zip(self.start_size, self.end_size, strict=True)
        return as_size([round_to(a + t * (b - a), self.multiple) for a, b in pairs])

    def train_sizes(self) -> list[Size]:
        if self.max_epochs is None:
            sizes = {self.start_size, self.end_size}
        else:
            sizes = {self.size_at(e, 0) for e in range(self.max_epochs)}
        if self.final_epochs:
            sizes.add(self.final_size or self.end_size)
        return sorted(sizes)

    @property
    def eval_size(self) -> Size:
        return self._eval_size or self.final_size or self.end_size

    def __repr__(self) -> str:
        return self._describe(
            start=self.start_size, end=self.end_size, epochs=(self.start_epoch, self.end_epoch),
            final=(self.final_size, self.final_epochs),
        )  # fmt: skip


class RandomResolution(ResolutionSchedule):
    """Multi-scale training: each step a size drawn from ``sizes`` (weights ``probs``).

    The draw is seeded by (seed, epoch, step) alone, so it needs no state and
    is the same on every rank and after a resume. ``eval_size`` defaults to the
    largest size.
    """

    def __init__(
        self,
        sizes: Sequence[int | Sequence[int]] = (32, 48, 64),
        probs: Sequence[float] | None = None,
        seed: int = 0,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if isinstance(sizes, int | str) or not sizes:
            raise ConfigError(
                f"resolution.sizes must be a non-empty list, got {sizes!r}",
                hint="resolution.sizes=[32,48,64]",
            )
        self.size_choices = parse_size_list(sizes, "resolution.sizes")
        if probs is None:
            self.probs = np.full(len(self.size_choices), 1.0 / len(self.size_choices))
        else:
            if isinstance(probs, str) or not isinstance(probs, Sequence):
                raise ConfigError(
                    f"resolution.probs must be a list of probabilities, got {probs!r}",
                    hint="e.g. resolution.probs=[0.25,0.25,0.5], or null for uniform",
                )
            probs = [
                check_value("resolution.probs", v, float, lambda v: v >= 0, "numbers >= 0") for v in probs
            ]
            p = np.asarray(probs, dtype=np.float64)
            if p.shape != (len(self.size_choices),):
                raise ConfigError(
                    f"resolution.probs has {p.size} entries, resolution.sizes has {len(self.size_choices)}",
                    hint="give one probability per size, or probs=null for uniform",
                )
            if not np.all(np.isfinite(p)) or np.any(p < 0) or abs(p.sum() - 1.0) > 1e-6:
                raise ConfigError(
                    f"resolution.probs must be >= 0 and sum to 1, got {list(probs)} (sum {p.sum():g})",
                    hint="e.g. resolution.probs=[0.25,0.25,0.5]",
                )
            self.probs = p
        self.seed = check_int(seed, "resolution.seed")

    def size_at(self, epoch: int, step: int) -> Size:
        rng = np.random.default_rng([self.seed, epoch, step])
        return self.size_choices[int(rng.choice(len(self.size_choices), p=self.probs))]

    def train_sizes(self) -> list[Size]:
        return sorted({s for s, p in zip(self.size_choices, self.probs, strict=True) if p > 0})

    def __repr__(self) -> str:
        return self._describe(sizes=self.size_choices, probs=[round(float(p), 4) for p in self.probs])


class MultigridResolution(ResolutionSchedule):
    """Multigrid training (Wu et al., 2020): cycles of (size, batch size) at ~constant pixels per batch.

    *Long cycle*: the epochs before the final phase are split into
    ``long_cycles`` cycles, each stepping through ``long_factors`` (side
    factors of ``size``, small to large). *Short cycle*: within an epoch the
    step index cycles through ``short_factors`` (applied on top of the long
    factor). The last ``final_epochs`` run at ``size`` without cycles, as in the
    paper. The batch size scales by (size / side)^2, capped by ``max_batch_size``.
    """

    needs_max_epochs = True

    def __init__(
        self,
        size: int | Sequence[int] = 64,
        long_factors: Sequence[float] = (0.5, 0.71, 1.0),
        short_factors: Sequence[float] = (0.71, 1.0),
        long_cycles: int = 1,
        final_epochs: int = 1,
        **common: Any,
    ) -> None:
        common.setdefault("batch_scaling", True)  # multigrid is constant pixels per batch by definition
        common.setdefault("max_batch_size", 512)  # the smallest sizes would otherwise get huge batches
        super().__init__(**common)
        self.size = parse_size(size)
        for key, factors in (("long_factors", long_factors), ("short_factors", short_factors)):
            if any(not 0 < float(f) <= 4 for f in factors):
                raise ConfigError(f"resolution.{key} must be side factors in (0, 4], got {list(factors)}")
        self.long_factors = tuple(float(f) for f in long_factors) or (1.0,)
        self.short_factors = tuple(float(f) for f in short_factors) or (1.0,)
        self.long_cycles = check_int(long_cycles, "resolution.long_cycles", 1)
        self.final_epochs = check_int(final_epochs, "resolution.final_epochs")

    def _scaled(self, factor: float) -> Size:
        return as_size([round_to(v * factor, self.multiple) for v in self.size])

    def long_factor(self, epoch: int) -> float | None:
        """The long-cycle factor for ``epoch``; None in the final phase."""
        cycled = self._epochs() - self.final_epochs
        if epoch >= cycled or cycled <= 0:
            return None
        cycle_len = cycled / self.long_cycles
        position = (epoch % cycle_len) / cycle_len if cycle_len > 0 else 0.0
        return self.long_factors[min(int(position * len(self.long_factors)), len(self.long_factors) - 1)]

    def size_at(self, epoch: int, step: int) -> Size:
        long = self.long_factor(epoch)
        if long is None:
            return self.size
        return self._scaled(long * self.short_factors[step % len(self.short_factors)])

    def train_sizes(self) -> list[Size]:
        sizes = {self._scaled(lf * sf) for lf in self.long_factors for sf in self.short_factors}
        return sorted(sizes | {self.size})

    @property
    def reference_size(self) -> Size:
        return self._reference_size or self.size

    @property
    def eval_size(self) -> Size:
        return self._eval_size or self.size

    def __repr__(self) -> str:
        return self._describe(size=self.size, long=self.long_factors, short=self.short_factors)


class FixResResolution(ResolutionSchedule):
    """FixRes (Touvron et al., 2019): train at ``size``, fine-tune the last ``final_epochs`` at ``test_size``.

    Random-resized crops make objects look larger in training than in a centre
    crop at test time, so a net trained at ``size`` is best tested at a larger
    size; the final phase adapts it to ``test_size`` with the *test-time*
    pre-processing, i.e. a much weaker crop: the train transform gets
    ``final_augment`` (default ``scale: [0.8, 1.0]``) merged over ``data.augment``.
    The paper also freezes all but the classifier and the last norm layers in
    that phase; that is the fine-tuning options' job, not the schedule's.
    """

    needs_max_epochs = True
    PHASE = "fixres"
    augment_phases_key = "resolution.final_augment"

    def __init__(
        self,
        size: int | Sequence[int] = 48,
        test_size: int | Sequence[int] = 64,
        final_epochs: int = 1,
        final_augment: Mapping[str, Any] | None = None,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.size = parse_size(size)
        self.test_size = parse_size(test_size, "resolution.test_size")
        self.final_epochs = check_int(final_epochs, "resolution.final_epochs")
        self.final_augment = dict(final_augment if final_augment is not None else {"scale": [0.8, 1.0]})

    def _in_final(self, epoch: int) -> bool:
        return self.final_epochs > 0 and epoch >= self._epochs() - self.final_epochs

    def size_at(self, epoch: int, step: int) -> Size:
        return self.test_size if self._in_final(epoch) else self.size

    def augment_at(self, epoch: int, step: int) -> str | None:
        return self.PHASE if self._in_final(epoch) else None

    @property
    def augment_phases(self) -> Mapping[str, Mapping[str, Any]]:
        return {self.PHASE: self.final_augment}

    def train_sizes(self) -> list[Size]:
        return sorted({self.size, self.test_size} if self.final_epochs else {self.size})

    @property
    def eval_size(self) -> Size:
        return self._eval_size or self.test_size

    def __repr__(self) -> str:
        return self._describe(size=self.size, test_size=self.test_size, final_epochs=self.final_epochs)


class MultiScaleResolution(RandomResolution):
    """Size-robust training: each step a size drawn around ``size``, at the same cost.

    A net trained at one size is good at that size only: random-resized crops
    enlarge objects at train time (FixRes), BatchNorm statistics and the
    receptive field's coverage of an object depend on the input size. Drawing
    a size per batch from ``scales`` (side factors of ``size``) shows the same
    weights objects at every scale it will be asked about, which is the cure
    ``experiments/robustness/`` measured against one size and against timm's
    per-batch sizes. The default ``probs`` keep the expected pixels per image
    at ``size``² (``pixel_cost`` ~ 1), so an epoch costs what a fixed run's
    does, and give the target size the largest share, so accuracy there holds.

    Unlike ``random`` (whose sizes are absolute and whose evaluation size is
    the largest), everything here is relative to ``size``: ``resolution.size=40``
    moves the whole distribution, and ``size`` is the evaluation size.
    The draw is a pure function of (seed, epoch, step), as for ``random``.
    """

    def __init__(
        self,
        size: int | Sequence[int] = 64,
        scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5),
        probs: Sequence[float] | None = None,
        seed: int = 0,
        final_epochs: int = 0,
        **common: Any,
    ) -> None:
        target = parse_size(size)
        if isinstance(scales, int | float | str) or not scales:
            raise ConfigError(
                f"resolution.scales must be a non-empty list of side factors, got {scales!r}",
                hint="resolution.scales=[0.5,0.75,1.0,1.25,1.5]",
            )
        factors = [float(f) for f in scales]
        if any(not math.isfinite(f) or not 0 < f <= 4 for f in factors):
            raise ConfigError(f"resolution.scales must be side factors in (0, 4], got {list(scales)}")
        multiple = common.get("multiple") or self.default_multiple
        sides = [tuple(round_to(v * f, int(multiple)) for v in target) for f in factors]
        common.setdefault("eval_size", None)
        super().__init__(sizes=sides, probs=probs, seed=seed, **common)
        self.size = target
        self.scales = tuple(factors)
        self.final_epochs = check_int(final_epochs, "resolution.final_epochs")
        self.needs_max_epochs = self.final_epochs > 0

    def size_at(self, epoch: int, step: int) -> Size:
        if self.final_epochs and epoch >= self._epochs() - self.final_epochs:
            return self.size
        return super().size_at(epoch, step)

    def train_sizes(self) -> list[Size]:
        return sorted({*super().train_sizes(), self.size}) if self.final_epochs else super().train_sizes()

    @property
    def eval_size(self) -> Size:
        return self._eval_size or self.size

    @property
    def reference_size(self) -> Size:
        return self._reference_size or self.size

    def pixel_cost(self) -> float:
        """Expected pixels per training image relative to ``size``² (1.0: a fixed run's cost per epoch)."""
        area = self.size[0] * self.size[1]
        return float(sum(p * h * w for (h, w), p in zip(self.size_choices, self.probs, strict=True)) / area)

    def __repr__(self) -> str:
        return self._describe(
            size=self.size,
            sizes=self.size_choices,
            probs=[round(float(p), 4) for p in self.probs],
            pixel_cost=round(self.pixel_cost(), 3),
        )
