"""A batch sampler that gives every batch one target size: ``[(index, h, w), ...]``.

Why not ``timm.data.ScheduledBatchSampler``? It chooses a transform per batch
from a fixed list with constant/progressive *probabilities*; resflex schedules
are functions of (epoch, step) (FFCV-style ramps, FixRes phases, multigrid
cycles) and must stay exact across DDP ranks and mid-epoch resumes. So the
size comes from a :class:`~resflex.data.resolution.ResolutionSchedule`, and the
sample order is a seeded permutation per epoch, sharded by rank like
``DistributedSampler`` (padding by repeating the first indices so every rank
gets the same number of batches).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from resflex.data.resolution import ResolutionSchedule

SizedIndex = tuple[int, int, int]


class ResolutionBatchSampler(Sampler[list[SizedIndex]]):
    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        schedule: ResolutionSchedule,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        fixed_size: tuple[int, int] | None = None,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("ResolutionBatchSampler needs a non-empty dataset")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.schedule = schedule
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.fixed_size = fixed_size  # evaluation loaders: one size, whatever the schedule says
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch (also on persistent-worker loaders)."""
        self.epoch = epoch

    def _rank_indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        if self.world_size > 1:
            per_rank = -(-self.num_samples // self.world_size)
            padded = order + order[: per_rank * self.world_size - len(order)]
            order = padded[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        per_rank = -(-self.num_samples // self.world_size)
        if self.drop_last:
            return max(per_rank // self.batch_size, 0)
        return -(-per_rank // self.batch_size)

    def size_for_step(self, step: int) -> tuple[int, int]:
        return self.fixed_size or self.schedule.size_at(self.epoch, step)

    def __iter__(self) -> Iterator[list[SizedIndex]]:
        indices = self._rank_indices()
        for step in range(len(self)):
            chunk = indices[step * self.batch_size : (step + 1) * self.batch_size]
            h, w = self.size_for_step(step)
            yield [(index, h, w) for index in chunk]
