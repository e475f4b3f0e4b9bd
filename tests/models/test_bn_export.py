"""Per-size BatchNorm statistics inside an export (resflex.models.bn_export): the graph picks, from the
input's own height and width, the row eager ``load_classifier`` swaps in from Python, so the file equals
it at every size, not only at the main one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resflex.export import FORMATS, export_classifier
from resflex.inference import ResflexClassifier
from resflex.models.bn_calibration import TrackedSizeStats, read_stats
from resflex.models.bn_export import SizeChoice, with_size_selected_stats
from tests.test_export import ATOL, tiny_classifier

SIDES = [32, 48, 64, 96, 128]
#: around and between the tracked sides, non-square, far outside them, and on a tie (sqrt(32 * 128) = 64)
SIZES = [(32, 32), (40, 40), (48, 80), (96, 64), (56, 56), (80, 80), (24, 120), (128, 128), (160, 160)]


def with_size_table(classifier: ResflexClassifier, keep_aspect: bool = False) -> ResflexClassifier:
    """Give ``classifier`` a per-size table whose rows differ clearly (as calibrated runs' do)."""
    stats = TrackedSizeStats(classifier.model, main=64)
    generator = torch.Generator().manual_seed(0)
    base = read_stats(classifier.model)
    for side in SIDES:
        stats.table[side] = {
            name: value + torch.randn(value.shape, generator=generator) * 0.5
            if name.endswith("mean")
            else value * (0.5 + torch.rand(value.shape, generator=generator))
            for name, value in base.items()
        }
    classifier.size_stats = stats
    if keep_aspect:
        classifier.info.update(geometry="keep_aspect", bucket_size="short_side")
    return classifier


@pytest.mark.parametrize("keep_aspect", [False, True])
def test_the_graph_picks_the_row_the_eager_model_does_at_every_size(keep_aspect: bool) -> None:
    classifier = with_size_table(tiny_classifier("avg"), keep_aspect)
    assert classifier.size_stats is not None
    choice = with_size_selected_stats(
        tiny_classifier("avg"), classifier.size_stats.table, 64, keep_aspect, prefix="model."
    )
    for h in range(8, 300, 3):
        for w in (h, h + 5, 2 * h + 1):
            index = int(choice.size_index(torch.zeros(1, 3, h, w)))
            side = classifier.stats_side(h, w)
            assert choice.sides[index] == classifier.size_stats.nearest(side), (h, w)
    # a tie in log scale goes to the larger side, as TrackedSizeStats.nearest does
    tie = SizeChoice(torch.nn.Identity(), [32, 128], short_side=False)
    assert tie.sides[int(tie.size_index(torch.zeros(1, 3, 64, 64)))] == 128


def test_without_a_forward_the_layers_hold_the_main_sizes_statistics() -> None:
    classifier = with_size_table(tiny_classifier("avg"))
    assert classifier.size_stats is not None
    table = classifier.size_stats.table
    choice = with_size_selected_stats(tiny_classifier("avg"), table, 64, False, prefix="model.")
    layer = choice.model.model.backbone.model.bn1
    assert torch.equal(layer.running_mean, table[64]["backbone.model.bn1.running_mean"])
    assert "running_mean" not in dict(layer.named_buffers())  # the table replaces the buffer
    sides = sorted(table)
    with torch.no_grad():  # a forward at another size picks that size's row for itself only
        choice.eval()(torch.rand(1, 3, sides[0], sides[0]))
    assert sides[0] != 64 and torch.equal(layer.running_mean, table[64]["backbone.model.bn1.running_mean"])


@pytest.mark.parametrize(
    "fmt",
    [
        "torchscript",
        pytest.param("onnx", marks=pytest.mark.slow),
        pytest.param("exported", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("keep_aspect", [False, True])
def test_an_export_equals_the_per_size_eager_model_at_every_size(
    fmt: str, keep_aspect: bool, tmp_path: Path
) -> None:
    classifier = with_size_table(tiny_classifier("pyramid"), keep_aspect)
    # torch.export at torch 2.7 guards this backbone's height at >= 33 (with or without the table)
    sizes = [s for s in SIZES if fmt != "exported" or min(s) > 32]
    record = export_classifier(classifier, fmt, tmp_path / f"model{FORMATS[fmt]}", sizes=sizes, atol=ATOL)
    assert record["max_abs_diff"] <= 1e-4, record["checks"]
    assert classifier.size_stats is not None  # the eager model keeps swapping by size
    # the table matters: with the main size's statistics alone the logits differ away from 64 px
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        per_size = classifier(x)
        classifier.use_main_size_stats()
        assert (classifier(x) - per_size).abs().max() > 1e-2
