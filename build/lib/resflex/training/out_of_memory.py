"""A run that runs out of memory says so in one line: the batch it was at, and the keys that lower it.

Why: an out-of-memory failure reached the user as a 60-line trace through Lightning, ending in
torch's paragraph on its caching allocator (``PYTORCH_CUDA_ALLOC_CONF``), while the fix is nearly
always one of the run's own keys: a smaller batch (gradient accumulation keeps the images per
step), mixed precision, no second scale-consistency view, smaller or fewer sizes. Evaluation meets
it first more often than training here: ``eval.resolutions=auto`` reaches 2x the training size,
four times the pixels per image. Neither torch nor Lightning maps the failure to such keys
(Lightning's ``BatchSizeFinder`` searches a batch size before a run; it does not explain a failure).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from resflex.errors import ConfigError, first_line
from resflex.runtime import WORKER_KILLED, format_bytes, out_of_memory_cause

#: where torch's CUDA message turns from what failed to advice on its allocator
_ADVICE = (
    "Including non-PyTorch memory",
    "Of the allocated memory",
    "If reserved",
    "See documentation",
    "Use PYTORCH",
)


#: what makes the sizes of an evaluation, or of a prediction, fewer or smaller
EVALUATION_SIZES = "smaller evaluation sizes ('eval.resolutions=[...]': auto reaches 2x the eval size)"
PREDICTION_SIZES = "a smaller predict.size (predict.max_side for predict.size=native)"


@dataclass(frozen=True)
class BatchSeen:
    """The last batch a module was handed: its shape, (B, C, H, W) for images or (B, seq_len) for
    NaFlex token sequences, and whether it was a training one."""

    shape: tuple[int, ...]
    training: bool

    @property
    def tokens(self) -> bool:
        return len(self.shape) == 2

    def describe(self) -> str:
        kind = "a training" if self.training else "an evaluation"
        if self.tokens:
            return f"{kind} batch of {self.shape[0]} images as up to {self.shape[1]} tokens each"
        if len(self.shape) != 4:
            return f"{kind} batch of {self.shape[0]}"
        return f"{kind} batch of {self.shape[0]} images at {self.shape[2]}x{self.shape[3]}"


def out_of_memory_error(error: BaseException, batch: BatchSeen | None, hint: str) -> ConfigError | None:
    """``error`` as a one-line :class:`ConfigError` when it is an out-of-memory failure (else None): the
    batch it happened at, the allocator's reason and ``hint`` (:func:`run_hint`, or a command's own)."""
    cause = out_of_memory_cause(error)
    if cause is None:
        return None
    where = f" at {batch.describe()}" if batch is not None else ""
    return ConfigError(f"out of memory{where} ({allocator_reason(cause)})", hint=hint)


@contextmanager
def out_of_memory_as_one_line(
    batch: BatchSeen | Callable[[], BatchSeen | None], hint: Callable[[BatchSeen | None], str]
) -> Iterator[None]:
    """An out-of-memory failure inside the block becomes :func:`out_of_memory_error`'s one line, the
    allocator's error as its cause; any other error passes as it is. ``batch``: the batch it was at
    (or a function that reads it after the failure); ``hint``: the command's keys for that batch."""
    try:
        yield
    except Exception as exc:
        seen = batch if isinstance(batch, BatchSeen) else batch()
        memory = out_of_memory_error(exc, seen, hint(seen)) if out_of_memory_cause(exc) else None
        if memory is None:
            raise
        raise memory from exc


def _key(cfg: Mapping[str, Any], dotted: str) -> Any:
    """``cfg``'s value at ``dotted`` (a.b.c), or None: read as a mapping, so that the benchmark, which runs
    where Hydra and OmegaConf are not installed, can import the training module that imports this."""
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def run_hint(cfg: Mapping[str, Any], batch: BatchSeen | None, precision: str | None) -> str:
    """A training run's hint for ``batch``: :func:`training_hint`, or for an evaluation batch
    :func:`evaluation_hint` with the run's evaluation batch size. ``precision``: the trainer's on a
    GPU, as it resolved ``trainer.precision=auto`` (None on the CPU, where mixed precision saves
    little memory)."""
    tokens = batch is not None and batch.tokens
    if batch is None or batch.training:
        return training_hint(cfg, precision, tokens)
    size = _key(cfg, "data.eval_batch_size")
    size = size if isinstance(size, int) else _key(cfg, "data.batch_size")
    sizes = "fewer or shorter eval.seq_lens" if tokens else EVALUATION_SIZES
    return evaluation_hint("data.eval_batch_size", size if isinstance(size, int) else None, sizes)


def allocator_reason(cause: BaseException) -> str:
    """What failed, in the allocator's words, without its source location or allocator advice: "CUDA out
    of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which 1.06 GiB is
    free."; "DefaultCPUAllocator: can't allocate memory: you tried to allocate 12.0 GiB."."""
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", "", " ".join(str(cause).split()))
    if WORKER_KILLED in text:  # the kernel's out-of-memory killer took a loader worker
        return f"{text.rstrip('. ')}: the system's out-of-memory killer, most likely"
    text = re.sub(r"(\d+) bytes", lambda m: format_bytes(int(m.group(1))), text)
    sentences: list[str] = []
    for sentence in re.split(r"(?<=\.)\s+", text):
        if sentence.startswith(_ADVICE) or sentence.startswith("Error code") or len(sentences) == 3:
            break
        sentences.append(sentence)
    reason = " ".join(sentences) or first_line(cause)
    return reason if len(reason) <= 200 else reason[:197] + "..."


def training_hint(cfg: Mapping[str, Any], precision: str | None, tokens: bool = False) -> str:
    """Half the batch with twice the accumulation (the same images per optimizer step; a NaFlex run's
    batch is its token budget, ``resolution.tokens_per_batch``, when set), mixed precision when the run
    computes on a GPU in full precision, the scale-consistency view off when it is on, a smaller size
    (a shorter longest sequence for NaFlex)."""
    budget = _key(cfg, "resolution.tokens_per_batch") if tokens else None
    key, batch_size = (
        ("resolution.tokens_per_batch", budget)
        if isinstance(budget, int)
        else ("data.batch_size", _key(cfg, "data.batch_size"))
    )
    accumulate = _key(cfg, "trainer.accumulate_grad_batches") or 1
    steps = []
    if isinstance(batch_size, int) and batch_size > 1:
        steps.append(
            f"{key}={batch_size // 2} trainer.accumulate_grad_batches={2 * int(accumulate)} "
            "(the same images per step)"
        )
    if precision in ("32", "32-true", "64", "64-true"):
        steps.append("trainer.precision=bf16-mixed (16-mixed on a GPU without bf16)")
    if _key(cfg, "model.scale_consistency") and not tokens:  # NaFlex runs have no second view
        steps.append("model.scale_consistency=0 (its second view of each batch)")
    steps.append("a smaller resolution.max_seq_len" if tokens else "a smaller resolution.size")
    return ", ".join(steps[:-1]) + f", or {steps[-1]}" if len(steps) > 1 else steps[0]


def evaluation_hint(batch_key: str, batch_size: int | None, sizes: str = EVALUATION_SIZES) -> str:
    """Half the evaluation batch (``batch_key``: the command's key for it), or ``sizes``: what makes
    the command's sizes fewer or smaller."""
    smaller = f"{batch_key}={batch_size // 2}, or " if batch_size is not None and batch_size > 1 else ""
    return f"{smaller}{sizes}"
