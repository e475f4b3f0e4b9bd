"""Rules about the machine a run lands on: precision, autocast, memory layout, host memory, library noise.

One home for each rule, imported by training, evaluation, prediction, export and
the benchmark alike. Hydra-free on purpose: the benchmark runs where hydra-core
is not installed (the GPU image), and it must apply the same rules as training.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

import torch

from resflex.errors import ConfigError, find_in_chain

if TYPE_CHECKING:
    from omegaconf import DictConfig


def check_precision(precision: Any, key: str = "precision") -> Any:
    """``precision`` when Lightning knows it (``32-true``, ``bf16-mixed``, ``16``, ...), else a one-line
    :class:`ConfigError` (evaluation runs outside a Trainer, which would have checked it)."""
    from resflex.compat import lightning_precisions

    known = ("auto", *lightning_precisions())
    if str(precision) not in known:
        raise ConfigError(
            f"{key}={precision!r} is not a precision", hint=f"{key}=auto, 32-true or bf16-mixed"
        )
    return precision


def resolve_precision(
    precision: Any, device: torch.device | str | None = None, key: str = "precision"
) -> Any:
    """``auto``: bf16 mixed precision on a GPU that supports it (fp16 mixed on older ones), fp32 elsewhere.

    ``device`` defaults to "a GPU if one is visible", which is where Lightning puts a run
    with ``trainer.accelerator=auto``.
    """
    if precision != "auto":
        return check_precision(precision, key)
    on_gpu = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def resolve_device(device: Any = "auto", key: str = "device") -> torch.device:
    """``auto``: the GPU if one is visible, else the CPU (where evaluation and prediction run by
    default); any other value is a torch device name (``cpu``, ``cuda:1``). A name torch does not know,
    or a GPU this machine does not have, is a one-line :class:`ConfigError` naming ``key``."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"{key}={device!r} is not a device", hint=f"{key}=auto, cpu, cuda or cuda:1"
        ) from None
    if resolved.type == "cuda" and (
        not torch.cuda.is_available() or (resolved.index or 0) >= torch.cuda.device_count()
    ):
        raise ConfigError(f"{key}={device}: this machine has no such CUDA device", hint=f"{key}=auto")
    return resolved


def resolve_channels_last(value: Any) -> bool:
    """``auto``: channels-last on a GPU (tensor cores want NHWC); on CPU the benchmark measured it slower."""
    if value == "auto":
        return torch.cuda.is_available()
    if not isinstance(value, bool):  # bool("no") is True
        raise ConfigError(
            f"model.channels_last must be auto, true or false, got {value!r}", hint="model.channels_last=auto"
        )
    return value


def autocast_for(precision: Any, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast Lightning's precision plugin would use for ``precision`` on ``device``.

    For code that runs the model outside a Trainer (evaluation, the benchmark), so the
    numbers match a training run's.
    """
    if str(precision).startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if str(precision).startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def quiet_library_noise() -> None:
    """Drop messages that are advertising or about choices resflex made on purpose.

    - "overridden on_after_batch_transfer": normalisation on the device is deliberate;
    - "isinstance(treespec, LeafSpec) is deprecated": torch internals seen through Lightning;
    - "Checkpoint directory exists and is not empty": resuming writes into the run's folder;
    - "validated against ConfigStore schema with the same name": the submitit launcher
      configs share the plugin's names so that its schema checks them;
    - "dataloader is not resumable" on a mid-epoch resume: resflex's batch sampler is (it continues
      the epoch at the saved step with the same sizes and samples: resflex.data.sampler);
    - Lightning's "💡" tips.
    """
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema with the same name")
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡")
    )


#: the first words of the allocators' failures that are not ``torch.OutOfMemoryError``
#: a data-loader worker killed by SIGKILL: on Linux the kernel's out-of-memory killer, almost always
#: (torch's words, from its SIGCHLD handler)
WORKER_KILLED = "is killed by signal: Killed"
ALLOCATION_FAILURES = (
    "DefaultCPUAllocator: can't allocate memory",
    "MPS backend out of memory",
    WORKER_KILLED,
)


def format_bytes(count: float, decimals: int = 2) -> str:
    """A byte count as torch's CUDA message writes sizes: in GiB from 1 GiB, else in MiB."""
    return f"{count / 2**30:.{decimals}f} GiB" if count >= 2**30 else f"{count / 2**20:.{decimals}f} MiB"


