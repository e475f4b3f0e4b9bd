"""Pooling heads: output shapes on any map size, values against independent references."""

from __future__ import annotations

import pytest
import torch

from resflex.errors import ConfigError
from resflex.models.pooling import (
    AvgMaxPool,
    AvgPool,
    GeMPool,
    MaxPool,
    PyramidPool,
    create_pooling,
    validate_levels,
)

MAP_SIZES = [(1, 1), (1, 7), (2, 3), (5, 5), (7, 4), (3, 11), (16, 9)]


@pytest.fixture(params=MAP_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def feature_map(request: pytest.FixtureRequest) -> torch.Tensor:
    h, w = request.param
    return torch.randn(3, 5, h, w, generator=torch.Generator().manual_seed(h * 100 + w))


def test_avg_equals_mean(feature_map: torch.Tensor) -> None:
    out = AvgPool()(feature_map)
    assert out.shape == (3, 5)
    torch.testing.assert_close(out, feature_map.mean(dim=(2, 3)))


def test_max_equals_amax(feature_map: torch.Tensor) -> None:
    out = MaxPool()(feature_map)
    assert out.shape == (3, 5)
    torch.testing.assert_close(out, feature_map.amax(dim=(2, 3)))


def test_avgmax_is_half_sum(feature_map: torch.Tensor) -> None:
    expected = 0.5 * (feature_map.mean(dim=(2, 3)) + feature_map.amax(dim=(2, 3)))
    torch.testing.assert_close(AvgMaxPool()(feature_map), expected)


def test_pyramid_level_one_is_global_average(feature_map: torch.Tensor) -> None:
    torch.testing.assert_close(PyramidPool(levels=[1])(feature_map), feature_map.mean(dim=(2, 3)))


@pytest.mark.parametrize("levels", [[1, 2, 4], [1, 3], [2], [1, 2, 3, 6]])
def test_pyramid_output_size_any_map(feature_map: torch.Tensor, levels: list[int]) -> None:
    head = PyramidPool(levels=levels)
    out = head(feature_map)
    assert out.shape == (3, 5 * sum(level * level for level in levels))
    assert head.out_features(5) == out.shape[1]
    assert torch.isfinite(out).all()


def test_pyramid_grid_cells_match_block_means() -> None:
    """On a 4x6 map, level 2 cells are the means of 2x3 blocks (independent reshape reference)."""
    x = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    out = PyramidPool(levels=[1, 2])(x)
    blocks = x.reshape(2, 3, 2, 2, 2, 3).mean(dim=(3, 5))  # (B, C, 2, 2)
    torch.testing.assert_close(out[:, :3], x.mean(dim=(2, 3)))
    torch.testing.assert_close(out[:, 3:], blocks.flatten(1))


def test_pyramid_max_grid_cells_match_block_max() -> None:
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    out = PyramidPool(levels=[2], pool_type="max")(x)
    blocks = x.reshape(2, 3, 2, 2, 2, 2).amax(dim=(3, 5))
    torch.testing.assert_close(out, blocks.flatten(1))


def test_pyramid_on_1x1_map_repeats_the_value() -> None:
    x = torch.randn(2, 4, 1, 1)
    out = PyramidPool(levels=[1, 2])(x)
    torch.testing.assert_close(out[:, 4:], x.flatten(1).repeat_interleave(4, dim=1))


def test_gem_p1_is_average_and_large_p_approaches_max() -> None:
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(2)) + 0.1
    torch.testing.assert_close(GeMPool(p=1.0)(x), x.mean(dim=(2, 3)))
    expected = (x.pow(3).mean(dim=(2, 3))).pow(1 / 3)
    torch.testing.assert_close(GeMPool(p=3.0)(x), expected)
    assert (GeMPool(p=200.0)(x) - x.amax(dim=(2, 3))).abs().max() < 0.05


def test_gem_p_is_learned() -> None:
    head = GeMPool(p=3.0)
    head(torch.rand(1, 2, 3, 3)).sum().backward()
    assert head.p.grad is not None and head.p.grad.abs() > 0


def test_heads_backpropagate_on_non_square_maps() -> None:
    for name in ("avg", "max", "avgmax", "gem", "pyramid"):
        x = torch.randn(2, 4, 3, 7, requires_grad=True)
        create_pooling(name)(x.abs() + 0.1).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, name


def test_unknown_pooling_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown pooling 'median'.*avg, avgmax, gem, max, pyramid"):
        create_pooling("median")


@pytest.mark.parametrize("bad", ["abc", [0], [], [1, -2], [1.5], [True]])
def test_bad_levels_are_rejected(bad: object) -> None:
    with pytest.raises(ConfigError, match="pooling.levels"):
        validate_levels(bad)  # type: ignore[arg-type]
