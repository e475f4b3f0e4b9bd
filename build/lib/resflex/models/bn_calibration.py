"""BatchNorm statistics for one input size: recompute the running mean/var from images at that size.

A CNN's BatchNorm running statistics are averages over the training batches,
so they describe the sizes it was trained at. Deep feature statistics depend
on the input size (border padding, how much of the receptive field an object
fills), so at another size the network normalises with the wrong numbers;
with a size per batch the running averages are a blend that fits no size
exactly. Re-estimating them at the test size from a few hundred unlabelled
training images, weights untouched, recovers much of the gap (FixRes, Touvron
et al. 2019, §3; "test-time BN calibration" of RS-Nets, Wang et al. 2020).

The estimate itself is ``torch.optim.swa_utils.update_bn`` (a cumulative
average over the batches given, running stats reset first); this module only
feeds it normalised images at one size and keeps the statistics of several
sizes apart, so one set of weights carries a small table of per-size
statistics (:class:`TrackedSizeStats`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import islice

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from resflex.compat import BatchNorm
from resflex.types import Size, as_size

#: the state of one size: every BatchNorm's running mean and variance, by buffer name
SizeStats = dict[str, torch.Tensor]
#: checkpoint key of the per-size BatchNorm statistics (``model.bn_stats_per_size``)
BN_STATS_KEY = "bn_size_stats"


def side_of(size: Sequence[int]) -> int:
    """One number per size for the per-size statistics: the side, or sqrt(h*w) when not square."""
    h, w = int(size[0]), int(size[1])
    return h if h == w else round(math.sqrt(h * w))


def batchnorm_layers(model: nn.Module) -> dict[str, BatchNorm]:
    """Every BatchNorm layer that tracks running statistics, by its name in ``model``."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, BatchNorm) and module.track_running_stats
    }


def has_batchnorm(model: nn.Module) -> bool:
    return bool(batchnorm_layers(model))


def read_stats(model: nn.Module) -> SizeStats:
    """A copy of every BatchNorm's running mean and variance."""
    stats: SizeStats = {}
    for name, layer in batchnorm_layers(model).items():
        assert layer.running_mean is not None and layer.running_var is not None
        stats[f"{name}.running_mean"] = layer.running_mean.detach().clone()
        stats[f"{name}.running_var"] = layer.running_var.detach().clone()
    return stats


def write_stats(model: nn.Module, stats: Mapping[str, torch.Tensor]) -> None:
    """Put ``stats`` (from :func:`read_stats`) into ``model``'s BatchNorm layers, in place."""
    for name, layer in batchnorm_layers(model).items():
        assert layer.running_mean is not None and layer.running_var is not None
        layer.running_mean.copy_(stats[f"{name}.running_mean"])
        layer.running_var.copy_(stats[f"{name}.running_var"])


@torch.no_grad()
def calibrate(model: nn.Module, images: Iterable[torch.Tensor], max_batches: int | None = None) -> SizeStats:
    """Re-estimate ``model``'s BatchNorm statistics from ``images`` (normalised batches); returns them.

    The weights are not touched; the model's train/eval mode is restored. Batches of one
    image are skipped (BatchNorm cannot estimate a variance from them in train mode).
    """
    batches = (x for x in islice(images, max_batches) if x.shape[0] > 1)
    update_bn(batches, model)
    return read_stats(model)


def calibrate_sizes(
    model: nn.Module,
    sizes: Iterable[Size],
    batches_at: Callable[[Size], Iterable[torch.Tensor]],
    max_batches: int,
) -> dict[Size, SizeStats]:
    """Statistics for each of ``sizes`` from ``batches_at(size)``; the model's own are restored after."""
    original = read_stats(model)
    table = {as_size(size): calibrate(model, batches_at(size), max_batches) for size in sizes}
    write_stats(model, original)
    return table


class TrackedSizeStats:
    """BatchNorm running statistics kept apart per training size, at no extra compute.

    During training, each batch is normalised with its own batch statistics, so
    the weights learn to expect features normalised *for the batch's size*; one
    set of running averages over a size per batch is a blend that fits none of
    them. Here each scheduled size gets its own running averages: before a
    training step the model's BatchNorm buffers are loaded with that size's
    statistics (:meth:`before_step`), after it they are stored back
    (:meth:`after_step`) — a copy of a few thousand numbers per step. For
    evaluation or inference at any size, :meth:`use` loads the statistics of
    the nearest tracked size (log scale of the side). The weights stay one set;
    only these averages are per size (as in RS-Nets' private BatchNorm, Wang et
    al. 2020, without private affine parameters).

    Sizes are keyed by their side (``int``): the scheduled size of a step (a
    keep_aspect bucket shares its scheduled size's statistics).
    """

    def __init__(self, model: nn.Module, main: int | None = None) -> None:
        self.model = model
        self.main = main
        self.table: dict[int, SizeStats] = {}
        self.loaded: int | None = None

    def before_step(self, side: int) -> None:
        """Load ``side``'s statistics for a training step (a new size starts from the current ones)."""
        if side in self.table and self.loaded != side:
            write_stats(self.model, self.table[side])
        self.loaded = side

    def after_step(self, side: int) -> None:
        """Keep the statistics the training step just updated as ``side``'s."""
        self.table[side] = read_stats(self.model)
        self.loaded = side

    def nearest(self, side: float) -> int | None:
        if not self.table:
            return None
        return min(self.table, key=lambda s: (abs(math.log(s / side)), -s))

    def use(self, side: float) -> int | None:
        """Load the statistics of the tracked size nearest to ``side``; returns it (None: none tracked)."""
        chosen = self.nearest(side)
        if chosen is not None and chosen != self.loaded:
            write_stats(self.model, self.table[chosen])
            self.loaded = chosen
        return chosen

    def use_main(self) -> None:
        """Load the main (evaluation) size's statistics: what checkpoints and plain users get."""
        if self.main is not None:
            self.use(self.main)

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The table for a checkpoint: ``{"64": {buffer: tensor}}`` (tensors only: weights_only loads)."""
        return {
            str(side): {k: v.detach().cpu() for k, v in stats.items()} for side, stats in self.table.items()
        }

    def load_state(self, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        device = next((b.device for b in self.model.buffers()), torch.device("cpu"))
        self.table = {int(side): {k: v.to(device) for k, v in stats.items()} for side, stats in state.items()}
        self.loaded = None
