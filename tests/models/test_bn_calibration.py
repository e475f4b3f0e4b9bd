"""BatchNorm statistics per input size: calibration equals a hand-computed estimate, swapping is exact."""

from __future__ import annotations

import torch
from torch import nn

from resflex.models.bn_calibration import (
    TrackedSizeStats,
    calibrate,
    calibrate_sizes,
    read_stats,
    side_of,
    write_stats,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_calibrate_is_the_exact_mean_and_unbiased_variance_of_the_batches() -> None:
    net = _net().eval()
    weights = {
        k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k
    }
    batches = [torch.randn(4, 3, 8, 8) * 3 + 1 for _ in range(3)]
    stats = calibrate(net, batches)
    features = torch.cat([net[0](x) for x in batches])  # what the BN layer sees
    per_channel = features.transpose(0, 1).reshape(4, -1)
    # update_bn: cumulative average of each batch's mean and unbiased variance
    means = torch.stack([net[0](x).transpose(0, 1).reshape(4, -1).mean(1) for x in batches]).mean(0)
    variances = torch.stack([net[0](x).transpose(0, 1).reshape(4, -1).var(1) for x in batches]).mean(0)
    assert torch.allclose(stats["1.running_mean"], means, atol=1e-5)
    assert torch.allclose(stats["1.running_var"], variances, atol=1e-4)
    assert torch.allclose(stats["1.running_mean"], per_channel.mean(1), atol=1e-5)
    assert not net.training  # mode restored
    for key, value in weights.items():  # weights untouched
        assert torch.equal(net.state_dict()[key], value)


def test_calibrate_sizes_restores_the_models_own_statistics_and_differs_per_size() -> None:
    net = _net()
    before = read_stats(net)
    table = calibrate_sizes(
        net, [(4, 4), (16, 16)], lambda s: [torch.randn(4, 3, *s) + s[0] / 4], max_batches=2
    )
    after = read_stats(net)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.allclose(table[(4, 4)]["1.running_mean"], table[(16, 16)]["1.running_mean"])


def test_per_size_stats_load_the_nearest_calibrated_size() -> None:
    net = _net()
    small = {k: torch.full_like(v, 1.0) for k, v in read_stats(net).items()}
    large = {k: torch.full_like(v, 2.0) for k, v in read_stats(net).items()}
    swapper = TrackedSizeStats(net, main=64)
    swapper.load_state({"32": small, "64": large})
    assert swapper.use(40) == 32
    assert torch.equal(net[1].running_mean, torch.ones(4))
    assert swapper.use(128) == 64
    assert torch.equal(net[1].running_var, torch.full((4,), 2.0))
    assert swapper.nearest(46) == 64  # log scale: the midpoint is 45.3
    swapper.load_state({"32": small, "128": large})
    assert swapper.nearest(64) == 128  # exactly between 32 and 128 in log scale: the larger size
    assert swapper.nearest(63.9) == 32
    write_stats(net, small)
    assert torch.equal(net[1].running_mean, torch.ones(4))


def test_batches_of_one_image_are_skipped() -> None:
    net = _net()
    stats = calibrate(net, [torch.randn(1, 3, 8, 8), torch.randn(4, 3, 8, 8)])
    assert torch.isfinite(stats["1.running_var"]).all()


def test_a_size_is_keyed_by_its_side_or_the_side_of_the_square_of_equal_area() -> None:
    assert side_of((48, 48)) == 48
    assert side_of((32, 128)) == 64  # sqrt(32 * 128), not the short side
    assert side_of([40, 56]) == 47  # sqrt(2240) = 47.3
