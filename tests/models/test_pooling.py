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
    validate_levels,
)
from tests.conftest import pooling_from_config

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


def textbook_pyramid(levels: list[int], pool_type: str = "avg") -> PyramidPool:
    """SPP-net's head: raw adaptive pools at every level, concatenated (no projection, no gains)."""
    return PyramidPool(levels=levels, pool_type=pool_type, proj_channels=None, level_scale_init=None)


def bin_pool(x: torch.Tensor, level: int, reduce: str = "mean") -> torch.Tensor:
    """Independent reference: cell (i, j) reduces rows [floor(iH/l), ceil((i+1)H/l)), columns alike."""
    b, c, h, w = x.shape
    out = torch.empty(b, c, level, level, dtype=x.dtype)
    for i in range(level):
        r0, r1 = (i * h) // level, -((-(i + 1) * h) // level)
        for j in range(level):
            c0, c1 = (j * w) // level, -((-(j + 1) * w) // level)
            block = x[:, :, r0:r1, c0:c1]
            out[:, :, i, j] = block.mean(dim=(2, 3)) if reduce == "mean" else block.amax(dim=(2, 3))
    return out.flatten(1)


def test_pyramid_level_one_is_global_average(feature_map: torch.Tensor) -> None:
    head = PyramidPool(levels=[1])
    head.setup(5)
    torch.testing.assert_close(head(feature_map), feature_map.mean(dim=(2, 3)))


@pytest.mark.parametrize("levels", [[1, 2, 4], [1, 3], [2], [1, 2, 3, 6]])
@pytest.mark.parametrize("proj", [None, 3])
def test_pyramid_output_size_any_map(feature_map: torch.Tensor, levels: list[int], proj: int | None) -> None:
    head = PyramidPool(levels=levels, proj_channels=proj, level_scale_init=0.5)
    assert head.setup(5) == head.out_features(5)
    out = head(feature_map)
    per_cell = proj or 5
    expected = (5 if 1 in levels else 0) + per_cell * sum(level * level for level in levels if level > 1)
    assert out.shape == (3, expected) == (3, head.out_features(5))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("map_size", [(1, 1), (2, 3), (4, 4), (3, 7), (7, 9), (16, 9)])
@pytest.mark.parametrize("pool_type", ["avg", "max"])
def test_pyramid_equals_an_independent_reference(map_size: tuple[int, int], pool_type: str) -> None:
    """Maps smaller than, equal to and larger than the levels (1, 2, 4): global pool, then projected
    (1x1 conv, BatchNorm in eval mode, ReLU) bin pools times each level's gain."""
    generator = torch.Generator().manual_seed(map_size[0] * 31 + map_size[1])
    x = torch.randn(2, 6, *map_size, generator=generator)
    head = PyramidPool(levels=[1, 2, 4], pool_type=pool_type, proj_channels=4, level_scale_init=0.0)
    head.setup(6)
    conv, bn = head.proj[0], head.proj[1]
    with torch.no_grad():
        conv.weight.copy_(torch.randn(4, 6, 1, 1, generator=generator))
        bn.running_mean.copy_(torch.randn(4, generator=generator))
        bn.running_var.copy_(torch.rand(4, generator=generator) + 0.5)
        bn.weight.copy_(torch.randn(4, generator=generator))
        bn.bias.copy_(torch.randn(4, generator=generator))
        head.level_scales.copy_(torch.tensor([0.7, -1.3]))
    head.eval()
    reduce = "mean" if pool_type == "avg" else "amax"
    projected = torch.einsum("bchw,pc->bphw", x, conv.weight[:, :, 0, 0])
    projected = (projected - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        bn.running_var.view(1, -1, 1, 1) + bn.eps
    )
    projected = (projected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)).clamp(min=0)
    expected = torch.cat(
        [
            x.mean(dim=(2, 3)) if pool_type == "avg" else x.amax(dim=(2, 3)),
            0.7 * bin_pool(projected, 2, reduce),
            -1.3 * bin_pool(projected, 4, reduce),
        ],
        dim=1,
    )
    torch.testing.assert_close(head(x), expected)


