"""``train/megapixels``: the training pixels a run forwarded (resflex.training.pixels)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from resflex.training.pixels import PIXELS_KEY, PixelCounter
from resflex.types import TokenBatch
from tests.conftest import TINY, TINY_SYNTHETIC, run_cli, scalar_tags


def test_the_count_is_every_images_area_and_survives_a_checkpoint() -> None:
    counter = PixelCounter()
    counter.add(torch.zeros(4, 3, 24, 40, dtype=torch.uint8))
    counter.add(torch.zeros(2, 3, 16, 8))
    assert counter.pixels == 4 * 24 * 40 + 2 * 16 * 8
    tokens = TokenBatch(torch.zeros(2, 4, 48), torch.zeros(2, 4, 2), torch.ones(2, 4, dtype=torch.bool), 4)
    counter.add(tokens)  # a token batch: its cost is a sequence length, not a side
    assert counter.pixels == 4 * 24 * 40 + 2 * 16 * 8
    checkpoint: dict = {}
    counter.save(checkpoint)
    resumed = PixelCounter()
    resumed.load(checkpoint)
    assert resumed.pixels == checkpoint[PIXELS_KEY] == counter.pixels
    fresh = PixelCounter()
    fresh.load({})  # a checkpoint from before the count
    assert fresh.pixels == 0
    assert counter.megapixels(None, torch.device("cpu")) == pytest.approx(counter.pixels / 1e6)


def test_a_run_logs_the_pixels_it_trained_on_second_views_included(tmp_path: Path) -> None:
    """3 steps of 8 square 32 px images, each with a 16 px second view (factor 0.5 on every step)."""
    run = tmp_path / "run"
    overrides = [
        *TINY,
        *TINY_SYNTHETIC,
        "resolution.geometry=square",
        "model.scale_consistency=1.0",
        "model.scale_consistency_prob=1.0",
        "model.scale_consistency_factors=[0.5]",
        "eval.resolutions=[]",
        "test_after_fit=false",
    ]
    result = run_cli([*overrides, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = 3 * 8 * (32 * 32 + 16 * 16) / 1e6
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert metrics["train/megapixels"] == pytest.approx(expected, rel=1e-6)
    _, value = scalar_tags(run)["train/megapixels"][-1]
    assert value == pytest.approx(expected, rel=1e-6)


def test_the_logged_count_sums_every_ranks_pixels() -> None:
    """Under DDP each rank counts its own shard; ``train/megapixels`` is their sum (two ranks here, the
    reduction faked as the other rank having counted as much), a single process its own count."""
    counter = PixelCounter()
    counter.add(torch.zeros(2, 3, 500, 1000))
    reduced: list[str] = []

    def reduce(total: torch.Tensor, reduce_op: str) -> torch.Tensor:
        reduced.append(reduce_op)
        return total * 2

    for world_size, expected in ((1, 1.0), (2, 2.0), (8, 2.0)):
        trainer = SimpleNamespace(world_size=world_size, strategy=SimpleNamespace(reduce=reduce))
        assert counter.megapixels(trainer, torch.device("cpu")) == pytest.approx(expected)  # type: ignore[arg-type]
    assert reduced == ["sum", "sum"]
