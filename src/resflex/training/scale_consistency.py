"""Scale consistency (``model.scale_consistency``): self-distillation from the trained size to other sizes.

A CNN trained at one size loses much of its accuracy at other evaluation sizes (issue 26), and
training on a size per batch costs accuracy at the main size (fewer steps there). ResFormer's
answer, used here: every training step stays what it was, at the scheduled size, and some steps
add a second view of the same (already erased / mixed) batch at another size, whose predictions
are pulled towards the main view's, detached. The main view is the teacher and gets no gradient
from the term, so the training at the main size is untouched; the other sizes get a learning
signal. A factor below 1 gives a smaller view (for the sizes below the trained one), a factor
above 1 a larger one (for the sizes above it).

The default, ``[0.6, 0.6, 1.4]`` on 16 % of the steps (one factor drawn uniformly per step, so
the 0.6x view twice as often as the 1.4x one): about +14 % pixels, the budget of ``[0.6, 1.4]`` on
an eighth of the steps, 1.10x the wall time of the run without it (27 back-to-back pairs on a
2-core CPU; the two draws level in the same pairs). The two views were chosen on val in
``experiments/robustness/`` (3 seeds, three data sets) over the 0.6x view alone on a quarter of
the steps (+9 %): level at the trained size, the mean over ½x-2x level or ahead, far ahead above
the trained size; the draw, 0.6x twice as often, by the rule that set the weight (6 seeds): the
smallest sizes higher, everything else level. Memory: a
step with a view holds the main view's activations and the view's (at 1.4x about twice the main
view's), so a batch size tuned to fill a GPU may need ``[0.6]``. It switches itself off, with a
log line, where it cannot apply: NaFlex token batches (their sizes are sequence lengths;
``resolution=naflex`` trains every length already) and backbones that take one input size (a
fixed-size ViT).
With ``model.compile=true`` the views' sizes (and their BatchNorm momentum of 0) are graphs of
their own: count them among the training sizes (``configure_model`` in the module); with
``max_pixels`` a view's batch is smaller than the main one, a dynamic batch dimension as well.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from resflex.compat import BatchNorm
from resflex.errors import ConfigError, ResflexError
from resflex.models.naflex import NaFlexBackbone
from resflex.training.pixels import PixelCounter
from resflex.validation import check_value

log = logging.getLogger("resflex")


def _say(net: Any, level: int, message: str) -> None:
    """Log ``message`` unless ``net`` is the pre-flight check's copy on the meta device (a run builds
    its module twice, and a reason the term is off is worth one line, not two)."""
    parameter = next(iter(net.parameters()), None) if isinstance(net, torch.nn.Module) else None
    if parameter is None or not parameter.is_meta:
        log.log(level, message)


#: Softmax temperature of the term. 1: the main view's predictions as they are, the choice of the
#: self-distillation papers that match the views' outputs (ResFormer's scale consistency); a higher
#: one would soften a teacher that is the student itself, which has no dark knowledge to bring out.
#: The term is scaled by ``T**2`` (Hinton et al.), so a change of T keeps the gradients' scale.
TEMPERATURE = 1.0

#: the small view's sides are multiples of this (and at least this), like the training sizes
MULTIPLE = 8

#: sides tried for the backbone's smallest input (a fixed-size ViT takes none below its own size)
_LARGEST_MINIMUM = 1024


def consistency_loss(
    logits_small: torch.Tensor, logits_main: torch.Tensor, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """``T**2 * KL(softmax(main / T) || softmax(small / T))``, batch mean; the main view is detached
    (the teacher: no gradient flows into the main view from this term). In float32, under autocast too."""
    teacher = F.log_softmax(logits_main.detach().float() / temperature, dim=-1)
    student = F.log_softmax(logits_small.float() / temperature, dim=-1)
    kl = F.kl_div(student, teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def small_size(h: int, w: int, factor: float, minimum: int = MULTIPLE) -> tuple[int, int]:
    """``factor`` of (h, w), each side rounded to a multiple of 8 and at least ``minimum`` (the second
    view's size: smaller for the default factor, larger for a factor above 1)."""

    def side(s: int) -> int:
        return max(minimum, MULTIPLE * round(s * factor / MULTIPLE))

    return side(h), side(w)


@contextmanager
def frozen_bn_stats(model: torch.nn.Module) -> Iterator[None]:
    """BatchNorm layers keep their running statistics inside the block: ``momentum=0`` (train mode still
    normalises with the batch's statistics) and ``num_batches_tracked`` put back, both restored on exit,
    exceptions included. The run evaluates with the trained size's statistics
    (``eval.bn_calibration`` re-estimates the other sizes' after fit), so the small view must not
    blend its own into them; with ``model.bn_stats_per_size`` the table of sizes is untouched too."""
    layers = [m for m in model.modules() if isinstance(m, BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in layers]
    tracked = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone() for m in layers]
    try:
        for m in layers:
            m.momentum = 0.0
        yield
    finally:
        for m, momentum, count in zip(layers, momenta, tracked, strict=True):
            m.momentum = momentum
            if count is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(count)


def smallest_side(backbone: Any) -> int:
    """The smallest multiple of 8 the backbone takes as a side (its ``check_input_size``); 8 when it
    cannot say. A backbone that does not take the next multiple of 8 too (a fixed-size ViT, a CNN that
    needs multiples of 32) cannot have this term: its views are rounded to 8."""
    check = getattr(backbone, "check_input_size", None)
    if check is None:
        return MULTIPLE
    name = getattr(backbone, "name", type(backbone).__name__)
    takes, hint = f"{name} takes no side from {MULTIPLE} to {_LARGEST_MINIMUM} px", None
    for side in range(MULTIPLE, _LARGEST_MINIMUM + 1, MULTIPLE):
        try:
            check((side, side), "model.scale_consistency")
        except ResflexError:
            continue
        try:  # a fixed-size model takes its own size alone
            check((side + MULTIPLE, side + MULTIPLE), "model.scale_consistency")
        except ResflexError as error:
            takes = f"{name} takes {side}x{side} but not {side + MULTIPLE}x{side + MULTIPLE}"
            hint = error.hint if error.hint and "model_kwargs" in error.hint else None
            break
        return side
    raise ConfigError(
        f"model.scale_consistency needs a backbone that takes sides in steps of {MULTIPLE} px (its views "
        f"are rounded to {MULTIPLE}), and {takes}",
        hint="model.scale_consistency=0" + (f", or {hint}" if hint else ""),
    )


def _view_factor(value: float) -> bool:
    """A second view's side factor: smaller (0, 1) or larger (1, 2] than the batch, never the same."""
    return 0 < value <= 2 and value != 1


class ScaleConsistency:
    """The term's settings and its per-step work: which steps get a small view, at which factor, and the
    weighted loss.

    ``factors``: the small view's side as a fraction of the batch's (h, w), one drawn per step;
    ``prob``: the share of steps that get one. The draws are a function of (seed, epoch, batch index)
    alone, like mixing's and erasing's (:func:`resflex.training.module.seeded_rngs`), so they repeat
    after a resume, and from a private generator, so no other random stream moves. Unlike those, not
    of the rank: every rank makes the same choice, so collective layers (``SyncBatchNorm``) run the
    same forwards on each rank.
    """

    def __init__(
        self,
        weight: float,
        factors: Sequence[float],
        prob: float,
        seed: int,
        minimum: int = MULTIPLE,
        rampup: float = 0.0,
        stop: float = 1.0,
        max_pixels: float | None = None,
        share: float = 1.0,
    ) -> None:
        self.weight = weight
        self.factors = tuple(factors)
        self.prob = prob
        self.seed = int(seed)
        self.minimum = max(MULTIPLE, int(minimum))
        self.rampup = float(rampup)
        self.stop = float(stop)
        self.max_pixels = None if max_pixels is None else float(max_pixels)
        self.share = float(share)

    @staticmethod
    def check_schedule(rampup: Any, stop: Any) -> tuple[float, float]:
        """``model.scale_consistency_rampup`` and ``_stop`` as plain numbers, or a one-line
        :class:`ConfigError` naming the key."""
        rampup = check_value(
            "model.scale_consistency_rampup",
            rampup,
            float,
            lambda v: 0 <= v < 1,
            "a share of training in [0, 1)",
        )
        stop = check_value(
            "model.scale_consistency_stop", stop, float, lambda v: 0 < v <= 1, "a share of training in (0, 1]"
        )
        if rampup >= stop:
            raise ConfigError(
                f"model.scale_consistency_rampup={rampup} must end before "
                f"model.scale_consistency_stop={stop}",
                hint="model.scale_consistency_rampup=0 (full weight from the first step)",
            )
        return rampup, stop

    @staticmethod
    def check_max_pixels(value: Any) -> float | None:
        """``model.scale_consistency_max_pixels`` as a plain number (or None: the whole batch), or a
        one-line :class:`ConfigError` naming the key."""
        if value is None:
            return None
        return check_value(
            "model.scale_consistency_max_pixels",
            value,
            float,
            lambda v: v > 0,
            "a multiple of the main batch's pixels > 0, or null (the whole batch)",
        )

    @staticmethod
    def check_share(value: Any) -> float:
        """``model.scale_consistency_share`` as a plain number, or a one-line :class:`ConfigError`."""
        return check_value(
            "model.scale_consistency_share",
            value,
            float,
            lambda v: 0 < v <= 1,
            "a share of the batch's images in (0, 1] (1: the whole batch)",
        )

    def view_images(self, batch: int, main: tuple[int, int], view: tuple[int, int]) -> int:
        """How many of the batch's images the view takes: ``share`` of them (rounded down), and with
        ``max_pixels`` no more than keep the view's pixels within ``max_pixels`` times the main
        batch's (at least one image either way).
        Why: a 1.4x view of the whole batch costs 1.96x the main step's pixels, the step's whole price
        again and more; capped at 1, it costs at most what the main step does (the issue's "pixels per
        step level"), on fewer images."""
        share = self.share
        if self.max_pixels is not None:
            share = min(share, self.max_pixels * main[0] * main[1] / (view[0] * view[1]))
        if share >= 1:
            return batch
        return max(1, min(batch, math.floor(batch * share + 1e-9)))

    def weight_at(self, progress: float | None) -> float:
        """The term's weight at ``progress``, the share of the run's optimizer steps done (None: unknown,
        an open-ended run: the full weight). It rises linearly from 0 over the first ``rampup`` of the
        run (the teacher is the model itself, near-uniform at first: Mean Teacher's ramp-up) and is 0
        from ``stop`` on (a last phase at the trained size alone)."""
        if progress is None:
            return self.weight
        if progress >= self.stop:
            return 0.0
        if progress < self.rampup:
            return self.weight * progress / self.rampup
        return self.weight

    @staticmethod
    def check(weight: Any, factors: Any, prob: Any) -> tuple[float, list[float], float]:
        """The three keys as plain numbers, or a one-line :class:`ConfigError` naming the key."""
        weight = check_value(
            "model.scale_consistency", weight, float, lambda v: v >= 0, "a weight >= 0 (0: off)"
        )
        if isinstance(factors, int | float) and not isinstance(factors, bool):
            factors = [factors]
        try:
            values = list(factors)
        except TypeError:
            values = []
        if not values:
            raise ConfigError(
                f"model.scale_consistency_factors={factors!r} is invalid: expected factors in (0, 2], not 1",
                hint="'model.scale_consistency_factors=[0.6]'",
            )
        rule = "each factor in (0, 2] and not 1 (a view at the batch's own size)"
        key = "model.scale_consistency_factors"
        checked = [check_value(key, v, float, _view_factor, rule) for v in values]
        prob = check_value(
            "model.scale_consistency_prob", prob, float, lambda v: 0 <= v <= 1, "a probability in [0, 1]"
        )
        return weight, checked, prob

    def draw(self, epoch: int, batch_idx: int) -> float | None:
        """This step's factor, or None when the step gets no small view."""
        rng = random.Random(hash((self.seed, epoch, batch_idx, 0x5CA1E)))
        if rng.random() >= self.prob:
            return None
        return self.factors[rng.randrange(len(self.factors))]

    @classmethod
    def build(
        cls,
        net: Any,
        weight: float,
        factors: Sequence[float],
        prob: float,
        seed: int,
        rampup: float = 0.0,
        stop: float = 1.0,
        max_pixels: float | None = None,
        share: float = 1.0,
    ) -> ScaleConsistency | None:
        """The term of a module whose network is ``net`` (checked values), or None when it is off:
        weight 0 or prob 0, a NaFlex backbone (token batches have no second image size) or a backbone
        that takes one input size (both said in a log line). None costs no extra compute at all."""
        if weight == 0 or prob == 0:
            return None
        backbone = getattr(net, "backbone", None)
        if isinstance(backbone, NaFlexBackbone):
            message = "model.scale_consistency is off for NaFlex token batches (every length trains)"
            _say(net, logging.INFO, message)
            return None
        try:
            minimum = smallest_side(backbone)
        except ConfigError as error:
            _say(net, logging.WARNING, f"model.scale_consistency is off: {error.one_line()}")
            return None
        return cls(
            weight,
            factors,
            prob,
            seed,
            minimum=minimum,
            rampup=rampup,
            stop=stop,
            max_pixels=max_pixels,
            share=share,
        )

    def view_size(self, shape: tuple[int, int], factor: float) -> tuple[int, int] | None:
        """The (h, w) of the ``factor`` view of a ``shape`` batch; None when rounding leaves it no smaller
        (a factor below 1), or no larger (above 1), than the batch: that step gets no view."""
        h, w = shape
        h2, w2 = small_size(h, w, factor, self.minimum)
        if (h2 >= h and w2 >= w) if factor < 1 else (h2 <= h and w2 <= w):
            return None
        return h2, w2

    def view_shapes(self, shape: tuple[int, int]) -> list[tuple[float, tuple[int, int]]]:
        """(factor, view size) of every view a ``shape`` batch can get (the shapes to check before fit)."""
        views = [(factor, self.view_size(shape, factor)) for factor in self.factors]
        return [(factor, view) for factor, view in views if view is not None]

    def term(
        self,
        model: torch.nn.Module,
        images: torch.Tensor,
        logits: torch.Tensor,
        epoch: int,
        batch_idx: int,
        pixels: PixelCounter | None = None,
    ) -> torch.Tensor | None:
        """This step's term, unweighted: the second view of ``images`` (the batch as the main forward
        took it, erased and mixed alike; smaller for a factor below 1, larger above) through ``model``
        with its BatchNorm statistics frozen, against the main view's ``logits``; None when the step
        has no second view (or its rounded size is not smaller, or larger, than the batch). The view
        is added to ``pixels`` (the run's ``train/megapixels``). The caller skips it on a step where
        :meth:`weight_at` is 0."""
        factor = self.draw(epoch, batch_idx)
        if factor is None:
            return None
        h, w = int(images.shape[-2]), int(images.shape[-1])
        view = self.view_size((h, w), factor)
        if view is None:
            return None
        h2, w2 = view
        keep = self.view_images(len(images), (h, w), (h2, w2))  # the batch's first images: a random subset
        images, logits = images[:keep], logits[:keep]
        small = F.interpolate(images, size=(h2, w2), mode="bilinear", antialias=True, align_corners=False)
        if images.is_contiguous(memory_format=torch.channels_last):
            small = small.contiguous(memory_format=torch.channels_last)
        if pixels is not None:
            pixels.add(small)
        with frozen_bn_stats(model):
            logits_small = model(small)
        return consistency_loss(logits_small, logits)
