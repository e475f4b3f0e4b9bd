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
from resflex.validation import check_value


class PoolingHead(nn.Module):
    """Contract: ``forward((B, C, h, w)) -> (B, out_features(C))`` for any h, w >= 1."""

    def out_features(self, in_channels: int) -> int:
        return in_channels

    def setup(self, in_channels: int) -> int:
        """Called once by the classifier with the backbone's width; heads with parameters that depend
        on it create them here. Returns :meth:`out_features`."""
        return self.out_features(in_channels)


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
        p = check_value("pooling.p", p, float, lambda v: v > 0, "a number > 0 (1: average; large: max)")
        self.p = nn.Parameter(torch.tensor(p), requires_grad=learn_p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.to(x.dtype)
        pooled = F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(p), 1)
        return pooled.pow(1.0 / p).flatten(1)


class PyramidPool(PoolingHead):
    """Spatial pyramid pooling (He et al., SPP-net), arranged so that it never does worse than avg.

    Output: the global average of the map (level 1, exactly the ``avg`` head's
    features) followed by, for each finer level ``l``, the projected map pooled
    into an l×l grid, scaled by a learnable per-level gain:
    ``D = C + P * sum(l*l for l in levels if l > 1)`` (``P = proj_channels``, or C
    without projection), whatever the input size. Order: level by level, each
    flattened channel-major.

    Why this shape and not the textbook concatenation of raw adaptive pools
    (measured in ``experiments/variable_size/``, resnet18 at 40 px, where the map is
    2×2): the textbook head fed 21×512 = 10,752 features to the classifier, most of
    them copies (a level-4 grid on a 2×2 map repeats each cell four times) and all
    but 512 tied to *where* the object is, which on data with objects anywhere
    trained 12 points worse than avg (0.165 vs 0.280, one seed). Here

    - the global average comes first and untouched, so the head starts from what
      the avg head sees;
    - finer levels first go through a 1×1 projection to ``proj_channels``
      (SPP-net and later heads reduce channels before pooling), 1/4 of the
      features per cell;
    - each finer level is multiplied by a learnable gain initialised at
      ``level_scale_init`` (LayerScale, Touvron et al. 2021): at initialisation
      the head *is* the avg head, and the positional levels earn their weight by
      gradient. ``proj_channels=null level_scale_init=null`` gives the textbook
      head back, feature for feature.

    A map smaller than a level's grid is upsampled by the adaptive pool (each
    cell repeats its nearest input value), so tiny inputs still work and a model
    trained small sees the same kind of features when tested large.
    """

    def __init__(
        self,
        levels: Sequence[int] = (1, 2, 4),
        pool_type: str = "avg",
        proj_channels: int | None = 128,
        level_scale_init: float | None = 0.0,
    ) -> None:
        super().__init__()
        self.levels = validate_levels(levels)
        if pool_type not in ("avg", "max"):
            raise ConfigError(f"pooling.pool_type must be 'avg' or 'max', got {pool_type!r}")
        if proj_channels is not None and (
            isinstance(proj_channels, bool) or not isinstance(proj_channels, int) or proj_channels < 1
        ):
            raise ConfigError(
                f"pooling.proj_channels must be a positive integer or null, got {proj_channels!r}"
            )
        if level_scale_init is not None:
            check_value(
                "pooling.level_scale_init", level_scale_init, float, lambda v: v >= 0, "a number >= 0 or null"
            )
        self.pool_type = pool_type
        self.proj_channels = proj_channels
        self.level_scale_init = level_scale_init
        self.fine_levels = tuple(level for level in self.levels if level > 1)
        self.global_pool = SelectAdaptivePool2d(output_size=1, pool_type=pool_type, flatten=True)
        self.pools = nn.ModuleList(
            SelectAdaptivePool2d(output_size=level, pool_type=pool_type, flatten=True)
            for level in self.fine_levels
        )
        self.proj: nn.Module = nn.Identity()
        self.level_scales = (
            nn.Parameter(torch.full((len(self.fine_levels),), float(level_scale_init)))
            if level_scale_init is not None
            else None
        )
        self.in_channels: int | None = None

    def setup(self, in_channels: int) -> int:
        """Create the projection for ``in_channels`` (the backbone's width); returns ``out_features``."""
        self.in_channels = in_channels
        if self.proj_channels is not None and self.fine_levels:
            self.proj = nn.Sequential(
                nn.Conv2d(in_channels, self.proj_channels, 1, bias=False),
                nn.BatchNorm2d(self.proj_channels),
                nn.ReLU(inplace=True),
            )
        return self.out_features(in_channels)

    def out_features(self, in_channels: int) -> int:
        per_cell = self.proj_channels if self.proj_channels is not None else in_channels
        global_features = in_channels if 1 in self.levels else 0
        return global_features + per_cell * sum(level * level for level in self.fine_levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.global_pool(x)] if 1 in self.levels else []
        if self.fine_levels:
            if self.proj_channels is not None and self.in_channels is None:
                raise RuntimeError("PyramidPool.setup(in_channels) must be called before forward")
            projected = self.proj(x)
            for k, pool in enumerate(self.pools):
                level = pool(projected)
                parts.append(level * self.level_scales[k] if self.level_scales is not None else level)
        return torch.cat(parts, dim=1)

    def extra_repr(self) -> str:
        return (
            f"levels={self.levels}, pool_type={self.pool_type!r}, proj_channels={self.proj_channels}, "
            f"level_scale_init={self.level_scale_init}"
        )


def validate_levels(levels: Sequence[int] | int) -> tuple[int, ...]:
    """Check ``pooling.levels``: a non-empty list of positive integers."""
    if isinstance(levels, int) and not isinstance(levels, bool):
        levels = [levels]
    try:
        values = None if isinstance(levels, bool) else list(levels)  # not a list, as list(True) says
    except TypeError:
        values = None
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ConfigError(
            f"pooling.levels must be a non-empty list of positive integers, got {levels!r}",
            hint="e.g. pooling.levels=[1,2,4]",
        )
    return tuple(values)
