"""A run's *robust range*: the sizes it holds up at, read from its accuracy-per-size metrics.

:class:`RobustRange` and :func:`robust_ranges` turn ``metrics.json``'s ``<split>/acc@<size>``
tags into the contiguous sizes around the best whose accuracy stays within
:data:`~resflex.training.robustness.RANGE_TOLERANCE` of it. Apart from :mod:`resflex.model_card`
(which renders them as a sentence) because several readers share them: the model card,
``predict.size=auto`` (:mod:`resflex.predict_plan`), the export metadata
(:mod:`resflex.export_formats`), :class:`resflex.inference.ResflexClassifier` and
``scripts/summarize.py`` (:mod:`resflex.sweep_jobs`). It reads no file: the caller passes the metrics.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from resflex.training.robustness import RANGE_TOLERANCE, SizeRobustness, holds_up, scale_of, summarize_sizes
from resflex.types import Size


def number_text(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


_SIZE_TAG = re.compile(r"(\d+)(?:x(\d+))?")
#: the splits whose per-size curve a run may record, in the order they are preferred
CURVE_STAGES = ("val", "test")


def parse_size_tag(tag: str) -> Size | None:
    """``64`` -> (64, 64), ``48x80`` -> (48, 80): the inverse of :func:`resflex.runtime.size_tag`."""
    match = _SIZE_TAG.fullmatch(str(tag))
    if match is None:
        return None
    h, w = match.groups()
    return int(h), int(w or h)


def size_curve(metrics: Mapping[str, Any], stage: str) -> dict[Size, float]:
    """``{(h, w): accuracy}`` from a run's ``<stage>/acc@<size>`` metrics (non-numbers skipped)."""
    curve: dict[Size, float] = {}
    prefix = f"{stage}/acc@"
    for key, value in metrics.items():
        if not key.startswith(prefix) or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        size = parse_size_tag(key[len(prefix) :])
        if size is not None:
            curve[size] = float(value)
    return curve


def size_text(size: Size) -> str:
    """``64 px`` for a square, ``48x80 px`` otherwise (as the metric tags write sizes)."""
    return f"{size[0]} px" if size[0] == size[1] else f"{size[0]}x{size[1]} px"


def scale_text(scale: float) -> str:
    """``0.5×``, ``0.75×``, ``2×``: a multiple of the trained size, no trailing zeros."""
    return f"{scale:.2f}".rstrip("0").rstrip(".") + "×"


@dataclass(frozen=True)
class RobustRange:
    """The sizes a run holds up at, from one split's accuracy-per-size curve.

    ``sizes`` is the contiguous run of evaluated sizes around the best one whose
    accuracy stays within :data:`~resflex.training.robustness.RANGE_TOLERANCE` of the
    best, exactly as :func:`~resflex.training.robustness.summarize_sizes` defines
    ``acc_range_low``/``acc_range_high`` (its scales are relative to ``main``, the
    trained size; ``main=None``: not known, so only sizes in px are meaningful).
    """

    stage: str
    main: Size | None
    accuracy: dict[Size, float]
    summary: SizeRobustness

    @property
    def reference(self) -> Size:
        """The size scales are relative to: the trained size, else the first evaluated one."""
        return self.main or next(iter(self.accuracy))

    def scale(self, size: Size) -> float:
        return scale_of(size, self.reference)

    @property
    def sizes(self) -> list[Size]:
        """The robust sizes, smallest first (the curve's sizes between the range's ends)."""
        low, high = self.summary.range_low, self.summary.range_high
        inside = [
            size
            for size, acc in self.accuracy.items()
            if low - 1e-9 <= self.scale(size) <= high + 1e-9 and holds_up(acc, self.summary.best)
        ]
        return sorted(inside, key=self.scale)

    @property
    def best_size(self) -> Size:
        """The size the range is around (of sizes tied for the best, the one summarize_sizes chose)."""
        return min(
            self.accuracy,
            key=lambda size: (-self.accuracy[size], abs(self.scale(size) - self.summary.best_scale)),
        )

    @property
    def worst_size(self) -> Size:
        return min(self.accuracy, key=lambda size: (self.accuracy[size], self.scale(size)))

    def as_dict(self) -> dict[str, Any]:
        """A JSON record (export metadata, predict's record): sizes as [h, w], scales of the trained size."""
        sizes = self.sizes
        return {
            "split": self.stage,
            "tolerance": RANGE_TOLERANCE,
            "trained_size": list(self.main) if self.main else None,
            "sizes": [list(s) for s in sizes],
            "low": list(sizes[0]),
            "high": list(sizes[-1]),
            "low_scale": self.summary.range_low if self.main else None,
            "high_scale": self.summary.range_high if self.main else None,
            "range": self.summary.range,
            "best": {"size": list(self.best_size), "acc": self.summary.best},
            "worst": {"size": list(self.worst_size), "acc": self.summary.worst},
            "mean": self.summary.mean,
            "evaluated": [list(s) for s in sorted(self.accuracy, key=self.scale)],
        }

    def span_text(self, unit: Callable[[Size], str] = size_text) -> str:
        """``from 32 to 96 px (0.5×–1.5×)``, or ``only at 64 px (1×)``; the × only when ``main`` is known.
        ``unit`` writes one size (``64 px``; a NaFlex run's ``64 tokens``)."""
        sizes = self.sizes
        low, high = sizes[0], sizes[-1]
        if low == high:
            text = f"only at {unit(low)}"
            return text + (f" ({scale_text(self.scale(low))})" if self.main else "")
        text = f"from {unit(low).rsplit(' ', 1)[0]} to {unit(high)}"
        if self.main:
            text += f" ({scale_text(self.scale(low))}–{scale_text(self.scale(high))})"
        return text

    def sentence(self, unit: Callable[[Size], str] = size_text, sizes_noun: str = "sizes") -> str:
        """One line for the card: the range in ``unit`` (px) and × of the trained size, the best, worst
        and mean over the evaluated ``sizes_noun``."""
        if len(self.accuracy) == 1:
            ((size, acc),) = self.accuracy.items()
            return f"evaluated at {unit(size)} only ({number_text(acc)}): no range measured"
        return (
            f"accuracy within {RANGE_TOLERANCE:g} of the best ({number_text(self.summary.best)} at "
            f"{unit(self.best_size)}) {self.span_text(unit)}; worst {number_text(self.summary.worst)} "
            f"(at {unit(self.worst_size)}), mean over {len(self.accuracy)} {sizes_noun} "
            f"{number_text(self.summary.mean)}"
        )


