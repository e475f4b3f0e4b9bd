"""A batch that cannot fit the machine, refused before any work: a lower bound on its memory.

``resolution.size=10000`` (a typo for 100, or a size from another project) used to run for a
minute while loader workers resized images to 10000x10000, until the kernel killed the process
with no word, or, in ``eval.py``, killed a loader worker and left the process hanging after a
40-line trace. torch's allocator cannot help: the workers and the kernel's out-of-memory killer
act before any allocation fails in the main process.

The bound is the largest single activation of the model, found on the ``meta`` device (shapes, no
memory), plus the input, times the batch. Any forward holds at least that much at once, whatever
autograd keeps, so a batch whose bound exceeds the device's whole memory cannot run: the refusal
is never a guess. Training keeps most activations for the backward pass: their sum (leaf modules'
outputs, in-place ones not counted twice) over the device's memory is a warning, not a refusal,
since it is an estimate (a frozen backbone keeps few). Neither torch nor Lightning has such a
check; ``torch.cuda.mem_get_info`` only says what is free now.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import torch
from torch import nn

from resflex.errors import ConfigError
from resflex.runtime import format_bytes
from resflex.types import Size

log = logging.getLogger(__name__)


class Activations(NamedTuple):
    """Elements of one image's activations: the largest leaf output, and all leaf outputs together."""

    largest: int
    total: int


def activations(model: nn.Module, size: Size) -> Activations:
    """The leaf modules' outputs of ``model`` (built on the meta device) for one ``size`` image (an
    in-place module's output is its input: not counted again); zeros when the meta forward cannot run
    (the shape checks report why)."""
    largest = total = 0

    def record(module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal largest, total
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel())
            total += 0 if getattr(module, "inplace", False) else output.numel()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.empty(1, 3, *size, device="meta"))
    except Exception:  # the meta device's limits, or a size the model refuses: not this check's to say
        return Activations(0, 0)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return Activations(largest, total)


def device_memory(accelerator: str) -> tuple[int, str] | None:
    """(bytes, what they are) of the memory a run on ``accelerator`` computes in: the first GPU's
    (``gpu``/``cuda``, or ``auto`` where one is visible), else the machine's; None where unknown."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            return None
        total = torch.cuda.get_device_properties(0).total_memory
        return total, f"the GPU's {format_bytes(total, 1)}"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None
    return total, f"this machine's {format_bytes(total, 1)} of memory"


def element_bytes(precision: object) -> int:
    """Bytes per activation at a Lightning ``precision``: 2 for (b)f16 mixed or true, else 4. Mixed
    precision keeps some activations in float32: 2 keeps the bound a lower one."""
    return 2 if "16" in str(precision) else 4


def check_batch_fits(
    model: nn.Module,
    size: Size,
    batch: int,
    key: str,
    batch_key: str,
    memory: tuple[int, str] | None,
    element_bytes: int = 4,
    training: bool = False,
) -> None:
    """Refuse, in one line naming ``key`` and ``batch_key``, a batch of ``batch`` images at ``size``
    whose lower bound (the module docstring) exceeds ``memory``; for a ``training`` batch, warn when
    the activations training keeps would."""
    if memory is None or batch < 1:
        return
    available, where = memory
    h, w = size
    found = activations(model, size)
    need = batch * (found.largest + 3 * h * w) * element_bytes
    hint = f"a smaller {key}, or a smaller {batch_key}"
    if need > available:
        images = f"{batch} image{'s' if batch != 1 else ''}"
        raise ConfigError(
            f"{key}={h}x{w}: a batch of {images} needs at least {format_bytes(need, 1)} at its largest "
            f"layer alone, more than {where}",
            hint=hint,
        )
    kept = batch * found.total * element_bytes
    if training and kept > available:
        log.warning(
            "%s=%dx%d: training a batch of %d images keeps about %s of activations for the backward pass, "
            "more than %s: it will likely run out of memory (hint: %s)",
            key,
            h,
            w,
            batch,
            format_bytes(kept, 1),
            where,
            hint,
        )
