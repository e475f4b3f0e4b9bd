"""The exportable adaptive pooling equals PyTorch's (and timm's) for every map size against every grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from timm.layers.adaptive_avgmax_pool import adaptive_avgmax_pool2d, adaptive_catavgmax_pool2d

from resflex.models.adaptive_export import (
    ExportableAdaptivePool2d,
    adaptive_pool2d,
    exportable_functional_pools,
    make_exportable,
)
from tests.conftest import pooling_from_config

# smaller than, equal to and larger than the 2x2 / 4x4 grids; square and not; sides that do not divide
MAPS = [(1, 1), (1, 3), (2, 2), (3, 2), (4, 4), (5, 7), (7, 5), (9, 4), (16, 6), (13, 13)]
GRIDS = [1, 2, 3, 4, (2, 4), (3, 5)]
REFERENCE = {
    "avg": F.adaptive_avg_pool2d,
    "max": F.adaptive_max_pool2d,
    "avgmax": adaptive_avgmax_pool2d,
    "catavgmax": adaptive_catavgmax_pool2d,
}


@pytest.mark.parametrize("mode", list(REFERENCE))
def test_adaptive_pool2d_equals_eager_pytorch(mode: str) -> None:
    generator = torch.Generator().manual_seed(0)
    for h, w in MAPS:
        x = torch.randn(2, 5, h, w, generator=generator)
        for grid in GRIDS:
            expected = REFERENCE[mode](x, grid)
            got = adaptive_pool2d(x, grid, mode)
            assert got.shape == expected.shape, (mode, (h, w), grid)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=f"{mode} {h}x{w} -> {grid}")


def test_unbatched_input_and_bad_mode() -> None:
    x = torch.randn(3, 5, 7)
    torch.testing.assert_close(adaptive_pool2d(x, 2, "avg"), F.adaptive_avg_pool2d(x, 2), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        adaptive_pool2d(x, 2, "median")


@pytest.mark.parametrize("name", ["avg", "max", "avgmax", "gem", "pyramid"])
def test_make_exportable_swaps_only_the_pools(name: str) -> None:
    head = pooling_from_config(name)
    if hasattr(head, "setup"):
        head.setup(8)
    head.eval()
    for param_name, param in head.named_parameters():
        if "scale" in param_name:  # pyramid level gains start at 0: make the fine levels count
            param.data.fill_(1.0)
    swapped, replaced = make_exportable(head)
    assert all(
        not isinstance(m, SelectAdaptivePool2d) or isinstance(m.pool, ExportableAdaptivePool2d)
        for m in swapped.modules()
    )
    if name != "gem":  # GeM calls the functional pool (covered by exportable_functional_pools)
        assert replaced
    assert sorted(dict(head.named_parameters())) == sorted(dict(swapped.named_parameters()))
    for h, w in [(1, 1), (3, 2), (5, 7), (4, 4)]:
        x = torch.rand(2, 8, h, w)
        with torch.no_grad(), exportable_functional_pools():
            got = swapped(x)
        torch.testing.assert_close(got, head(x), rtol=0, atol=1e-5)
    assert F.adaptive_avg_pool2d.__module__ == "torch.nn.functional"  # restored after the context


def test_make_exportable_swaps_each_kind_of_pool_module_for_its_equal() -> None:
    """The pool modules a backbone may hold (torch's, timm's avg+max and concatenated avg,max): each
    replacement gives the original's output, channels included."""
    from timm.layers.adaptive_avgmax_pool import AdaptiveAvgMaxPool2d, AdaptiveCatAvgMaxPool2d

    for pool in (
        torch.nn.AdaptiveAvgPool2d((2, 3)),
        torch.nn.AdaptiveMaxPool2d(2),
        AdaptiveAvgMaxPool2d(2),
        AdaptiveCatAvgMaxPool2d(2),
    ):
        model = torch.nn.Sequential(torch.nn.Identity(), pool)
        swapped, replaced = make_exportable(model)
        assert replaced == ["1"] and isinstance(swapped[1], ExportableAdaptivePool2d), pool
        x = torch.randn(2, 4, 5, 7)
        torch.testing.assert_close(swapped(x), model(x), rtol=0, atol=1e-6, msg=repr(pool))
