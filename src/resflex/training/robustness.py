"""Robustness across input sizes as numbers: worst, mean and the range of sizes that hold up.

resflex promises one set of weights for many input sizes, so every run reports
how well it keeps that promise, next to the headline accuracy at the main size:

``<stage>/acc_worst``
    the lowest accuracy over the evaluation sizes;
``<stage>/acc_mean_sizes``
    the mean over the evaluation sizes (each size weighs the same);
``<stage>/acc_range_low`` / ``<stage>/acc_range_high``
    the smallest / largest size, as × of the main (trained) size, of the
    contiguous run of evaluation sizes around the best one whose accuracy stays
    within :data:`RANGE_TOLERANCE` (0.03) of the best (where several sizes tie
    for the best, the one whose run is widest, then the one nearest the main
    size: small validation sets tie often, and the first of two tied ends
    would report a one-size range for a curve that holds up across the middle);
``<stage>/acc_range``
    ``high / low``: how many times larger the largest size that holds up is
    than the smallest (1.0: only one size; 4.0: ½× to 2×).

No library computes these (torchmetrics reduces per metric, not across a set
of evaluation loaders), so this module does it from per-size accuracies; the
LightningModule feeds it exact per-size counts, reduced over ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from resflex.types import Size

#: how far below the best size's accuracy a size may be and still count as "holding up"
RANGE_TOLERANCE = 0.03
#: float slack of :func:`holds_up`: above float32 rounding (accuracies pass through loggers and
#: metrics.json as float32: 0.17 and 0.14 read back 0.0300000012 apart), far below any difference
#: of two accuracies (counts over a split of fewer than a million images)
_SLACK = 1e-6


def holds_up(accuracy: float, best: float, tolerance: float = RANGE_TOLERANCE) -> bool:
    """Whether ``accuracy`` is within ``tolerance`` of ``best``, the boundary included: 0.29 against a
    best of 0.32 (3 images in 100) holds up, although ``0.32 - 0.03`` is 0.29000000000000004 in floats,
    and so do 0.14 against 0.17 read back from float32 (0.14000000059604645, 0.17000000178813934)."""
    return accuracy >= best - tolerance - _SLACK


def range_phrase(low: float, high: float, tolerance: float = RANGE_TOLERANCE) -> str:
    """The range in words for a log line: ``within 0.03 of its best from 0.75x to 1.5x``, or ``within
    0.03 of its best only at 1x`` (a bare ``1x-1x`` read as a typo to users)."""
    if math.isclose(low, high):
        return f"within {tolerance:g} of its best only at {low:.3g}x"
    return f"within {tolerance:g} of its best from {low:.3g}x to {high:.3g}x"


def scale_of(size: Size, main: Size) -> float:
    """``size`` as a multiple of ``main``, by the side of the square of equal area (sqrt(h*w))."""
    return math.sqrt(size[0] * size[1]) / math.sqrt(main[0] * main[1])


@dataclass(frozen=True)
class SizeRobustness:
    """Summary of accuracy across evaluation sizes (see the module docstring)."""

    worst: float
    mean: float
    best: float
    best_scale: float
    range_low: float
    range_high: float

    @property
    def range(self) -> float:
        return self.range_high / self.range_low

    def metrics(self, stage: str) -> dict[str, float]:
        """The tags this summary is logged under, e.g. ``val/acc_worst``."""
        return {
            f"{stage}/acc_worst": self.worst,
            f"{stage}/acc_mean_sizes": self.mean,
            f"{stage}/acc_range": self.range,
            f"{stage}/acc_range_low": self.range_low,
            f"{stage}/acc_range_high": self.range_high,
        }


def summarize_sizes(
    accuracy: Mapping[Size, float], main: Size, tolerance: float = RANGE_TOLERANCE
) -> SizeRobustness:
    """Worst, mean and range over ``accuracy`` ({(h, w): accuracy}); scales are relative to ``main``."""
    if not accuracy:
        raise ValueError("summarize_sizes needs at least one size")
    ordered = sorted(accuracy.items(), key=lambda item: scale_of(item[0], main))
    scales = [scale_of(size, main) for size, _ in ordered]
    values = [float(acc) for _, acc in ordered]
    best = max(values)

    def run_around(k: int) -> tuple[int, int]:
        low = high = k
        while low > 0 and holds_up(values[low - 1], best, tolerance):
            low -= 1
        while high < len(values) - 1 and holds_up(values[high + 1], best, tolerance):
            high += 1
        return low, high

    runs = {k: run_around(k) for k, value in enumerate(values) if value == best}  # the tied sizes
    best_index = min(runs, key=lambda k: (runs[k][0] - runs[k][1], abs(math.log(scales[k])), scales[k]))
    low, high = runs[best_index]
    return SizeRobustness(
        worst=min(values),
        mean=sum(values) / len(values),
        best=best,
        best_scale=scales[best_index],
        range_low=scales[low],
        range_high=scales[high],
    )