def out_of_memory_cause(error: BaseException | None) -> BaseException | None:
    """The allocator's failure in ``error``'s chain (``__cause__``/``__context__``), or None: CUDA's
    ``torch.OutOfMemoryError``, the CPU's and MPS's RuntimeError, or a loader worker the system killed
    (``... exited unexpectedly``, raised from ``... is killed by signal: Killed``)."""
    return find_in_chain(
        error,
        lambda e: (
            isinstance(e, torch.OutOfMemoryError)
            or (isinstance(e, RuntimeError) and any(words in str(e) for words in ALLOCATION_FAILURES))
        ),
    )


def release_memory() -> None:
    """Give back what a finished (or failed) job held, before the next job of a sweep starts."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


#: glibc ``mallopt`` parameters (``malloc.h``)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: blocks up to this size come from the heap (glibc's default threshold adapts up to 32 MiB)
RETAINED_BLOCK_BYTES = 1 << 30
#: free memory at the top of the heap is returned to the OS only beyond this (mallopt takes an int)
RETAINED_TOP_BYTES = (1 << 31) - 1
#: a user who set these chose malloc's behaviour; resflex leaves it alone
MALLOC_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def retain_freed_host_memory() -> bool:
    """Keep the host memory torch frees for the next batch instead of returning it to the OS
    (glibc's ``mallopt``); True when applied. For runs that compute on the CPU.

    Why: torch's CPU allocator has no cache of its own, and glibc serves a block above its mmap
    threshold (at most 32 MiB; most activations of a 512-image evaluation batch are larger) with a
    fresh ``mmap`` and unmaps it when freed, so every batch page-faults all of its memory in again,
    in the kernel. A one-epoch Fashion-MNIST run on the 2-core CPU (resnet18, 5,000 images at
    64 px, evaluated at 32-128 px; experiments/performance/README.md, "Host memory on CPU runs"):
    44.7 M page faults and 96 s of system time against 3.0 M and 11 s with this, 233 s of wall
    time against 122 s on a quiet machine, the same metrics. The price: freed blocks stay in the
    heap, and torch's aligned allocations fit a freed block of their own size only once neighbours
    have merged, so the heap grows for a few batches first: peak RSS 2.3 -> 3.7 GB there. The
    CUDA caching allocator makes the same trade for GPU memory. Not applied when the environment
    sets malloc's knobs (``MALLOC_*``, ``GLIBC_TUNABLES``: ``MALLOC_TRIM_THRESHOLD_=131072``
    restores glibc's default) or the C library is not glibc.
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in MALLOC_ENVIRONMENT):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, RETAINED_BLOCK_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, RETAINED_TOP_BYTES)
    )


def size_tag(h: int, w: int) -> str:
    """How a size is written in metric names and folders: ``64`` for a square, ``48x80`` otherwise."""
    return str(w) if h == w else f"{h}x{w}"


def hydra_node() -> DictConfig:
    """The running job's ``hydra`` node (``HydraConfig.get()``) as what it is: a ``DictConfig`` of the
    ``HydraConf`` schema. Hydra annotates it as the schema's dataclass; OmegaConf's functions
    (``select``, ``read_write``, ``to_container``) take the ``DictConfig``. Hydra is imported on the
    call: this module stays Hydra-free for the benchmark."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    node = HydraConfig.get()
    if not isinstance(node, DictConfig):
        raise TypeError(f"HydraConfig.get() gave a {type(node).__name__}, not a DictConfig")
    return node