def test_pyramid_starts_as_the_avg_head() -> None:
    """level_scale_init=0: before training, the finer levels contribute zeros; gradients reach the gains."""
    x = torch.randn(2, 8, 3, 5)
    head = PyramidPool()
    head.setup(8)
    out = head(x)
    torch.testing.assert_close(out[:, :8], AvgPool()(x))
    assert torch.count_nonzero(out[:, 8:]) == 0
    (out * torch.randn_like(out)).sum().backward()
    assert head.level_scales.grad is not None and head.level_scales.grad.abs().sum() > 0


def test_pyramid_needs_setup_with_a_projection() -> None:
    with pytest.raises(RuntimeError, match="setup"):
        PyramidPool(proj_channels=4)(torch.randn(1, 3, 2, 2))


def test_textbook_pyramid_grid_cells_match_block_means() -> None:
    """On a 4x6 map, level 2 cells are the means of 2x3 blocks (independent reshape reference)."""
    x = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    out = textbook_pyramid([1, 2])(x)
    blocks = x.reshape(2, 3, 2, 2, 2, 3).mean(dim=(3, 5))  # (B, C, 2, 2)
    torch.testing.assert_close(out[:, :3], x.mean(dim=(2, 3)))
    torch.testing.assert_close(out[:, 3:], blocks.flatten(1))


def test_textbook_pyramid_max_grid_cells_match_block_max() -> None:
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    out = textbook_pyramid([2], "max")(x)
    blocks = x.reshape(2, 3, 2, 2, 2, 2).amax(dim=(3, 5))
    torch.testing.assert_close(out, blocks.flatten(1))


def test_textbook_pyramid_on_1x1_map_repeats_the_value() -> None:
    x = torch.randn(2, 4, 1, 1)
    out = textbook_pyramid([1, 2])(x)
    torch.testing.assert_close(out[:, 4:], x.flatten(1).repeat_interleave(4, dim=1))


def test_gem_p1_is_average_and_large_p_approaches_max() -> None:
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(2)) + 0.1
    torch.testing.assert_close(GeMPool(p=1.0)(x), x.mean(dim=(2, 3)))
    expected = (x.pow(3).mean(dim=(2, 3))).pow(1 / 3)
    torch.testing.assert_close(GeMPool(p=3.0)(x), expected)
    assert (GeMPool(p=200.0)(x) - x.amax(dim=(2, 3))).abs().max() < 0.05


def test_gem_clamps_negative_activations_to_eps_before_the_power() -> None:
    """Features of a backbone without a final ReLU are partly negative: GeM clamps them to ``eps`` first,
    so the output stays finite (a negative mean under the 1/p root would be NaN)."""
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(3)) - 0.5
    assert (x < 0).any() and ((x.clamp(min=0) ** 3).mean(dim=(2, 3)) > 0).all()
    out = GeMPool(p=3.0, eps=1e-6)(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, x.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3))
    torch.testing.assert_close(GeMPool(p=2.5)(-x.abs()), torch.full((2, 3), 1e-6))  # all negative: eps


def test_gem_p_is_learned() -> None:
    head = GeMPool(p=3.0)
    head(torch.rand(1, 2, 3, 3)).sum().backward()
    assert head.p.grad is not None and head.p.grad.abs() > 0


def test_heads_backpropagate_on_non_square_maps() -> None:
    for name in ("avg", "max", "avgmax", "gem", "pyramid"):
        x = torch.randn(2, 4, 3, 7, requires_grad=True)
        head = pooling_from_config(name)
        head.setup(4)
        head(x.abs() + 0.1).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, name


@pytest.mark.parametrize("bad", ["abc", [0], [], [1, -2], [1.5], [True]])
def test_bad_levels_are_rejected(bad: object) -> None:
    with pytest.raises(ConfigError, match="pooling.levels"):
        validate_levels(bad)  # type: ignore[arg-type]
