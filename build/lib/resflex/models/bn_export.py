"""Per-size BatchNorm statistics inside an exported graph, chosen by the input's own size.

Why this module exists: a calibrated run (``eval.bn_calibration``, the default) keeps a small
table of BatchNorm statistics per evaluation size, and :class:`resflex.inference.ResflexClassifier`
swaps them in Python before each forward (the statistics of the tracked size nearest to the
input, :class:`resflex.models.bn_calibration.TrackedSizeStats`). An exported graph has no Python
to run, and no exporter has a notion of "buffers chosen by the input shape", so a graph that
carried one set would equal ``load_classifier`` at the main size only (measured: logits off by 3
at other sizes). Here the choice itself becomes graph ops every exporter handles with symbolic
sizes (ONNX, TorchScript tracing, ``torch.export``):

- :class:`SizeChoice` reads the image's height and width as tensors (a sum of ones along a row
  and a column: no shape-to-int conversion, which would freeze the example's size), forms the
  side the eager model keys its statistics by (a keep_aspect bucket's short side, else the side of
  the square of equal area, rounded) and counts the boundaries it is at or above. With the tracked
  sides sorted, ``s_i`` and ``s_{i+1}`` meet at their geometric mean, and ``side² >= s_i * s_{i+1}``
  is exact integer arithmetic, ties going to the larger side as in ``TrackedSizeStats.nearest``;
- every BatchNorm layer's class is swapped for a subclass whose ``running_mean`` / ``running_var``
  are the rows of its ``(sizes, channels)`` tables at that index. The layer's own ``forward``
  (``nn.BatchNorm2d``'s, timm's ``BatchNormAct2d``'s with its activation) runs unchanged.

The index travels from the top-level forward to the layers through a plain Python holder (not a
module attribute, which ``torch.export`` refuses to see reassigned during a forward); it is
cleared after each call.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from resflex.models.bn_calibration import SizeStats, batchnorm_layers


class _IndexHolder:
    """The current forward's size index: set by :class:`SizeChoice`, read by the layers."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None


def _selected(table_name: str) -> property:
    def get(self: SizeSelected) -> torch.Tensor:
        holder = self.size_index_holder
        table: torch.Tensor = getattr(self, table_name)
        if holder is None or holder.index is None:  # outside SizeChoice's forward (a state_dict walk)
            return table[self.size_main_row]  # the main size
        return torch.index_select(table, 0, holder.index).reshape(table.shape[1:])

    return property(get)


class SizeSelected:
    """What a BatchNorm layer becomes in :func:`with_size_selected_stats`: mixed in before its own
    class (:func:`_size_selected_class`), so ``running_mean`` / ``running_var`` are table rows."""

    #: (sizes, channels): a row per tracked side (buffers)
    size_mean_table: torch.Tensor
    size_var_table: torch.Tensor
    #: the row outside a forward
    size_main_row: int
    #: :class:`SizeChoice`'s holder of the current forward's row
    size_index_holder: _IndexHolder | None
    running_mean = _selected("size_mean_table")
    running_var = _selected("size_var_table")


def _size_selected_class(cls: type) -> type:
    """A subclass of the layer's class whose running statistics are table rows (one per class)."""
    return type(f"SizeSelected{cls.__name__}", (SizeSelected, cls), {})


class SizeChoice(nn.Module):
    """Wraps a model whose BatchNorm layers carry per-size tables; picks the row per input in-graph.

    ``sides``: the tracked sides (any order); ``short_side``: key by ``min(h, w)`` (keep_aspect
    buckets of the short-side kind) instead of ``round(sqrt(h * w))``.
    """

    bounds: torch.Tensor  # buffer: the products of neighbouring sides, where the choice changes

    def __init__(self, model: nn.Module, sides: list[int], short_side: bool) -> None:
        super().__init__()
        self.model = model
        self.sides = sorted(int(s) for s in sides)
        self.short_side = short_side
        bounds = [float(a * b) for a, b in zip(self.sides, self.sides[1:], strict=False)]
        self.register_buffer("bounds", torch.tensor(bounds, dtype=torch.float64))
        self.holder = _IndexHolder()
        for layer in model.modules():
            if isinstance(layer, SizeSelected):
                layer.size_index_holder = self.holder

    def size_index(self, x: torch.Tensor) -> torch.Tensor:
        """``(1,)`` int64: the row of the tracked side nearest to ``x``'s (log scale, ties larger)."""
        height = torch.ones_like(x[0, 0, :, 0], dtype=torch.float64).sum()
        width = torch.ones_like(x[0, 0, 0, :], dtype=torch.float64).sum()
        side = torch.minimum(height, width) if self.short_side else torch.round(torch.sqrt(height * width))
        return (side * side >= self.bounds).to(torch.int64).sum().reshape(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.holder.index = self.size_index(x)
        try:
            return self.model(x)
        finally:
            self.holder.index = None

    def extra_repr(self) -> str:
        return f"sides={self.sides}, short_side={self.short_side}"


def with_size_selected_stats(
    model: nn.Module,
    table: Mapping[int, SizeStats],
    main: int | None,
    short_side: bool,
    prefix: str = "",
) -> SizeChoice:
    """``model`` (changed in place: pass a copy) wrapped so that its BatchNorm statistics follow the
    input's size in any exported graph.

    ``table``: per tracked side, every BatchNorm buffer by its name in ``model`` below ``prefix``
    (``TrackedSizeStats.table``); ``main``: the side whose row is used outside a forward. Layers the
    table does not cover keep their own statistics.
    """
    sides = sorted(table)
    target = model
    main_row = sides.index(min(sides, key=lambda s: abs(s - main))) if main is not None else 0
    classes: dict[type, type] = {}
    for name, layer in batchnorm_layers(target).items():
        key = name[len(prefix) :] if prefix and name.startswith(prefix) else name
        if f"{key}.running_mean" not in table[sides[0]]:
            continue
        means = torch.stack([table[s][f"{key}.running_mean"] for s in sides]).to(layer.running_mean)
        variances = torch.stack([table[s][f"{key}.running_var"] for s in sides]).to(layer.running_var)
        delattr(layer, "running_mean")  # the buffers go; the class's properties read the tables
        delattr(layer, "running_var")
        cls = type(layer)
        layer.__class__ = classes.setdefault(cls, _size_selected_class(cls))
        assert isinstance(layer, SizeSelected)  # the class just set
        layer.register_buffer("size_mean_table", means)
        layer.register_buffer("size_var_table", variances)
        layer.size_main_row = main_row
        layer.size_index_holder = None
    return SizeChoice(target, sides, short_side)


def describe(model: nn.Module) -> str | None:
    """One phrase for the export's report: the sides whose statistics the graph carries (None: one set)."""
    if not isinstance(model, SizeChoice):
        return None
    sides = ", ".join(map(str, model.sides))
    return f"BatchNorm statistics of {len(model.sides)} sizes ({sides} px), each input gets its nearest"
