"""A batch sampler that gives every batch one target size: ``[(index, h, w[, phase]), ...]``.

The dataset (:class:`resflex.data.datamodule.SizedDataset`) decodes each image
once and resizes it straight to (h, w) in the worker; ``phase`` (FixRes' final
phase) selects a variant of the train transform.

How an epoch is planned (a pure function of (seed, epoch), so every DDP rank
and a resumed run agree):

- the size of step ``t`` is ``schedule.size_at(epoch, t)``; its batch size is
  ``schedule.batch_size_at(epoch, t, batch_size)`` (multigrid / batch scaling:
  variable batch sizes that still cover every sample once per epoch);
- ``square``: a seeded permutation, padded and sharded by rank like
  ``DistributedSampler``, consumed step by step;
- ``keep_aspect``: samples are grouped into aspect-ratio buckets; each step
  draws a bucket (seeded, weighted by what the bucket has left), takes
  ``batch_size * world_size`` of its samples and deals them out to the ranks,
  so all ranks see the same (h, w) at the same step. Each sample appears
  exactly once per epoch (a bucket's last batch is smaller; with several
  ranks it is padded by repeating samples so every rank gets the same count).

Padding (several ranks only): so that every rank takes the same number of steps of the
same sizes, a rank's share is completed by repeating samples — at most one per rank for
``square`` (the permutation is padded to a multiple of the world size, as
``DistributedSampler`` does), at most one per rank per step for ``keep_aspect`` (each
step's chunk is padded to a multiple of the world size). The repeats are always the last
entries of their batch and :attr:`PlannedBatch.padding` counts them. Training keeps them
(a few images seen twice in an epoch change nothing, and equal batches keep the ranks in
step); evaluation must not count them: the LightningModule asks :func:`batch_padding` for
each validation/test batch and updates its metrics and loss with the other samples only,
so ``val/*`` and ``test/*`` count every image exactly once over the ranks, as a single
process (which never pads) does. BatchNorm calibration, which runs on rank 0 alone, reads
an unsharded loader (:meth:`ResflexDataModule.calibration_loader`): no padding there.

Resume: :meth:`ResolutionBatchSampler.set_start_step` skips the first steps of
the (reproducible) epoch plan without loading them; Lightning restarts a
non-stateful epoch from its first batch while counting from the saved batch
index, so the data module sets it from the restored loop state. A run resumed
mid-epoch with a smaller batch (half ``data.batch_size``, twice the gradient
accumulation: what the out-of-memory hint proposes) finishes that epoch on the
plan it started, each remaining batch cut into pieces
(:meth:`ResolutionBatchSampler.cut_epoch`): the same images at the same sizes,
and the steps before the cut keep their place, so Lightning's batch count and
the saved position stay right. The next epochs are planned with the new batch.

Why not ``timm.data.ScheduledBatchSampler`` (timm 1.0.31)? It fits one case —
random sizes with per-choice batch sizes (its "sample budget" mode) — but
resflex schedules are functions of (epoch, step): FFCV ramps rounded to a
multiple, FixRes phases that also change the augmentation, multigrid long and
short cycles. timm's schedule is a per-epoch shuffle of a fixed composition of
choices or a probabilistic window over epochs, so a given step's size cannot be
asked for in isolation (which is what resuming at a step, logging the
scheduled size and the aspect buckets need), it has no aspect-ratio buckets
(its choices are transforms over a flat index stream, so a batch cannot be
drawn from one bucket), and it cycles the index stream in fixed-batch mode
(samples repeat within an epoch). Its ``ScheduledTransformDataset`` is also not
needed: our items carry (h, w) themselves, so one cached pipeline per size
replaces a list of prebuilt transforms. The DDP contract is the same as
timm's (same seed and epoch -> same schedule on every rank).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from itertools import pairwise
from typing import Any, NamedTuple, TypedDict

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import Sampler

from resflex.compat import set_epoch_length
from resflex.data.schedule import ResolutionSchedule
from resflex.types import Size

log = logging.getLogger(__name__)


class SampleRequest(NamedTuple):
    """What the sampler asks the dataset for: sample ``sample_index`` framed into (``h``, ``w``).

    ``phase`` selects a variant of the train transform (FixRes' final phase); ``epoch`` is
    set for training only and, with the run's seed and ``sample_index``, seeds the sample's random
    augmentation, so a resumed or DDP run draws exactly the same crops. (Not ``index``: a field of
    that name would hide ``tuple.index``, which a request, being a tuple, must keep.)
    """

    sample_index: int
    h: int
    w: int
    phase: str | None = None
    epoch: int | None = None


class PlannedBatch(NamedTuple):
    """One step of an epoch plan, for this rank.

    ``padding``: how many of the last ``indices`` repeat samples that some rank already has
    (DDP padding, see the module docstring); 0 in a single process. Evaluation leaves them out.
    """

    size: Size  # (h, w) every image of the batch is resized to
    scheduled: Size  # the schedule's size for the step (differs from ``size`` in keep_aspect)
    indices: list[int]
    phase: str | None
    padding: int = 0


class _EpochHook:
    """What Lightning finds at ``batch_sampler.sampler``: it calls ``set_epoch`` there, not on us."""

    def __init__(self, owner: ResolutionBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


class SamplerArgs(TypedDict):
    """The arguments of :class:`ResolutionBatchSampler` (and a NaFlex one) but ``buckets``: what the
    data module builds once per loader."""

    num_samples: int
    batch_size: int
    schedule: ResolutionSchedule
    shuffle: bool
    training: bool
    drop_last: bool
    seed: int
    rank: int
    world_size: int
    fixed_size: tuple[int, int] | None


class ResolutionBatchSampler(Sampler[list[SampleRequest]]):
    """``training``: requests carry the epoch (augmentation seeds); ``shuffle``: a new order per epoch."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        schedule: ResolutionSchedule,
        shuffle: bool = True,
        training: bool = False,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        fixed_size: tuple[int, int] | None = None,
        buckets: Sequence[int] | None = None,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("ResolutionBatchSampler needs a non-empty dataset")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if buckets is not None and len(buckets) != num_samples:
            raise ValueError(f"buckets has {len(buckets)} entries for {num_samples} samples")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.schedule = schedule
        self.shuffle = shuffle
        self.training = training
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.fixed_size = fixed_size  # evaluation loaders: one size, whatever the schedule says
        self.buckets = list(buckets) if buckets is not None else None
        self.epoch = 0
        self.start_step = 0
        # Before the first set_epoch, a schedule whose epoch length varies reports the mean
        # epoch length, so that Lightning's estimated_stepping_batches (LR schedule) is right.
        self._epoch_was_set = False
        self._plans: dict[int, list[PlannedBatch]] = {}
        # (epoch, the batch size its plan was made with, [(step, pieces), ...]): see cut_epoch
        self._cut: tuple[int, int, tuple[tuple[int, int], ...]] | None = None
        # Lightning's _set_sampler_epoch looks at dataloader.sampler and dataloader.batch_sampler.sampler
        self.sampler = _EpochHook(self)

    # ---- epoch / resume state ----------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch (also on persistent-worker loaders)."""
        self.epoch = epoch
        self._epoch_was_set = True

    def set_start_step(self, step: int) -> None:
        """Skip the first ``step`` batches of the next iteration (resume mid-epoch); applies once."""
        self.start_step = max(0, int(step))

    @property
    def budget_key(self) -> str:
        """The config key of :attr:`batch_budget`."""
        return "data.batch_size"

    @property
    def batch_budget(self) -> int:
        """What a step's batch is planned from: ``data.batch_size`` images (a NaFlex run: its tokens)."""
        return self.batch_size

    def planning_with(self, budget: int) -> ResolutionBatchSampler:
        """A copy of this sampler that plans with the batch budget ``budget``, no epoch cut."""
        other = copy.copy(self)
        other.batch_size = budget
        other.forget_cut()
        return other

    def cut_epoch(self, epoch: int, planned_with: int, cuts: Sequence[tuple[int, int]]) -> None:
        """Plan ``epoch`` with the batch budget ``planned_with``, then cut every batch from each
        ``(step, pieces)`` of ``cuts`` on into ``pieces`` near-equal parts (in order; never a part below
        two images).

        A run resumed mid-epoch with a smaller batch finishes the epoch it started: the plan a new
        batch size would make draws other sizes and, in aspect buckets, other images, so the
        interrupted epoch would repeat some images and skip others. Cutting keeps the images, their
        sizes and their order, and keeps the steps before the cut where Lightning counts them.
        """
        self._cut = (int(epoch), int(planned_with), tuple((int(s), int(p)) for s, p in cuts))
        self._plans = {}

    def forget_cut(self) -> None:
        """Plan every epoch with this batch budget again (undo :meth:`cut_epoch`)."""
        self._cut, self._plans = None, {}

    def planned_with(self, epoch: int) -> tuple[int, list[tuple[int, int]]]:
        """The batch budget ``epoch`` was planned with and its cuts (:meth:`cut_epoch`; none: this one)."""
        if self._cut is not None and self._cut[0] == epoch:
            return self._cut[1], list(self._cut[2])
        return self.batch_budget, []

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "start_step": self.start_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_epoch(int(state["epoch"]))
        self.set_start_step(int(state.get("start_step", 0)))

    # ---- planning -----------------------------------------------------------
    @property
    def varies_per_epoch(self) -> bool:
        """Epochs of different lengths: a schedule that varies the batch size, or a cut epoch."""
        return self.fixed_size is None and (self.schedule.varies_batch_size or self._cut is not None)

    def step_batch_size(self, epoch: int, step: int) -> int:
        if self.fixed_size is not None:
            return self.batch_size
        return self.schedule.batch_size_at(epoch, step, self.batch_size)

    def _step_size(self, epoch: int, step: int) -> Size:
        return self.fixed_size or self.schedule.size_at(epoch, step)

    def _per_rank(self) -> int:
        return -(-self.num_samples // self.world_size)

    def _square_layout(self, epoch: int) -> list[int]:
        """Per-rank batch sizes for every step of ``epoch``."""
        remaining, step = self._per_rank(), 0
        layout: list[int] = []
        while remaining > 0:
            bs = self.step_batch_size(epoch, step)
            if remaining < bs and self.drop_last and layout:
                break
            layout.append(min(bs, remaining))
            remaining -= layout[-1]
            step += 1
        return layout

    def _bucket_members(self) -> dict[int, list[int]]:
        members: dict[int, list[int]] = {}
        for index, bucket in enumerate(self.buckets or []):
            members.setdefault(bucket, []).append(index)
        return members

    def _bucket_layout(self, epoch: int) -> list[tuple[int, int]]:
        """(bucket, global sample count before padding) for every step of ``epoch``."""
        remaining = {b: len(m) for b, m in sorted(self._bucket_members().items())}
        rng = np.random.default_rng([self.seed, epoch, 7])
        layout, step = [], 0
        while any(remaining.values()):
            live = [b for b, n in remaining.items() if n > 0]
            if self.shuffle:
                weights = np.array([remaining[b] for b in live], dtype=np.float64)
                bucket = live[int(rng.choice(len(live), p=weights / weights.sum()))]
            else:
                bucket = live[0]
            take = min(self.step_batch_size(epoch, step) * self.world_size, remaining[bucket])
            if self.drop_last and 0 < remaining[bucket] - take < 2 * self.world_size:
                take = remaining[bucket]  # a last batch of one would reach BatchNorm alone: fold it in
            layout.append((bucket, take))
            remaining[bucket] -= take
            step += 1
        return layout

    def plan(self, epoch: int | None = None) -> list[PlannedBatch]:
        """Every batch of ``epoch`` (default: the current one) for this rank; cached per epoch."""
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._plans:
            self._plans = {epoch: self._build_plan(epoch)}  # keep one epoch: plans can be large
        return self._plans[epoch]

    def _build_plan(self, epoch: int) -> list[PlannedBatch]:
        if self._cut is None or self._cut[0] != epoch:
            return self._plan_epoch(epoch)
        _, planned_with, cuts = self._cut
        plan = self.planning_with(planned_with).plan(epoch)
        for step, pieces in cuts:
            plan = plan[:step] + [part for batch in plan[step:] for part in cut_batch(batch, pieces)]
        return plan

    def _plan_epoch(self, epoch: int) -> list[PlannedBatch]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        plan = []
        if self.buckets is None:
            if self.shuffle:
                order = torch.randperm(self.num_samples, generator=generator).tolist()
            else:
                order = list(range(self.num_samples))
            real = len(order)  # this rank's entries before the padding repeats
            if self.world_size > 1:
                padded = (order * self.world_size)[: self._per_rank() * self.world_size]  # pad by repeating
                order = padded[self.rank :: self.world_size]
                real = len(range(self.rank, self.num_samples, self.world_size))  # the repeats come last
            start = 0
            for step, count in enumerate(self._square_layout(epoch)):
                size = self._step_size(epoch, step)
                phase = None if self.fixed_size else self.schedule.augment_at(epoch, step)
                padding = min(count, max(0, start + count - real))
                plan.append(PlannedBatch(size, size, order[start : start + count], phase, padding))
                start += count
            return plan
        members = self._bucket_members()
        if self.shuffle:
            for b in sorted(members):
                perm = torch.randperm(len(members[b]), generator=generator).tolist()
                members[b] = [members[b][i] for i in perm]
        taken = dict.fromkeys(members, 0)
        for step, (bucket, count) in enumerate(self._bucket_layout(epoch)):
            chunk = members[bucket][taken[bucket] : taken[bucket] + count]
            taken[bucket] += count
            per_rank = -(-len(chunk) // self.world_size)
            real = len(range(self.rank, len(chunk), self.world_size))  # this rank's entries before padding
            chunk = (chunk * self.world_size)[: per_rank * self.world_size]  # pad by repeating
            scheduled = self._step_size(epoch, step)
            size = self.schedule.shape_for(scheduled, self.schedule.aspect_ratios[bucket])
            phase = None if self.fixed_size else self.schedule.augment_at(epoch, step)
            mine = chunk[self.rank :: self.world_size]
            plan.append(PlannedBatch(size, scheduled, mine, phase, len(mine) - real))
        return plan

    def num_batches(self, epoch: int) -> int:
        """Steps in ``epoch`` for this rank (counts only, no index lists, unless the epoch is cut)."""
        if epoch in self._plans or (self._cut is not None and self._cut[0] == epoch):
            return len(self.plan(epoch))
        if self.buckets is None:
            return len(self._square_layout(epoch))
        return len(self._bucket_layout(epoch))

    def mean_num_batches(self) -> int:
        """Mean steps per epoch over the bound schedule's epochs (rounded up)."""
        epochs = self.schedule.max_epochs or 1
        return math.ceil(sum(self.num_batches(e) for e in range(epochs)) / epochs)

    def __len__(self) -> int:
        if self.varies_per_epoch and not self._epoch_was_set:
            return self.mean_num_batches()
        return self.num_batches(self.epoch)

    def __iter__(self) -> Iterator[list[SampleRequest]]:
        start, self.start_step = self.start_step, 0
        for batch in self.plan()[start:]:
            h, w = batch.size
            epoch = self.epoch if self.training else None
            yield [SampleRequest(index, h, w, batch.phase, epoch) for index in batch.indices]


def sampler_position(sampler: ResolutionBatchSampler, done: int) -> dict[str, Any]:
    """What a checkpoint keeps of the training sampler, ``done`` batches into its epoch: the epoch, the
    step, the epoch's length (an epoch's end stays one when a resume plans with another batch size),
    the batch budget (:attr:`~ResolutionBatchSampler.batch_budget`), and the budget the epoch was
    planned with and its cuts (:meth:`~ResolutionBatchSampler.cut_epoch`)."""
    planned_with, cuts = sampler.planned_with(sampler.epoch)
    return {
        "epoch": sampler.epoch,
        "step": done,
        "batches": sampler.num_batches(sampler.epoch),
        "batch_budget": sampler.batch_budget,
        "planned_with": planned_with,
        "cuts": [list(cut) for cut in cuts],
    }


def resume_position(sampler: ResolutionBatchSampler, state: Mapping[str, Any]) -> None:
    """Start ``sampler`` where :func:`sampler_position` left a run: the next epoch after an epoch's end,
    else the saved step of its epoch, cut into pieces when the batch is now smaller.

    A checkpoint from before the epoch's length and batch budget were kept (``batches``,
    ``batch_budget``) is read as one of this budget.
    """
    epoch, step = int(state.get("epoch", 0)), int(state.get("step", 0))
    budget, now = int(state.get("batch_budget", sampler.batch_budget)), sampler.batch_budget
    planned_with = int(state.get("planned_with", budget))
    cuts = [(int(s), int(p)) for s, p in state.get("cuts", [])]
    if step >= int(state["batches"] if "batches" in state else sampler.num_batches(epoch)):
        epoch, step = epoch + 1, 0  # saved at an epoch's end: the next one, planned with this batch size
    else:
        pieces = -(-budget // now)
        if pieces > 1:
            cuts.append((step, pieces))
        if cuts or planned_with != now:
            sampler.cut_epoch(epoch, planned_with, cuts)
        if budget != now:
            log.warning(
                "resumed mid-epoch with %s=%d (the checkpoint's: %d): the rest of epoch %d %s; "
                "the next epochs are planned with %d",
                sampler.budget_key,
                now,
                budget,
                epoch,
                f"keeps its images and sizes, each batch in {pieces}" if pieces > 1 else "keeps its batches",
                now,
            )
        elif "batches" in state and sampler.num_batches(epoch) != int(state["batches"]):
            # the same batch budget, another epoch length: the images changed (added, removed)
            log.warning(
                "resumed mid-epoch on other training data: epoch %d had %d batches at the checkpoint and "
                "has %d now, so the rest of it is another plan (some images of this epoch are seen twice, "
                "others not at all); the next epochs cover the data as it is now",
                epoch,
                int(state["batches"]),
                sampler.num_batches(epoch),
            )
    sampler.set_epoch(epoch)
    sampler.set_start_step(step)
    log.info("train sampler resumes at epoch %d, step %d", epoch, step)


def cut_batch(batch: PlannedBatch, pieces: int) -> list[PlannedBatch]:
    """``batch`` as ``pieces`` consecutive near-equal batches of the same size and phase (fewer when it
    has fewer than two images a piece: a training batch of one would reach BatchNorm alone); the
    DDP padding repeats, always last, stay counted in the pieces that hold them."""
    count = len(batch.indices)
    parts = max(1, min(int(pieces), count // 2))
    bounds = [round(k * count / parts) for k in range(parts + 1)]
    real = count - batch.padding
    return [
        PlannedBatch(
            batch.size, batch.scheduled, batch.indices[start:end], batch.phase, max(0, end - max(start, real))
        )
        for start, end in pairwise(bounds)
    ]


def batch_padding(loader: Any, batch_idx: int, batch_len: int) -> int:
    """How many of the last samples of ``loader``'s batch ``batch_idx`` are DDP padding repeats.

    0 for a loader that is not planned by a :class:`ResolutionBatchSampler` (plain loaders, unit
    tests) and always 0 in a single process. Evaluation plans do not depend on the epoch (no
    shuffling), so the plan read here is the one the batch came from; ``batch_len`` is checked
    against it (a batch always keeps its planned length: unreadable images are replaced, not dropped).
    """
    sampler = getattr(loader, "batch_sampler", None)
    if not isinstance(sampler, ResolutionBatchSampler):
        return 0
    plan = sampler.plan()
    if not 0 <= batch_idx < len(plan) or len(plan[batch_idx].indices) != batch_len:
        raise RuntimeError(
            f"evaluation batch {batch_idx} has {batch_len} samples, which its loader's plan "
            f"({len(plan)} batches) does not match: cannot tell its padding repeats"
        )
    return plan[batch_idx].padding


class ScheduleLengthSync(pl.Callback):
    """Keeps Lightning's batches-per-epoch in step with a schedule whose epoch length varies.

    Lightning reads ``len(train_dataloader)`` once; with multigrid or batch
    scaling the number of steps changes from epoch to epoch (the sampler
    re-plans each epoch). Every resflex trainer has this callback
    (:func:`resflex.build.build_callbacks`); it does nothing for fixed-length epochs.
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = getattr(getattr(trainer, "datamodule", None), "train_sampler", None)
        if sampler is None or not sampler.varies_per_epoch:
            return
        n = sampler.num_batches(sampler.epoch)
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            n = min(n, limit)
        elif limit is not None and float(limit) < 1.0:
            n = max(1, int(n * float(limit)))
        set_epoch_length(trainer, n)
