"""Adaptive pooling that exports with dynamic height and width (ONNX, TorchScript, torch.export).

Why this module exists: ``F.adaptive_avg_pool2d`` / ``F.adaptive_max_pool2d`` with an
output larger than 1×1 have no shape-generic export. ONNX has only *global* pools;
the TorchScript-based ONNX exporter refuses them ("input size not accessible") and
the torch.export-based one decomposes them for the example's size, so the file runs
at other sizes and silently gives wrong numbers (or fails on an index). The spatial
pyramid head (``pooling=pyramid``) is exactly that case: 2×2 and 4×4 grids over maps
whose sides the grid does not divide.

The formulation here is the definition of adaptive pooling written with ops every
exporter handles for symbolic sizes. Output cell ``i`` of ``L`` along a side of
length ``n`` covers the bin ``[floor(i*n/L), ceil((i+1)*n/L))`` (PyTorch's rule; bins
overlap when L does not divide n, and repeat an input when n < L). The bins become a
boolean ``(L, n)`` mask built from ``arange`` arithmetic on the input's own shape,
and the pool is separable: rows first, then columns, each as

- average: the mask divided by its bin lengths is an averaging matrix; multiply and sum;
- max: ``where(mask, x, -inf)`` then ``amax``.

The operands are expanded explicitly rather than broadcast: torch.export guards a
size-1-against-symbolic broadcast with ``n != 1``, which would refuse every input whose
feature map is one cell wide (32×32 into a stride-32 network).

:func:`make_exportable` swaps the adaptive pool *modules* of a model (PyTorch's and
timm's) for :class:`ExportableAdaptivePool2d`, leaving everything around them (a
head's flattening, projections, scalings) untouched; :func:`exportable_functional_pools`
additionally routes direct ``F.adaptive_*_pool2d`` calls (GeM, backbone blocks)
through :func:`adaptive_pool2d` while a graph is captured. Outputs equal eager
PyTorch to float rounding (the tests compare for maps smaller than, equal to and
larger than the grid, non-square).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("avg", "max", "avgmax", "catavgmax")

M = TypeVar("M", bound=nn.Module)


def _pair(size: int | Sequence[int | None] | None) -> tuple[int, int]:
    """An output size as (h, w). torch's pools also take None for a side (keep the input's), which
    needs the input size: refused here."""
    if isinstance(size, int):
        return size, size
    h, w = size if size is not None else (None, None)
    if h is None or w is None:
        raise ValueError("adaptive pooling with a None output side (keep the input size) is not supported")
    return int(h), int(w)


def bin_mask(n: int, length: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``(length, n)``: row ``i`` marks the inputs of output cell ``i``; and each bin's length.

    ``n`` may be symbolic (a traced or exported size: a ``SymInt``, which torch's hints call ``int``,
    as they do ``Tensor.shape``'s sides, and its ops accept where they name ``int``). Built from one
    flat ``arange`` of ``length * n`` with integer divide, modulo and comparisons, then reshaped: no
    broadcasting of a size-1 dimension against a symbolic one, which torch.export
    would otherwise guard on (``n != 1``), refusing inputs whose feature map is 1 wide.
    """
    flat = torch.arange(length * n, device=device)
    cell = torch.div(flat, n, rounding_mode="floor")
    position = flat - cell * n
    start = torch.div(cell * n, length, rounding_mode="floor")
    end = torch.div((cell + 1) * n + (length - 1), length, rounding_mode="floor")
    mask = (position >= start) & (position < end)
    return mask.reshape(length, n), (end - start).reshape(length, n)


def _pool_rows(x: torch.Tensor, length: int, mode: str) -> torch.Tensor:
    """Adaptive pool along dim 2 of ``(B, C, n, W)`` -> ``(B, C, length, W)``.

    Every operand is expanded explicitly to ``(B, C, length, n, W)`` (``length`` is a
    constant) instead of broadcast, for the reason in :func:`bin_mask`.
    """
    b, c, n, w = x.shape
    mask, count = bin_mask(n, length, x.device)
    values = x.unsqueeze(2).expand(b, c, length, n, w)
    if mode == "avg":
        weights = (
            (mask.to(x.dtype) / count.to(x.dtype)).reshape(1, 1, length, n, 1).expand(b, c, length, n, w)
        )
        return (values * weights).sum(dim=3)
    keep = mask.reshape(1, 1, length, n, 1).expand(b, c, length, n, w)
    return torch.where(keep, values, float("-inf")).amax(dim=3)


