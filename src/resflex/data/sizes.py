"""Sizes as configs and commands give them: ``64`` or ``[h, w]`` -> (h, w), sides rounded to a multiple,
the default aspect-ratio buckets.

The size arithmetic shared by the schedules (:mod:`resflex.data.schedule`, :mod:`resflex.data.resolution`),
the evaluation sizes (:mod:`resflex.data.eval_sizes`), the data profile, prediction and export: one home,
in the lowest layer that reads sizes, so no caller imports a schedule module for a helper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeGuard

from resflex.errors import ConfigError
from resflex.types import Size

#: keep_aspect's bucket centres (w/h) when ``resolution.aspect_ratios`` gives none; also the aspects
#: the data profile and prediction round an image's aspect to
DEFAULT_ASPECTS = (0.5, 0.75, 1.0, 1.333, 2.0)


def _positive_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def parse_size(value: object, key: str = "resolution.size") -> Size:
    """``64`` -> (64, 64); ``[48, 80]`` -> (48, 80) as (height, width). Rejects non-positive sizes.

    ``value``: a config or command-line value, of any type: anything but an int or a pair of them
    is refused with a one-line :class:`ConfigError`.
    """
    if isinstance(value, int) and not isinstance(value, bool):  # True is an int to Python, not a size
        h: object = value
        w: object = value
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        h, w = value
    else:
        raise ConfigError(f"{key} must be an int or [height, width], got {value!r}", hint=f"e.g. {key}=64")
    if not (_positive_int(h) and _positive_int(w)):
        raise ConfigError(f"{key} must be positive integers, got {value!r}", hint=f"e.g. {key}=64")
    return int(h), int(w)


def parse_size_list(value: object, key: str) -> list[Size]:
    """The sizes a list key holds (``[48, [32, 64]]``: 48x48 and 32x64); one size given alone
    (``key=64``) is a list of one. Text, or an entry that is no size, is refused in one line with a
    list for its hint (a single-size hint would be refused in turn)."""
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"{key} must be a list of sizes, got {value!r}", hint=f"e.g. {key}=[32,64]")
    sizes = []
    for entry in value:
        try:
            sizes.append(parse_size(entry, key))
        except ConfigError as exc:
            raise ConfigError(exc.message, hint=f"e.g. {key}=[32,64]") from None
    return sizes


def round_to(value: float, multiple: int) -> int:
    """Nearest multiple of ``multiple`` (never below ``multiple`` itself)."""
    return max(multiple, math.floor(value / multiple + 0.5) * multiple)


def check_bucketed_size(size: Size, geometry: str, bucket_size: str, key: str) -> None:
    """One-line :class:`ConfigError` for a non-square ``size`` asked of a ``keep_aspect`` run.

    ``keep_aspect`` runs each image at its aspect bucket's shape for a size
    (:meth:`~resflex.data.schedule.ResolutionSchedule.shape_for`): of ``[h, w]`` only the short side
    (``bucket_size=short_side``) or the area (``area``) is used, so the images would run at the
    buckets of one side while the results were labelled ``h x w``, and ``scripts/eval.py`` would
    pick the BatchNorm statistics of a size the images never had. Both commands refuse it alike.
    """
    h, w = size
    if geometry != "keep_aspect" or h == w:
        return
    by_area = bucket_size == "area"
    side = round(math.sqrt(h * w)) if by_area else min(h, w)
    what = "the side of the same area" if by_area else "the short side"
    raise ConfigError(
        f"{key}: [{h}, {w}] is not square, and this keep_aspect run frames each image at its aspect "
        f"bucket's shape for one side ({what}: [{h}, {w}] would run as {side} px)",
        hint=f"{key}={side} (each image at its bucket's shape for {side} px)",
    )
