"""NaFlex token batches: every image patchified at its own aspect, batches sized to a token budget.

``resolution=naflex`` (:class:`NaFlexResolution`) replaces "one (h, w) per batch" by "one
sequence length per batch": each step draws a sequence length ``s`` from ``seq_lens`` (a pure
function of (seed, epoch, step), so every rank and a resumed run draw the same), takes
``tokens_per_batch // s`` images, resizes each one, keeping its aspect, to the largest size
whose patch grid has at most ``s`` patches (timm's ``get_image_size_for_seq``), patchifies it
(timm's ``patchify_image``) and pads the batch's sequences to the longest one, with a validity
mask. Evaluation uses ``max_seq_len`` (plus ``eval_seq_lens``).

What is timm's and what is here:

- timm (``timm.data.naflex_*``): the size for a sequence length, patchify, the model
  (:mod:`resflex.models.naflex`). Used as they are.
- here: the batch plan and the collation. timm's ``NaFlexMapDatasetWrapper`` is an iterable
  dataset that owns shuffling, DDP sharding, the sequence-length schedule and the transforms
  (drawn from Python's global ``random``, so not reproducible per sample); it cannot resume
  mid-epoch, and its schedule is a per-epoch shuffle of a canonical list, so a step's
  sequence length cannot be asked for on its own. resflex's :class:`ResolutionBatchSampler`
  already plans epochs as a pure function of (seed, epoch, step) with variable batch sizes,
  DDP sharding and resume; :class:`NaFlexBatchSampler` only adds each image's own (h, w) to
  its requests, and :func:`collate_tokens` pads and masks. Images stay uint8 until the
  LightningModule normalises the patches on the device, as for image batches.

The step's sequence length plays the role of the size in the rest of resflex: the plan's
size is ``(s, s)``, so ``train/resolution`` and the ``@<n>`` metric tags read as tokens per
image for a NaFlex run.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple, TypeGuard

import torch
from timm.data.naflex_transforms import get_image_size_for_seq, patchify_image
from torch.utils.data import Dataset

from resflex.data.resolution import RandomResolution
from resflex.data.sampler import ResolutionBatchSampler
from resflex.data.schedule import check_int
from resflex.errors import ConfigError
from resflex.types import Size, TokenBatch

if TYPE_CHECKING:  # the data module's dataset, which imports this module's neighbours
    from resflex.data.sized_dataset import SizedDataset

LOSS_SCALES = ("none", "linear", "sqrt")


def image_size_for_seq(width: int, height: int, patch_size: int, seq_len: int) -> Size:
    """(h, w) for an image of ``width`` x ``height``: its aspect, sides multiples of the patch, at most
    ``seq_len`` patches (timm's ``get_image_size_for_seq``, cached: images repeat sizes)."""
    return _size_for_seq(int(height), int(width), int(patch_size), int(seq_len))


@lru_cache(maxsize=65536)
def _size_for_seq(height: int, width: int, patch_size: int, seq_len: int) -> Size:
    _, (h, w) = get_image_size_for_seq((height, width), patch_size, seq_len)
    return int(h), int(w)


def collate_tokens(
    items: Sequence[tuple[torch.Tensor, int]], patch_size: int, seq_len: int
) -> tuple[TokenBatch, torch.Tensor]:
    """uint8 (3, h, w) images of different shapes -> a padded, masked :class:`TokenBatch` and labels.

    Sequences are padded to the longest in the batch (at most ``seq_len``), not to ``seq_len``:
    fewer slots computed in vain, and the padding share logged is what the step really paid.
    """
    sequences = [patchify_image(image, (patch_size, patch_size)) for image, _ in items]
    longest = max(patches.shape[0] for patches, _, _ in sequences)
    if longest > seq_len:
        raise RuntimeError(f"an image has {longest} patches, more than the step's {seq_len}")
    b, dim = len(items), sequences[0][0].shape[1]
    patches = torch.zeros(b, longest, dim, dtype=sequences[0][0].dtype)
    coord = torch.zeros(b, longest, 2, dtype=torch.int64)
    valid = torch.zeros(b, longest, dtype=torch.bool)
    for i, (p, c, v) in enumerate(sequences):
        patches[i, : len(p)], coord[i, : len(c)], valid[i, : len(v)] = p, c, v
    labels = torch.tensor([int(label) for _, label in items], dtype=torch.int64)
    return TokenBatch(patches, coord, valid, seq_len), labels


class TokenRequest(NamedTuple):
    """A :class:`SampleRequest` plus the step's sequence length, which the collate needs."""

    sample_index: int
    h: int
    w: int
    phase: str | None
    epoch: int | None
    seq_len: int


class TokenDataset(Dataset):
    """Wraps a :class:`~resflex.data.datamodule.SizedDataset`: ``dataset[TokenRequest]`` -> (uint8 image,
    label, seq_len); the image framed at the request's own (h, w) as any sized request is."""

    def __init__(self, sized: SizedDataset) -> None:
        self.sized = sized

    def __len__(self) -> int:
        return len(self.sized)

    def __getitem__(self, item: TokenRequest) -> tuple[torch.Tensor, int, int]:
        image, label = self.sized[tuple(item[:5])]
        if not isinstance(image, torch.Tensor):  # decoder=device frames square crops only, never squash's
            raise TypeError(f"a token batch takes framed images, got {type(image).__name__}")
        return image, label, int(item[5])


class TokenCollate:
    """Picklable collate for the loader workers: (image, label, seq_len) items -> a token batch."""

    def __init__(self, patch_size: int) -> None:
        self.patch_size = patch_size

    def __call__(self, items: Sequence[tuple[torch.Tensor, int, int]]) -> tuple[TokenBatch, torch.Tensor]:
        pairs = [(image, label) for image, label, _ in items]
        return collate_tokens(pairs, self.patch_size, int(items[0][2]))


#: the default token budget of a training step (``resolution.tokens_per_batch``): see NaFlexResolution
DEFAULT_TOKENS_PER_BATCH = 3072


class NaFlexResolution(RandomResolution):
    """``resolution=naflex``: a sequence length per step, a batch size per sequence length.

    - ``seq_lens`` (``probs``: null = uniform): the training sequence lengths, drawn per step
      from (``seed``, epoch, step) as ``resolution=random`` draws sizes;
    - ``max_seq_len``: the evaluation sequence length (``val/acc``); ``eval_seq_lens``: more;
    - ``patch_size``: pixels per patch side; must be the backbone's (checked before any work);
    - ``tokens_per_batch``: the budget; a step of length s takes ``tokens_per_batch // s``
      images. Default 3,072 (32 images at 96 tokens): chosen on val in experiments/naflex/, where a
      small ViT from scratch gained more from twice the steps than it lost to smaller batches at
      6,144. null: ``data.batch_size`` x max(seq_lens), timm's rule (``data.batch_size`` is the
      batch at the longest sequence);
    - ``loss_scale``: timm's ``--naflex-loss-scale``: the loss of a step with B images is
      multiplied by B / B_ref (``linear``), its square root (``sqrt``) or 1 (``none``), B_ref the
      batch at the longest sequence.

    Geometry is always ``squash`` (each image resized whole to its own (h, w), which keeps
    its aspect up to one patch of rounding, with squash's mild jitter in training).
    """

    def __init__(
        self,
        seq_lens: Sequence[int] = (48, 64, 96),
        probs: Sequence[float] | None = None,
        max_seq_len: int = 64,
        eval_seq_lens: Sequence[int] | None = None,
        patch_size: int = 8,
        tokens_per_batch: int | None = DEFAULT_TOKENS_PER_BATCH,
        loss_scale: str = "linear",
        seed: int = 0,
        **common: Any,
    ) -> None:
        if isinstance(seq_lens, int | str) or not seq_lens:
            raise ConfigError(
                f"resolution.seq_lens must be a non-empty list of token counts, got {seq_lens!r}",
                hint="resolution.seq_lens=[48,64,96]",
            )
        lens = [check_int(s, "resolution.seq_lens", 1) for s in seq_lens]
        geometry = common.pop("geometry", "squash")
        if geometry not in ("squash", "auto"):
            raise ConfigError(
                f"resolution=naflex keeps each image's aspect in its own patch grid; "
                f"resolution.geometry={geometry} does not apply",
                hint="drop resolution.geometry (naflex always resizes the whole image: squash)",
            )
        super().__init__(sizes=[[s, s] for s in lens], probs=probs, seed=seed, geometry="squash", **common)
        self.seq_lens = lens
        self.max_seq_len = check_int(max_seq_len, "resolution.max_seq_len", 1)
        self.eval_seq_lens = [check_int(s, "eval.seq_lens", 1) for s in (eval_seq_lens or [])]
        self.patch_size = check_int(patch_size, "resolution.patch_size", 1)
        longest = max(lens)
        if tokens_per_batch is not None:
            check_int(tokens_per_batch, "resolution.tokens_per_batch", 1)
            if tokens_per_batch < longest:
                raise ConfigError(
                    f"resolution.tokens_per_batch={tokens_per_batch} is below one image at the longest "
                    f"sequence ({longest} tokens)",
                    hint=f"resolution.tokens_per_batch >= {longest}, e.g. {64 * longest} (64 images)",
                )
        self.tokens_per_batch = tokens_per_batch
        if loss_scale not in LOSS_SCALES:
            raise ConfigError(
                f"resolution.loss_scale must be one of {', '.join(LOSS_SCALES)}, got {loss_scale!r}",
                hint="resolution.loss_scale=linear",
            )
        self.loss_scale = loss_scale
        self._eval_size = (self.max_seq_len, self.max_seq_len)

    # ---- token budget --------------------------------------------------------
    def budget(self, batch_size: int) -> int:
        """Tokens per batch: ``tokens_per_batch``, or ``batch_size`` images at the longest sequence."""
        return self.tokens_per_batch or batch_size * max(self.seq_lens)

    def batch_for(self, seq_len: int, batch_size: int) -> int:
        return max(1, self.budget(batch_size) // seq_len)

    def batch_size_at(self, epoch: int, step: int, batch_size: int) -> int:
        return self.batch_for(self.size_at(epoch, step)[0], batch_size)

    @property
    def varies_batch_size(self) -> bool:
        return len(set(self.seq_lens)) > 1

    def loss_scale_for(self, images: int, batch_size: int) -> float:
        """timm's loss scaling for a step of ``images`` images, relative to the batch at the longest
        sequence (``batch_size``: ``data.batch_size``, which sets that batch only when
        ``tokens_per_batch`` is null)."""
        if self.loss_scale == "none":
            return 1.0
        ratio = images / self.batch_for(max(self.seq_lens), batch_size)
        return math.sqrt(ratio) if self.loss_scale == "sqrt" else ratio

    def image_size(self, width: int, height: int, seq_len: int) -> Size:
        return image_size_for_seq(width, height, self.patch_size, seq_len)

    def extra_eval_sizes(self) -> list[int]:
        """``eval.seq_lens`` as the data module's extra evaluation 'sizes' (a length s is the size (s, s))."""
        return [s for s in self.eval_seq_lens if s != self.max_seq_len]

    def __repr__(self) -> str:
        return (
            f"NaFlexResolution(seq_lens={self.seq_lens}, max_seq_len={self.max_seq_len}, "
            f"patch_size={self.patch_size}, tokens_per_batch={self.tokens_per_batch}, "
            f"loss_scale={self.loss_scale})"
        )


def is_token_schedule(schedule: object) -> TypeGuard[NaFlexResolution]:
    return isinstance(schedule, NaFlexResolution)


def token_schedule_of(datamodule: object) -> NaFlexResolution | None:
    """The NaFlex schedule of a data module (``resolution=naflex``), or None (image batches, no data module).

    The one place that knows where a data module keeps its schedule, so the training side
    (:mod:`resflex.training.naflex`) asks the data layer rather than reading its attributes.
    """
    schedule = getattr(datamodule, "schedule", None)
    return schedule if isinstance(schedule, NaFlexResolution) else None


def step_loss_scale(datamodule: object, images: int) -> float:
    """timm's loss scale (``resolution.loss_scale``) of a training step of ``images`` images under
    ``datamodule``'s token budget; 1.0 for anything that is not a NaFlex data module."""
    schedule = token_schedule_of(datamodule)
    batch_size = getattr(datamodule, "batch_size", None)  # the token budget's reference
    if schedule is None or batch_size is None:
        return 1.0
    return schedule.loss_scale_for(images, int(batch_size))


class NaFlexBatchSampler(ResolutionBatchSampler):
    """:class:`ResolutionBatchSampler` whose requests carry each image's own (h, w) for the step's
    sequence length. The plan (which samples, which sequence length, how many per step) is the base
    class's: a pure function of (seed, epoch), sharded by rank, resumable at a step; only the
    per-image sizes are added here, from the images' (width, height) read once from their headers."""

    schedule: NaFlexResolution  # __init__ refuses any other

    def __init__(self, *args: Any, image_sizes: Sequence[tuple[int, int]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.schedule, NaFlexResolution):
            raise TypeError("NaFlexBatchSampler needs a NaFlexResolution schedule")
        if len(image_sizes) != self.num_samples:
            raise ValueError(f"image_sizes has {len(image_sizes)} entries for {self.num_samples} samples")
        self.image_sizes = list(image_sizes)

    @property
    def budget_key(self) -> str:
        return "resolution.tokens_per_batch" if self.schedule.tokens_per_batch else "data.batch_size"

    @property
    def batch_budget(self) -> int:
        return self.schedule.tokens_per_batch or self.batch_size

    def planning_with(self, budget: int) -> NaFlexBatchSampler:
        other = super().planning_with(budget)
        assert isinstance(other, NaFlexBatchSampler)
        if self.schedule.tokens_per_batch:  # the token budget is the schedule's: a copy of it
            other.batch_size = self.batch_size
            other.schedule = copy.copy(self.schedule)
            other.schedule.tokens_per_batch = budget
        return other

    def step_batch_size(self, epoch: int, step: int) -> int:
        if self.fixed_size is not None:  # evaluation at one sequence length: the token budget's batch
            return self.schedule.batch_for(self.fixed_size[0], self.batch_size)
        return super().step_batch_size(epoch, step)

    def requests(self, indices: Sequence[int], seq_len: int, epoch: int | None) -> list[TokenRequest]:
        schedule = self.schedule
        out = []
        for index in indices:
            width, height = self.image_sizes[index]
            h, w = schedule.image_size(width, height, seq_len)
            out.append(TokenRequest(index, h, w, None, epoch, seq_len))
        return out

    # token requests (a SampleRequest and the sequence length) where the base yields SampleRequests:
    # by design, for the token dataset of the same loader (TokenDataset)
    def __iter__(self) -> Iterator[list[TokenRequest]]:  # type: ignore[override]
        start, self.start_step = self.start_step, 0
        epoch = self.epoch if self.training else None
        for batch in self.plan()[start:]:
            yield self.requests(batch.indices, batch.size[0], epoch)


def token_loader_parts(
    dataset: SizedDataset, image_sizes: Sequence[tuple[int, int]], **sampler_args: Any
) -> tuple[TokenDataset, NaFlexBatchSampler, TokenCollate]:
    """The data module's hook: dataset, batch sampler and collate of a token loader."""
    sampler = NaFlexBatchSampler(image_sizes=image_sizes, **sampler_args)
    return TokenDataset(dataset), sampler, TokenCollate(sampler.schedule.patch_size)