def _pool(x: torch.Tensor, lh: int, lw: int, mode: str) -> torch.Tensor:
    if lh == 1 and lw == 1:
        return x.mean(dim=(-2, -1), keepdim=True) if mode == "avg" else x.amax(dim=(-2, -1), keepdim=True)
    rows = _pool_rows(x, lh, mode)  # (B, C, lh, w)
    return _pool_rows(rows.transpose(2, 3), lw, mode).transpose(2, 3)  # (B, C, lh, lw)


def adaptive_pool2d(
    x: torch.Tensor, output_size: int | tuple[int, int] | list[int], mode: str = "avg"
) -> torch.Tensor:
    """``F.adaptive_{avg,max}_pool2d`` (and timm's ``avgmax``/``catavgmax``) in exportable ops.

    ``x`` is ``(B, C, h, w)`` (or ``(C, h, w)``); the result is ``(B, C', lh, lw)`` with
    ``C' = 2C`` for ``catavgmax``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    unbatched = x.ndim == 3
    if unbatched:
        x = x.unsqueeze(0)
    lh, lw = _pair(output_size)
    if mode in ("avg", "max"):
        out = _pool(x, lh, lw, mode)
    elif mode == "avgmax":
        out = 0.5 * (_pool(x, lh, lw, "avg") + _pool(x, lh, lw, "max"))
    else:
        out = torch.cat([_pool(x, lh, lw, "avg"), _pool(x, lh, lw, "max")], dim=1)
    return out.squeeze(0) if unbatched else out


class ExportableAdaptivePool2d(nn.Module):
    """Drop-in for ``nn.AdaptiveAvgPool2d``/``nn.AdaptiveMaxPool2d`` and timm's avg+max pools."""

    def __init__(self, output_size: int | Sequence[int | None] | None, mode: str = "avg") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.output_size = _pair(output_size)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_pool2d(x, self.output_size, self.mode)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, mode={self.mode!r}"


def _replacement(module: nn.Module) -> ExportableAdaptivePool2d | None:
    """The exportable equivalent of an adaptive pool module, or None for anything else."""
    from timm.layers.adaptive_avgmax_pool import AdaptiveAvgMaxPool2d, AdaptiveCatAvgMaxPool2d

    if isinstance(module, nn.AdaptiveAvgPool2d):
        return ExportableAdaptivePool2d(module.output_size, "avg")
    if isinstance(module, nn.AdaptiveMaxPool2d):
        if module.return_indices:
            return None
        return ExportableAdaptivePool2d(module.output_size, "max")
    if isinstance(module, AdaptiveCatAvgMaxPool2d):
        return ExportableAdaptivePool2d(module.output_size, "catavgmax")
    if isinstance(module, AdaptiveAvgMaxPool2d):
        return ExportableAdaptivePool2d(module.output_size, "avgmax")
    return None


def make_exportable(model: M, inplace: bool = False) -> tuple[M, list[str]]:
    """A copy of ``model`` (or ``model`` itself with ``inplace``) whose adaptive pool modules are exportable.

    Only the pooling operators are replaced (a pyramid head's levels, timm's
    ``SelectAdaptivePool2d`` internals, any ``nn.AdaptiveAvgPool2d`` in a backbone);
    parameters, buffers and every other module stay as they are. Returns the
    model and the qualified names of the modules replaced.
    """
    target = model if inplace else copy.deepcopy(model)
    replaced: list[str] = []
    for parent_name, parent in list(target.named_modules()):
        for child_name, child in list(parent.named_children()):
            new = _replacement(child)
            if new is not None:
                setattr(parent, child_name, new)
                replaced.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    return target, replaced


@contextmanager
def exportable_functional_pools() -> Iterator[None]:
    """While a graph is captured, ``F.adaptive_{avg,max}_pool2d`` go to :func:`adaptive_pool2d`.

    Covers pools called as functions rather than modules (GeM's mean of ``x^p``,
    squeeze-excite blocks). The originals are restored on exit; calls the
    replacement cannot serve (``return_indices=True``, a ``None`` side) go to them.
    """
    original_avg, original_max = F.adaptive_avg_pool2d, F.adaptive_max_pool2d

    def avg(input: torch.Tensor, output_size: Any) -> torch.Tensor:
        try:
            size = _pair(output_size)
        except (TypeError, ValueError):
            return original_avg(input, output_size)
        return adaptive_pool2d(input, size, "avg")

    def max_(input: torch.Tensor, output_size: Any, return_indices: bool = False) -> Any:
        if return_indices:
            return original_max(input, output_size, return_indices)
        try:
            size = _pair(output_size)
        except (TypeError, ValueError):
            return original_max(input, output_size)
        return adaptive_pool2d(input, size, "max")

    F.adaptive_avg_pool2d, F.adaptive_max_pool2d = avg, max_
    try:
        yield
    finally:
        F.adaptive_avg_pool2d, F.adaptive_max_pool2d = original_avg, original_max
