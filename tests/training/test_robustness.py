"""The robustness summary over evaluation sizes: worst, mean, and the range of sizes that hold up."""

from __future__ import annotations

import math

import pytest

from resflex.training.robustness import range_phrase, scale_of, summarize_sizes


def test_worst_mean_and_contiguous_range_around_the_best_size() -> None:
    accuracy = {(32, 32): 0.60, (48, 48): 0.88, (64, 64): 0.90, (96, 96): 0.875, (128, 128): 0.80}
    summary = summarize_sizes(accuracy, main=(64, 64))
    assert summary.worst == 0.60
    assert summary.mean == pytest.approx(sum(accuracy.values()) / 5)
    assert summary.best == 0.90 and summary.best_scale == 1.0
    # 48 (0.88) and 96 (0.875) are within 0.03 of 0.90; 32 and 128 are not
    assert (summary.range_low, summary.range_high) == (0.75, 1.5)
    assert summary.range == pytest.approx(2.0)
    metrics = summary.metrics("val")
    assert metrics["val/acc_worst"] == 0.60 and metrics["val/acc_range"] == pytest.approx(2.0)


def test_range_stops_at_the_first_size_that_drops_even_if_a_later_one_recovers() -> None:
    accuracy = {(16, 16): 0.9, (24, 24): 0.5, (32, 32): 0.91, (48, 48): 0.9}
    summary = summarize_sizes(accuracy, main=(32, 32))
    assert (summary.range_low, summary.range_high) == (1.0, 1.5)


def test_one_size_is_a_range_of_one_and_non_square_sizes_scale_by_area() -> None:
    summary = summarize_sizes({(40, 40): 0.7}, main=(40, 40))
    assert (summary.worst, summary.mean, summary.range) == (0.7, 0.7, 1.0)
    assert scale_of((32, 128), (64, 64)) == pytest.approx(1.0)
    assert scale_of((32, 32), (64, 64)) == 0.5
    with pytest.raises(ValueError):
        summarize_sizes({}, main=(64, 64))


def test_a_flat_curve_spans_every_size() -> None:
    accuracy = {(s, s): 0.8 + 0.01 * math.sin(s) for s in (32, 48, 64, 96, 128)}
    summary = summarize_sizes(accuracy, main=(64, 64))
    assert (summary.range_low, summary.range_high, summary.range) == (0.5, 2.0, 4.0)


def test_the_range_reads_as_words_and_a_single_size_says_so() -> None:
    assert range_phrase(0.75, 1.5) == "within 0.03 of its best from 0.75x to 1.5x"
    assert range_phrase(1.0, 1.0) == "within 0.03 of its best only at 1x"
    assert range_phrase(0.5, 2.0, tolerance=0.05) == "within 0.05 of its best from 0.5x to 2x"


def test_of_sizes_tied_for_the_best_the_range_is_around_the_one_with_the_widest_run() -> None:
    # 32 px and 128 px tie; the run around 128 px (64-128, within 0.03) is wider than 32 px's alone
    accuracy = {(32, 32): 0.12, (48, 48): 0.08, (64, 64): 0.11, (96, 96): 0.11, (128, 128): 0.12}
    summary = summarize_sizes(accuracy, main=(64, 64))
    assert (summary.best_scale, summary.range_low, summary.range_high) == (2.0, 1.0, 2.0)


def test_of_tied_runs_of_equal_width_the_one_nearest_the_trained_size_wins() -> None:
    accuracy = {(32, 32): 0.5, (48, 48): 0.3, (64, 64): 0.5, (96, 96): 0.3, (128, 128): 0.5}
    summary = summarize_sizes(accuracy, main=(64, 64))
    assert (summary.best_scale, summary.range_low, summary.range_high) == (1.0, 1.0, 1.0)


def test_the_worst_size_need_not_be_the_smallest() -> None:
    accuracy = {(32, 32): 0.70, (48, 48): 0.85, (64, 64): 0.90, (96, 96): 0.62}
    summary = summarize_sizes(accuracy, main=(64, 64))
    assert summary.worst == 0.62 and summary.metrics("test")["test/acc_worst"] == 0.62


@pytest.mark.parametrize(("best", "other"), [(0.32, 0.29), (0.9, 0.87), (0.45, 0.42), (0.07, 0.04)])
def test_a_size_exactly_the_tolerance_below_the_best_holds_up(best: float, other: float) -> None:
    """3 images in 100 below the best is within 0.03, whatever the float rounding of best - 0.03
    (0.32 - 0.03 = 0.29000000000000004 > 0.29)."""
    summary = summarize_sizes({(32, 32): other, (64, 64): best, (96, 96): other}, main=(64, 64))
    assert (summary.range_low, summary.range_high) == (0.5, 1.5)
    below = summarize_sizes({(32, 32): other - 0.001, (64, 64): best}, main=(64, 64))
    assert (below.range_low, below.range_high) == (1.0, 1.0)


def test_the_boundary_holds_after_a_float32_round_trip() -> None:
    """Accuracies reach metrics.json through the loggers as float32: 0.17 and 0.14 read back
    0.0300000012 apart, and the model card, the export and predict.size=auto said "only at 48 px"
    where eval.py (float64) said 1.5x-2x."""
    import numpy as np

    best, other = float(np.float32(0.17)), float(np.float32(0.14))
    summary = summarize_sizes({(48, 48): best, (64, 64): other}, main=(32, 32))
    assert (summary.range_low, summary.range_high) == (1.5, 2.0)
