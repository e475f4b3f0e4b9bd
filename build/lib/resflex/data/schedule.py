"""What every resolution schedule is: :class:`ResolutionSchedule`, the contract and the common knobs.

A schedule answers "which (h, w) and batch size for this training step?" as a pure function of
(epoch, step) — plus its own seed where it is random — so every DDP rank and every resumed run
picks the same size for the same step. Subclasses (the ``resolution`` group's schedules,
:mod:`resflex.data.resolution`; NaFlex's, :mod:`resflex.data.naflex`) implement :meth:`size_at`
and :meth:`train_sizes`; the sampler, the data module and the training side only read this class.

Common knobs (every schedule): ``eval_size``, ``geometry`` (how an image is
framed into the size: ``square`` crops, ``keep_aspect`` crops into aspect-ratio
buckets (:mod:`resflex.data.buckets`), ``squash`` or ``pad`` the whole image,
``auto`` chosen from the data: :mod:`resflex.data.transforms`, :mod:`resflex.data.profile`),
``multiple`` (sides are rounded to it), ``aspect_ratios`` (bucket centres, w/h),
``bucket_size`` (a keep_aspect bucket's short side is the size, or its area is),
``batch_scaling`` (+ ``reference_size``, ``max_batch_size``): grow the batch when
the size shrinks so that pixels per batch stay ~constant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from resflex.data.sizes import DEFAULT_ASPECTS, parse_size, round_to
from resflex.errors import ConfigError
from resflex.types import Size

GEOMETRIES = ("auto", "square", "keep_aspect", "squash", "pad")
#: how a keep_aspect bucket's (h, w) relates to the scheduled size s
BUCKET_SIZES = ("short_side", "area")


def check_int(value: Any, key: str, minimum: int = 0) -> int:
    """``value`` if it is an integer >= ``minimum`` (a bool is not), else the one-line error for ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


