"""``eval.resolutions=auto`` (the default): evaluate at a few sizes around the main one.

resflex exists to train one set of weights for many input sizes, so the first
run a newcomer makes should already show accuracy *across* sizes, not one
number. ``auto`` picks ½×, ¾×, 1×, 1½× and 2× of the schedule's evaluation size,
each side rounded to ``resolution.multiple`` (the stride the schedule already
rounds its training sizes to); sizes the backbone cannot take (below half its
total stride, or not the only size a fixed-size ViT accepts) are dropped,
not refused, because nobody asked for them by name. ``eval.resolutions=[]``
evaluates at the main size only; an explicit list is used as given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from resflex.data.sizes import parse_size_list, round_to
from resflex.errors import ConfigError
from resflex.types import Size

log = logging.getLogger("resflex")

AUTO = "auto"
AUTO_FACTORS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0)


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def auto_eval_sizes(
    main: Sequence[int], multiple: int, factors: Sequence[float] = AUTO_FACTORS
) -> list[Size]:
    """``main`` (h, w) times each factor, sides rounded to ``multiple``, duplicates dropped, in order.
    At 1x the main size itself: rounded, an odd main size (33) would add a near-twin (32) beside it."""
    h, w = int(main[0]), int(main[1])
    sizes: list[Size] = []
    for factor in factors:
        size = (h, w) if factor == 1.0 else (round_to(h * factor, multiple), round_to(w * factor, multiple))
        if size not in sizes:
            sizes.append(size)
    return sizes


def resolve_eval_resolutions(value: Any, schedule: Any) -> Any:
    """``auto`` -> the extra sizes (sides, or ``[h, w]``) for the data module; anything else as is."""
    if not is_auto(value):
        return value
    sizes = auto_eval_sizes(schedule.eval_size, getattr(schedule, "multiple", 8))
    return [h if h == w else [h, w] for h, w in sizes]


def parse_eval_sizes(main: Size, extra: object) -> list[Size]:
    """Loader sizes: the main eval size first (``val/acc``), then each extra size once (``extra``: a list of
    sizes, or one size alone)."""
    sizes = [main]
    for size in parse_size_list(extra, "eval.resolutions"):
        if size not in sizes:
            sizes.append(size)
    return sizes


def drop_unfit_sizes(sizes: Sequence[Size], fits: Callable[[Size], object]) -> list[Size]:
    """The sizes for which ``fits(size)`` raises no :class:`ConfigError` (the first, main one must fit)."""
    kept: list[Size] = []
    for k, size in enumerate(sizes):
        try:
            fits(size)
        except ConfigError as exc:
            if k == 0:
                raise
            log.info("eval.resolutions=auto: skipping %dx%d (%s)", size[0], size[1], exc.message)
            continue
        kept.append(size)
    return kept


def loader_sizes(trainer: Any) -> list[Size] | None:
    """The (h, w) of each evaluation loader of ``trainer``'s data module, indexed by ``dataloader_idx``.

    The one way the training side (the LightningModule, the callbacks, the end-of-run table) learns
    the sizes, so none of them depends on the data module's attributes. None without a trainer or a
    resflex data module (a module evaluated with plain loaders, a unit test): the caller then takes
    the batch's own size.
    """
    sizes = getattr(getattr(trainer, "datamodule", None), "eval_sizes", None)
    return [(int(h), int(w)) for h, w in sizes] if sizes else None
