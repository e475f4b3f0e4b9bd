"""Pooling heads: turn a (B, C, h, w) feature map of *any* size into a (B, D) vector.

Every head reports ``out_features(in_channels)`` so the classifier can size its
linear layer before seeing data, and every head works on 1×1, odd and
non-square maps (adaptive pooling never needs h or w to divide anything).

Average, max and avg+max reuse timm's ``SelectAdaptivePool2d`` (flattening is
handled there, in one place). timm has no generalised-mean or spatial-pyramid
layer, so :class:`GeMPool` and :class:`PyramidPool` are written here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from torch import nn

from resflex.errors import ConfigError


class PoolingHead(nn.Module):
    """Contract: ``forward((B, C, h, w)) -> (B, out_features(C))`` for any h, w >= 1."""

    def out_features(self, in_channels: int) -> int:
        return in_channels


class _TimmGlobalPool(PoolingHead):
    pool_type: str = "avg"

    def __init__(self) -> None:
        super().__init__()
        self.pool = SelectAdaptivePool2d(output_size=1, pool_type=self.pool_type, flatten=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"


class AvgPool(_TimmGlobalPool):
    """Global adaptive average pooling: the mean of each channel."""

    pool_type = "avg"


class MaxPool(_TimmGlobalPool):
    """Global adaptive max pooling: the strongest response of each channel, whatever the map size."""

    pool_type = "max"


class AvgMaxPool(_TimmGlobalPool):
    """Mean of average and max pooling (timm's ``avgmax``)."""

    pool_type = "avgmax"


class GeMPool(PoolingHead):
    """Generalised-mean pooling (Radenović et al.): ``mean(x^p)^(1/p)`` with a learnable ``p``.

    p=1 is average pooling and p→∞ approaches max pooling; learning p lets the
    head choose where between the two to sit. Written here because timm ships
    no GeM layer.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True) -> None:
        super().__init__()
        if p <= 0:
            raise ConfigError(f"pooling.p must be > 0, got {p}")
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learn_p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.to(x.dtype)
        pooled = F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(p), 1)
        return pooled.pow(1.0 / p).flatten(1)


class PyramidPool(PoolingHead):
    """Spatial pyramid pooling (He et al., SPP-net): adaptive pools at several grid sizes, concatenated.

    Level ``l`` pools the map into an l×l grid, so the output has
    ``C * sum(l*l for l in levels)`` features regardless of the input size. A
    map smaller than a level's grid is upsampled by the adaptive pool (each cell
    repeats its nearest input value), so tiny inputs still work. Output order:
    level by level, each flattened channel-major.
    """

    def __init__(self, levels: Sequence[int] = (1, 2, 4), pool_type: str = "avg") -> None:
        super().__init__()
        self.levels = validate_levels(levels)
        if pool_type not in ("avg", "max"):
            raise ConfigError(f"pooling.pool_type must be 'avg' or 'max', got {pool_type!r}")
        self.pool_type = pool_type
        self.pools = nn.ModuleList(
            SelectAdaptivePool2d(output_size=level, pool_type=pool_type, flatten=True)
            for level in self.levels
        )

    def out_features(self, in_channels: int) -> int:
        return in_channels * sum(level * level for level in self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([pool(x) for pool in self.pools], dim=1)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, pool_type={self.pool_type!r}"


def validate_levels(levels: Sequence[int] | int) -> tuple[int, ...]:
    """Check ``pooling.levels``: a non-empty list of positive integers."""
    if isinstance(levels, int) and not isinstance(levels, bool):
        levels = [levels]
    try:
        values = list(levels)
    except TypeError:
        values = None
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ConfigError(
            f"pooling.levels must be a non-empty list of positive integers, got {levels!r}",
            hint="e.g. pooling.levels=[1,2,4]",
        )
    return tuple(values)


POOLING_HEADS: dict[str, type[PoolingHead]] = {
    "avg": AvgPool,
    "max": MaxPool,
    "avgmax": AvgMaxPool,
    "gem": GeMPool,
    "pyramid": PyramidPool,
}


def create_pooling(name: str, **kwargs: object) -> PoolingHead:
    """Build a pooling head by name (``avg``, ``max``, ``avgmax``, ``gem``, ``pyramid``)."""
    try:
        cls = POOLING_HEADS[name]
    except KeyError:
        raise ConfigError(
            f"unknown pooling {name!r}", hint=f"choose one of: {', '.join(sorted(POOLING_HEADS))}"
        ) from None
    return cls(**kwargs)
