"""LightningDataModule: a dataset source + a resolution schedule -> multi-resolution loaders.

Training batches come from :class:`ResolutionBatchSampler` (one size per
batch, chosen by the schedule); evaluation batches use the schedule's
``eval_size``. Each item is decoded once and resized once in the worker, and
batches stay uint8 until the LightningModule moves them to the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from resflex.data.datasets import ImageSource
from resflex.data.resolution import ResolutionSchedule, Size
from resflex.data.sampler import ResolutionBatchSampler
from resflex.data.transforms import EvalTransform, TrainTransform
from resflex.errors import ConfigError


class SizedDataset(Dataset):
    """Wraps a ``(PIL image, label)`` dataset; ``dataset[(i, h, w)] -> (uint8 (3, h, w), label)``."""

    def __init__(self, base: Dataset, transform: TrainTransform | EvalTransform) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        index, h, w = item
        image, label = self.base[index]
        return self.transform(image, (h, w)), label


class ResflexDataModule(pl.LightningDataModule):
    def __init__(
        self,
        source: ImageSource,
        schedule: ResolutionSchedule,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        prefetch_factor: int | None = 2,
        augment: dict[str, Any] | None = None,
        eval_crop_pct: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"data.batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers!r}")
        self.source = source
        self.schedule = schedule
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.persistent_workers = persistent_workers and num_workers > 0
        self.prefetch_factor = prefetch_factor if num_workers > 0 else None
        self.train_transform = TrainTransform(**(augment or {}))
        self.eval_transform = EvalTransform(crop_pct=eval_crop_pct)
        self.seed = seed
        self._loaders: dict[str, DataLoader] = {}

    @property
    def classes(self) -> Sequence[str]:
        return self.source.classes

    @property
    def num_classes(self) -> int:
        return len(self.source.classes)

    def has_split(self, split: str) -> bool:
        return split in self.source.splits

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, split: str, shuffle: bool, size: Size | None) -> DataLoader:
        """Built once per split and reused, so persistent workers survive across epochs."""
        key = f"{split}@{size}"
        if key not in self._loaders:
            transform = self.train_transform if split == "train" else self.eval_transform
            dataset = SizedDataset(self.source.splits[split], transform)
            rank, world = self._rank_and_world()
            sampler = ResolutionBatchSampler(
                num_samples=len(dataset),
                batch_size=self.batch_size if split == "train" else self.eval_batch_size,
                schedule=self.schedule,
                shuffle=shuffle,
                drop_last=split == "train" and len(dataset) // world >= self.batch_size,
                seed=self.seed,
                rank=rank,
                world_size=world,
                fixed_size=size,
            )
            self._loaders[key] = DataLoader(
                dataset,
                batch_sampler=sampler,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.persistent_workers,
                prefetch_factor=self.prefetch_factor,
            )
        return self._loaders[key]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, size=None)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, size=self.schedule.eval_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, size=self.schedule.eval_size)