def robust_range(metrics: Mapping[str, Any], stage: str, main: Sequence[int] | None) -> RobustRange | None:
    """The :class:`RobustRange` of ``stage``'s per-size curve in ``metrics``; None when it has none."""
    curve = size_curve(metrics, stage)
    if not curve:
        return None
    main_size = (int(main[0]), int(main[1])) if main else None
    summary = summarize_sizes(curve, main=main_size or next(iter(curve)))
    return RobustRange(stage=stage, main=main_size, accuracy=curve, summary=summary)


def robust_ranges(metrics: Mapping[str, Any], main: Sequence[int] | None) -> list[RobustRange]:
    """One :class:`RobustRange` per split with a per-size curve (val first, then test)."""
    ranges = [robust_range(metrics, stage, main) for stage in CURVE_STAGES]
    return [r for r in ranges if r is not None]


def _range_lines(
    ranges: Sequence[RobustRange], unit: Callable[[Size], str], trained: str, noun: str, note: str = ""
) -> list[str]:
    """The card's robustness section in ``unit``: an intro from ``trained`` (the reference), the
    ``noun`` of the evaluated sizes and a ``note``, then one line per split."""
    intro = (
        f"How far from {trained}, the same weights hold up: the contiguous {noun} around the best whose "
        f"accuracy stays within {RANGE_TOLERANCE:g} of it{note}."
    )
    return [intro, "", *(f"- {r.stage}: {r.sentence(unit, noun)}." for r in ranges)]


def robustness_lines(metrics: Mapping[str, Any], main: Size | None) -> list[str]:
    """The card's robustness section: one line per split with a per-size curve."""
    ranges = robust_ranges(metrics, main)
    if not ranges:
        return ["No accuracy per size recorded in metrics.json (`eval.resolutions`)."]
    trained = f"the trained size, {size_text(main)}" if main else "the trained size"
    return _range_lines(ranges, size_text, trained, "sizes", " (`predict.size=auto` picks among them)")


def tokens_text(size: Size) -> str:
    """``64 tokens``: a NaFlex run's size (s, s) is a sequence length."""
    return f"{size[0]} tokens"


def token_robustness_lines(metrics: Mapping[str, Any], main: Size | None) -> list[str]:
    """The card's robustness section of a NaFlex run: one line per split, in tokens per image."""
    ranges = robust_ranges(metrics, main)
    if not ranges:
        return ["No accuracy per sequence length recorded in metrics.json (`eval.seq_lens`)."]
    trained = f"the run's max_seq_len, {tokens_text(main)} per image" if main else "the run's max_seq_len"
    return _range_lines(ranges, tokens_text, trained, "sequence lengths")