class ResolutionSchedule:
    """Base class: subclasses implement :meth:`size_at` (and :meth:`train_sizes`)."""

    #: True when :meth:`size_at` depends on the number of epochs (then :meth:`bind` is required).
    needs_max_epochs = False
    #: ``multiple`` when the config gives none (sides are rounded to it)
    default_multiple = 8

    def __init__(
        self,
        eval_size: int | Sequence[int] | None = None,
        geometry: str = "auto",
        multiple: int | None = None,
        aspect_ratios: Sequence[float] = DEFAULT_ASPECTS,
        bucket_size: str = "short_side",
        batch_scaling: bool = False,
        reference_size: int | Sequence[int] | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        if geometry not in GEOMETRIES:
            raise ConfigError(
                f"resolution.geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}",
                hint="resolution.geometry=auto",
            )
        #: the configured geometry; ``auto`` becomes a concrete one in :meth:`resolve_geometry`
        self.geometry = geometry
        self.multiple = check_int(
            self.default_multiple if multiple is None else multiple, "resolution.multiple", 1
        )
        ratios = [float(a) for a in aspect_ratios]
        if not ratios or any(not math.isfinite(a) or a <= 0 for a in ratios):
            raise ConfigError(
                f"resolution.aspect_ratios must be positive numbers (w/h), got {aspect_ratios!r}"
            )
        self.aspect_ratios = tuple(sorted(ratios))
        if bucket_size not in BUCKET_SIZES:
            raise ConfigError(
                f"resolution.bucket_size must be one of {', '.join(BUCKET_SIZES)}, got {bucket_size!r}",
                hint="resolution.bucket_size=short_side",
            )
        self.bucket_size = bucket_size
        self.batch_scaling = bool(batch_scaling)
        self._reference_size = (
            parse_size(reference_size, "resolution.reference_size") if reference_size is not None else None
        )
        if max_batch_size is not None:
            check_int(max_batch_size, "resolution.max_batch_size", 1)
        self.max_batch_size = max_batch_size
        self._eval_size = parse_size(eval_size, "resolution.eval_size") if eval_size is not None else None
        self.max_epochs: int | None = None

    # ---- binding to the run ----------------------------------------------
    def bind(self, max_epochs: int | None) -> ResolutionSchedule:
        """Tell the schedule how long training is (``trainer.max_epochs``); returns ``self``."""
        if max_epochs is not None and max_epochs > 0:
            self.max_epochs = int(max_epochs)
        elif self.needs_max_epochs:
            raise ConfigError(
                f"resolution={type(self).__name__} needs trainer.max_epochs (got {max_epochs!r})",
                hint="set trainer.max_epochs=N (a schedule over epochs cannot run on max_steps alone)",
            )
        return self

    def _epochs(self) -> int:
        if self.max_epochs is None:
            raise RuntimeError(f"{type(self).__name__}.bind(max_epochs) must be called before use")
        return self.max_epochs

    # ---- what a step gets ------------------------------------------------
    def size_at(self, epoch: int, step: int) -> Size:
        raise NotImplementedError

    def train_sizes(self) -> list[Size]:
        """Every size training can use (for the plot's train-size mark, warm-up, memory checks)."""
        raise NotImplementedError

    def augment_at(self, epoch: int, step: int) -> str | None:
        """Name of the augmentation phase for this step (a key of :attr:`augment_phases`), or None."""
        return None

    @property
    def augment_phases(self) -> Mapping[str, Mapping[str, Any]]:
        """Per phase, the overrides for the train transform's arguments (e.g. ``scale``)."""
        return {}

    #: the config key the phases' overrides are set under, which their errors name
    augment_phases_key = "resolution"

    @property
    def reference_size(self) -> Size:
        """The size at which the configured ``data.batch_size`` applies under batch scaling."""
        return self._reference_size or max(self.train_sizes(), key=lambda s: s[0] * s[1])

    def batch_size_at(self, epoch: int, step: int, batch_size: int) -> int:
        """``batch_size`` unless batch scaling is on: then scaled by reference pixels / step pixels."""
        if not self.batch_scaling:
            return batch_size
        return self._scaled_batch(self.size_at(epoch, step), batch_size)

    def _scaled_batch(self, size: Size, batch_size: int) -> int:
        ref_h, ref_w = self.reference_size
        scaled = int(batch_size * (ref_h * ref_w) / (size[0] * size[1]) + 1e-9)
        if self.max_batch_size is not None:
            scaled = min(scaled, self.max_batch_size)
        return max(1, scaled)

    @property
    def varies_batch_size(self) -> bool:
        """True when steps per epoch can change from epoch to epoch (the sampler then re-plans)."""
        return self.batch_scaling and len(set(self.train_sizes())) > 1

    @property
    def eval_size(self) -> Size:
        return self._eval_size or max(self.train_sizes(), key=lambda s: s[0] * s[1])

    def sizes(self) -> list[Size]:
        """Every size this schedule can return, training and evaluation."""
        return sorted({*self.train_sizes(), self.eval_size})

    # ---- geometry ----------------------------------------------------------
    def resolve_geometry(self, geometry: str) -> None:
        """Replace ``auto`` by the geometry the data module chose from the dataset's profile."""
        if geometry not in GEOMETRIES or geometry == "auto":
            raise ValueError(f"not a concrete geometry: {geometry!r}")
        self.geometry = geometry

    def shape_for(self, size: Size, aspect: float) -> Size:
        """``keep_aspect``: the (h, w) of the bucket of aspect w/h ``aspect`` at scheduled size ``size``.

        ``bucket_size=short_side`` (default): the short side is the scheduled side, as for a
        square crop, so objects keep the scale ``square`` gives them and an elongated image
        adds pixels along its long side. ``area``: h*w ~ the pixels of ``size`` (constant cost
        per image), which shrinks the short side of elongated buckets by sqrt(aspect); at small
        sizes that loses small objects (measured per bucket in experiments/variable_size/).
        """
        if self.geometry != "keep_aspect":
            return size
        if self.bucket_size == "area":
            if aspect == 1.0:
                return size
            h = math.sqrt(size[0] * size[1] / aspect)
            return round_to(h, self.multiple), round_to(h * aspect, self.multiple)
        short = min(size)  # exactly the scheduled side; the long side is rounded to the multiple
        if aspect >= 1:
            return short, max(short, round_to(short * aspect, self.multiple))
        return max(short, round_to(short / aspect, self.multiple)), short

    def _describe(self, **fields: Any) -> str:
        text = ", ".join(f"{k}={v}" for k, v in fields.items())
        return f"{type(self).__name__}({text}, eval_size={self.eval_size}, geometry={self.geometry})"
