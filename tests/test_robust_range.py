"""resflex.robust_range on hand-made curves: which metrics are a curve, which sizes are in the range
(ties and non-square sizes at the same scale), and the JSON record the export metadata and predict carry."""

from __future__ import annotations

from resflex.robust_range import RobustRange, robust_range, robust_ranges, size_curve


def curve(stage: str, accuracy: dict[str, object]) -> dict[str, object]:
    return {f"{stage}/acc@{tag}": acc for tag, acc in accuracy.items()}


def test_a_curve_is_the_numeric_per_size_accuracies_of_its_split_only() -> None:
    """A flag (``True``) or a text in a metric is no accuracy: it would read as 1.0 and become the best."""
    metrics = {
        **curve("val", {"64": 0.8, "32": True, "48": "n/a", "48x80": 0.7}),
        **curve("test", {"96": 0.5}),
        "val/acc": 0.9,
    }
    assert size_curve(metrics, "val") == {(64, 64): 0.8, (48, 80): 0.7}
    assert size_curve(metrics, "test") == {(96, 96): 0.5}


def test_a_size_at_the_ranges_scale_that_does_not_hold_up_is_not_in_it() -> None:
    """32x128 has the scale of 64x64 (equal area) but not its accuracy: the range's ends are scales, its
    sizes those that also hold up."""
    metrics = curve("val", {"48": 0.80, "64": 0.82, "32x128": 0.30, "96": 0.50})
    robust = robust_range(metrics, "val", (64, 64))
    assert robust is not None
    assert robust.sizes == [(48, 48), (64, 64)]
    assert robust.as_dict()["sizes"] == [[48, 48], [64, 64]]


def test_ties_name_the_smaller_worst_and_the_best_summarize_sizes_chose() -> None:
    """Of sizes tied for the worst, the smallest; of sizes tied for the best, the one nearest the trained
    size (summarize_sizes' choice), so the record's best is inside its own range."""
    metrics = curve("val", {"32": 0.82, "48": 0.50, "64": 0.82, "128": 0.50})
    robust = robust_range(metrics, "val", (64, 64))
    assert robust is not None
    record = robust.as_dict()
    assert record["best"] == {"size": [64, 64], "acc": 0.82}
    assert record["worst"] == {"size": [48, 48], "acc": 0.50}
    assert record["sizes"] == [[64, 64]]


def test_without_the_trained_size_the_record_has_no_scales() -> None:
    """main=None (a run whose schedule cannot be rebuilt): sizes in px only, the x of nothing is None."""
    metrics = curve("val", {"32": 0.6, "64": 0.8, "96": 0.79})
    robust = robust_range(metrics, "val", None)
    assert isinstance(robust, RobustRange) and robust.main is None
    record = robust.as_dict()
    assert (record["trained_size"], record["low_scale"], record["high_scale"]) == (None, None, None)
    assert (record["low"], record["high"]) == ([64, 64], [96, 96])
    assert robust.span_text() == "from 64 to 96 px"


def test_ranges_are_val_first_then_test() -> None:
    """Readers take the first range (predict.size=auto, the export's summary line): val is preferred."""
    metrics = {**curve("test", {"64": 0.7, "96": 0.69}), **curve("val", {"64": 0.8})}
    assert [r.stage for r in robust_ranges(metrics, (64, 64))] == ["val", "test"]
    assert robust_ranges({"val/acc": 0.8}, (64, 64)) == []
