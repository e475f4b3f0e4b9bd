"""Sizes as configs and commands give them: ``64`` or ``[h, w]`` -> (h, w), sides rounded to a multiple,
the default aspect-ratio buckets.

The size arithmetic shared by the schedules (:mod:`resflex.data.schedule`, :mod:`resflex.data.resolution`),
the evaluation sizes (:mod:`resflex.data.eval_sizes`), the data profile, prediction and export: one home,
in the lowest layer that reads sizes, so no caller imports a schedule module for a helper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
        except ConfigError as exc:  # the entry's own message, said of an entry of the list
            message = exc.message.replace(f"{key} must be", f"each entry of {key} must be", 1)
            raise ConfigError(message, hint=f"e.g. {key}=[32,64]") from None
    return sizes


def round_to(value: float, multiple: int) -> int:
    """Nearest multiple of ``multiple`` (never below ``multiple`` itself)."""
    return max(multiple, math.floor(value / multiple + 0.5) * multiple)


def non_square_key(resolution: Mapping[str, object], size: Size) -> str:
    """The ``resolution.*`` key a non-square training ``size`` came from: the key that holds it (``size``,
    ``start_size``, an entry of ``sizes``), else the key of any non-square pair, else ``resolution.size``
    (a size a schedule derived from its ``size``: multigrid's factors, multiscale's scales)."""
    pair = list(size)
    for key, value in resolution.items():
        if value == pair or (isinstance(value, Sequence) and not isinstance(value, str) and pair in value):
            return f"resolution.{key}"
    for key, value in resolution.items():
        if key.endswith("sizes") or not isinstance(value, Sequence) or isinstance(value, str):
            continue  # sizes: [40, 72] is two square sizes
        if len(value) == 2 and all(map(_positive_int, value)) and value[0] != value[1]:
            return f"resolution.{key}"
    return "resolution.size"


def check_training_sizes_bucketed(
    resolution: Mapping[str, object], sizes: Sequence[Size], geometry: str, bucket_size: str, chosen: bool
) -> None:
    """Training's form of :func:`check_bucketed_size`: a ``keep_aspect`` run (set, or ``chosen`` by
    ``geometry=auto``) trains each image at its bucket's shape for one side, so a non-square training
    size would be used by one side alone while every report named it ``h x w`` (``scripts/eval.py``
    and ``predict.py`` refuse it too). The hint also offers the geometry that runs ``[h, w]`` itself."""
    if geometry != "keep_aspect":
        return
    for h, w in sizes:
        if h != w:
            key = non_square_key(resolution, (h, w))
            side, what = bucket_side((h, w), bucket_size)
            by_auto = " (resolution.geometry=auto chose it for these images)" if chosen else ""
            raise ConfigError(
                f"{key}: [{h}, {w}] is not square, and this keep_aspect run{by_auto} frames each image "
                f"at its aspect bucket's shape for one side ({what}: [{h}, {w}] would train as {side} px)",
                hint=f"a square size ({side} for [{h}, {w}]), or resolution.geometry=squash to frame "
                f"every image at [{h}, {w}]",
            )


def bucket_side(size: Size, bucket_size: str) -> tuple[int, str]:
    """The one side a ``keep_aspect`` run uses of ``size`` (``bucket_size``: ``short_side`` or
    ``area``), and what it is in words."""
    h, w = size
    if bucket_size == "area":
        return round(math.sqrt(h * w)), "the side of the same area"
    return min(h, w), "the short side"


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
    side, what = bucket_side(size, bucket_size)
    raise ConfigError(
        f"{key}: [{h}, {w}] is not square, and this keep_aspect run frames each image at its aspect "
        f"bucket's shape for one side ({what}: [{h}, {w}] would run as {side} px)",
        hint=f"{key}={side} (each image at its bucket's shape for {side} px)",
    )
