"""LightningDataModule: a dataset source + a resolution schedule -> multi-resolution loaders.

Training batches come from :class:`ResolutionBatchSampler` (one size per
batch, chosen by the schedule); evaluation batches use the schedule's
``eval_size``, plus one extra val/test loader per size in
``eval.resolutions`` (:attr:`ResflexDataModule.eval_sizes` maps a
``dataloader_idx`` to its size). Each item is decoded once and resized once in
the worker, and batches stay uint8 until the LightningModule moves them to the
device (with ``data.source.decoder=device`` the workers only read JPEG bytes and
draw the framing, and the batch is decoded and framed on the device:
:mod:`resflex.data.device_decode`). With ``geometry=keep_aspect`` every loader
batches by aspect-ratio bucket (image sizes are read once per split, headers only).

At construction the training split is profiled from its image headers
(:mod:`resflex.data.profile`): the console gets size and aspect percentiles,
``geometry=auto`` becomes a concrete geometry with a one-line reason, and the
transforms are built for that geometry. The arguments that need no image are checked
first, by :mod:`resflex.data.arguments` (which :mod:`resflex.preflight` calls too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader, Dataset

from resflex.compat import batches_done_this_epoch, uses_distributed_sampler
from resflex.data.arguments import check_data_arguments, finish_source, worker_augment
from resflex.data.buckets import assign_buckets, image_sizes, image_sizes_lookup, merge_small_buckets
from resflex.data.datasets import ImageSource
from resflex.data.device_decode import DeviceFraming, check_device_decode, collate_encoded
from resflex.data.eval_sizes import is_auto
from resflex.data.images import DEVICE_DECODER
from resflex.data.naflex import is_token_schedule, token_loader_parts
from resflex.data.profile import DatasetProfile, sample_indices
from resflex.data.sampler import ResolutionBatchSampler, SamplerArgs, resume_position, sampler_position
from resflex.data.schedule import ResolutionSchedule
from resflex.data.sized_dataset import SizedDataset, Transform, mean_color
from resflex.data.transforms import DEFAULT_FILL, EvalTransform, TrainTransform
from resflex.data.workers import AUTO, auto_num_workers, init_worker
from resflex.errors import ConfigError
from resflex.types import Size

log = logging.getLogger(__name__)


class ResflexDataModule(pl.LightningDataModule):
    """Images of any size, framed into one (h, w) per batch by ``schedule``; loaders for every split.

    Built from the ``data`` config node (each key one argument here): ``source``
    reads the images (a class, or a partial that this module finishes with
    ``root``), ``schedule`` (the ``resolution`` group) picks the sizes, ``augment``
    frames and augments training images in the workers (its device-side keys,
    :data:`~resflex.data.arguments.DEVICE_AUGMENT`, belong to the LightningModule), and
    ``eval_resolutions`` (``auto`` or sizes) adds evaluation sizes.
    """

    def __init__(
        self,
        source: ImageSource | Callable[..., ImageSource],
        schedule: ResolutionSchedule,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int | str = AUTO,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        prefetch_factor: int | None = 2,
        augment: Mapping[str, Any] | None = None,
        eval_crop_pct: float = 1.0,
        seed: int = 0,
        eval_resolutions: str | Sequence[int | Sequence[int]] | None = None,
        eval_sizes_every_epoch: bool = True,
        profile_images: int = 5000,
        name: str = "",
        root: str | None = None,
    ) -> None:
        super().__init__()
        # every argument that needs no image, checked before the source reads any
        eval_sizes = check_data_arguments(
            schedule,
            batch_size,
            num_workers,
            augment,
            eval_crop_pct,
            eval_resolutions,
            eval_sizes_every_epoch,
            eval_batch_size=eval_batch_size,
            prefetch_factor=prefetch_factor,
        )
        self.name = name
        self.source = finish_source(source, root, name)
        self.schedule = schedule
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.requested_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.requested_persistent_workers = persistent_workers
        self.requested_prefetch_factor = prefetch_factor
        self.seed = seed
        self.profile = self._profile_and_resolve_geometry(profile_images)
        geometry, fill = schedule.geometry, self.profile.mean_color or DEFAULT_FILL
        augment = worker_augment(augment)
        self.train_transform = TrainTransform(**augment, geometry=geometry, fill=fill)
        self.phase_transforms = {
            name: TrainTransform(
                **{**augment, **dict(overrides)},
                geometry=geometry,
                fill=fill,
                config_key=schedule.augment_phases_key,
            )
            for name, overrides in schedule.augment_phases.items()
        }
        # data.source.decoder=device: JPEGs are decoded and framed on the batch's device
        self.device_decode = getattr(self.source, "decoder", None) == DEVICE_DECODER
        if self.device_decode:
            check_device_decode(
                geometry, self.profile.reason, self.train_transform, self.phase_transforms.values()
            )
        # eval.resolutions=auto (the default): a few sizes around the eval size (data/eval_sizes.py)
        self.eval_sizes_auto = is_auto(eval_resolutions)
        if is_token_schedule(schedule):  # resolution=naflex: sequence lengths (eval.seq_lens), not sides
            self.eval_sizes_auto = False
        self.eval_sizes = eval_sizes
        #: false: during fit, validation runs at the main size only (the extra sizes once after fit)
        self.eval_sizes_every_epoch = eval_sizes_every_epoch
        self._bucket_cache: dict[str, list[int]] = {}
        self._size_cache: dict[str, list[tuple[int, int]]] = {}
        self._resume: dict[str, Any] | None = None
        self.eval_transform = EvalTransform(crop_pct=eval_crop_pct, geometry=geometry, fill=fill)
        self._loaders: dict[str, DataLoader] = {}
        self._workers_said = False  # the worker count on the console once, not per loader built

    def _profile_and_resolve_geometry(self, max_images: int) -> DatasetProfile:
        """Profile the training split from its headers; resolve ``geometry=auto``; say what was chosen."""
        train = self.source.splits["train"]
        lookup = image_sizes_lookup(train)
        indices = sample_indices(len(train), max_images, self.seed)
        profile = DatasetProfile.from_sizes(
            [lookup(i) for i in indices],
            self.schedule.aspect_ratios,
            total=len(train),
        )
        if self.schedule.geometry == "auto":
            geometry, reason = profile.choose_geometry()
            self.schedule.resolve_geometry(geometry)
        else:
            reason = "set by resolution.geometry"
        profile.geometry, profile.reason = self.schedule.geometry, reason
        if self.schedule.geometry == "pad":
            profile.mean_color = mean_color(train, indices[:64])
        for line in profile.lines():
            log.info(line)
        return profile

    @property
    def classes(self) -> Sequence[str]:
        return self.source.classes

    @property
    def num_classes(self) -> int:
        return len(self.source.classes)

    def setup(self, stage: str) -> None:
        """Bind the schedule to the run length (epoch-based schedules need ``trainer.max_epochs``)."""
        if self.trainer is not None:
            self.schedule.bind(self.trainer.max_epochs)
            if self.trainer.world_size > 1 and uses_distributed_sampler(self.trainer):
                raise ConfigError(
                    "trainer.use_distributed_sampler must be false: the resflex batch sampler shards by rank",
                    hint="trainer.use_distributed_sampler=false",
                )

    @property
    def num_workers(self) -> int:
        """``data.num_workers``, with ``auto`` resolved for this process (:mod:`resflex.data.workers`)."""
        if self.requested_workers != AUTO:
            return int(self.requested_workers)
        trainer = self.trainer
        on_gpu = trainer is not None and isinstance(trainer.accelerator, CUDAAccelerator)
        per_node = 1
        if trainer is not None:
            per_node = max(1, trainer.world_size // max(1, trainer.num_nodes))
        return auto_num_workers(on_gpu, per_node)

    def has_split(self, split: str) -> bool:
        return split in self.source.splits

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, split: str, shuffle: bool, size: Size | None, eval_framing: bool = False) -> DataLoader:
        """Built once per split and reused, so persistent workers survive across epochs.

        ``shuffle`` orders the split anew each epoch; the train split is sampled for training
        (epoch-seeded augmentation) even when not shuffled (``overfit_batches``), unless
        ``eval_framing`` frames it as evaluation does (BatchNorm calibration). Such a loader is
        read by rank 0 alone, so it is not sharded: the whole split, as a single process reads
        it, with no padding repeats. Validation and test loaders are sharded, and their padding
        repeats are left out of the metrics (:func:`resflex.data.sampler.batch_padding`).
        """
        key = f"{split}@{size}" + ("-eval" if eval_framing else "")
        training = split == "train" and not eval_framing
        if key not in self._loaders:
            framing: TrainTransform | EvalTransform = (
                self.train_transform if training else self.eval_transform
            )
            phase_framings: Mapping[str, TrainTransform] = self.phase_transforms if training else {}
            transform: Transform = framing
            phases: Mapping[str, Transform] = phase_framings
            bad_images = getattr(self.source, "bad_images", None)
            collate: Callable[[Any], Any] | None = None  # torch's default
            if self.device_decode:  # workers read bytes and draw framings; the device decodes
                transform = DeviceFraming(framing)
                phases = {name: DeviceFraming(t) for name, t in phase_framings.items()}
                collate = partial(collate_encoded, bad_images=bad_images)
            dataset = SizedDataset(self.source.splits[split], transform, phases, bad_images, self.seed)
            rank, world = (0, 1) if eval_framing else self._rank_and_world()
            sampler_args = SamplerArgs(
                num_samples=len(dataset),
                batch_size=self.batch_size if split == "train" else self.eval_batch_size,
                schedule=self.schedule,
                shuffle=shuffle,
                training=training,
                drop_last=training and len(dataset) // world >= self.batch_size,
                seed=self.seed,
                rank=rank,
                world_size=world,
                fixed_size=size,
            )
            loader_dataset: Dataset = dataset
            sampler: ResolutionBatchSampler
            if is_token_schedule(self.schedule):  # resolution=naflex: token batches (resflex.data.naflex)
                # the token budget's reference; every image once per epoch (no BatchNorm over one image)
                sampler_args["batch_size"], sampler_args["drop_last"] = self.batch_size, False
                sizes = self._image_sizes(split)
                loader_dataset, sampler, collate = token_loader_parts(dataset, sizes, **sampler_args)
            else:
                sampler = ResolutionBatchSampler(**sampler_args, buckets=self._buckets(split))
            workers = self.num_workers
            if split == "train" and not self._workers_said:
                log.info("data loader: %d worker(s) (data.num_workers=%s)", workers, self.requested_workers)
                self._workers_said = True
            self._loaders[key] = DataLoader(
                loader_dataset,
                batch_sampler=sampler,
                num_workers=workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.requested_persistent_workers and workers > 0 and not eval_framing,
                prefetch_factor=self.requested_prefetch_factor if workers > 0 else None,
                collate_fn=collate,
                # workers ignore SIGTERM (a group kill reaches the main process only) and seed as
                # Lightning would (resflex.data.workers.init_worker)
                worker_init_fn=partial(init_worker, rank=rank) if workers > 0 else None,
            )
        return self._loaders[key]

    def _image_sizes(self, split: str) -> list[tuple[int, int]]:
        """(width, height) of every image of ``split``, from the headers (read once per split)."""
        if split not in self._size_cache:
            dataset = self.source.splits[split]
            profiled = self.profile.sizes if split == "train" else []
            # the profile already read every training header when it did not sample: reuse them
            sizes = profiled if len(profiled) == len(dataset) else image_sizes(dataset)
            self._size_cache[split] = list(sizes)
        return self._size_cache[split]

    def buckets(self, split: str) -> list[int] | None:
        """Each image's aspect bucket in ``split`` as its loaders' sampler uses them (None: one shape)."""
        return self._buckets(split)

    def _buckets(self, split: str) -> list[int] | None:
        """Aspect-ratio bucket of every image of ``split`` (keep_aspect only; computed once)."""
        if self.schedule.geometry != "keep_aspect":
            return None
        if split not in self._bucket_cache:
            buckets = assign_buckets(self._image_sizes(split), self.schedule.aspect_ratios)
            if split == "train":  # no bucket so small that a batch of one reaches BatchNorm
                _, world = self._rank_and_world()
                buckets = merge_small_buckets(buckets, self.schedule.aspect_ratios, minimum=2 * world)
            self._bucket_cache[split] = buckets
        return self._bucket_cache[split]

    def train_dataloader(self) -> DataLoader:
        # overfit_batches: the same first batches every epoch (Lightning would swap in a
        # SequentialSampler, but it cannot see inside this batch sampler)
        # trainer.overfit_batches: set by Lightning's trainer setup; the Trainer class does not declare it
        overfit = self.trainer is not None and bool(self.trainer.overfit_batches)  # type: ignore[attr-defined]
        loader = self._loader("train", shuffle=not overfit, size=None)
        sampler = loader.batch_sampler
        assert isinstance(sampler, ResolutionBatchSampler)
        self._start_where_resumed(sampler)
        return loader

    @property
    def train_sampler(self) -> ResolutionBatchSampler | None:
        """The training loader's batch sampler, once the loader exists."""
        loader = self._loaders.get("train@None")
        sampler = loader.batch_sampler if loader is not None else None
        return sampler if isinstance(sampler, ResolutionBatchSampler) else None

    def _start_where_resumed(self, sampler: ResolutionBatchSampler) -> None:
        """Start the sampler where a resumed run stopped.

        Lightning builds the train iterator (and prefetches from it) before it
        restores the loops from a checkpoint and before it calls ``set_epoch``;
        so the position saved by :meth:`state_dict` is applied here, while the
        sampler has not started the epoch yet.
        """
        if self._resume is not None:
            resume_position(sampler, self._resume)
            self._resume = None

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: where the training sampler is (:func:`sampler_position`)."""
        trainer, sampler = self.trainer, self.train_sampler
        if trainer is None or sampler is None:
            return {}
        done = batches_done_this_epoch(trainer)
        position = sampler_position(sampler, done)
        # an epoch cut short by trainer.limit_train_batches has ended at the limit: saved there (the
        # end-of-epoch checkpoint), it was read as mid-epoch, and the next epoch of the resumed run
        # ran only the sampler's batches beyond the limit (2 of 5)
        limit = trainer.num_training_batches
        if isinstance(limit, int) and 0 < limit <= done:
            position["batches"] = done
        return position

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning calls this before it builds the train loader of a resumed run."""
        self._resume = dict(state_dict) if state_dict else None

    def calibration_loader(self, size: Size) -> DataLoader:
        """Training images at ``size``, framed as evaluation frames them, shuffled (seeded by the run's
        seed): the unlabelled images BatchNorm statistics are re-estimated from (never an evaluation
        split's). Unsharded: the calibration runs on rank 0 alone and reads what a single process would."""
        return self._loader("train", shuffle=True, size=size, eval_framing=True)

    def _eval_loaders(self, split: str) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(split, shuffle=False, size=size) for size in self.eval_sizes]
        return loaders[0] if len(loaders) == 1 else loaders

    @property
    def extra_sizes_after_fit(self) -> bool:
        """True when fit validates at the main size only; the extra sizes wait for a validation after fit."""
        return not self.eval_sizes_every_epoch and len(self.eval_sizes) > 1

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        fitting = getattr(getattr(self.trainer, "state", None), "fn", None) == "fit"
        if fitting and self.extra_sizes_after_fit:
            return self._loader("val", shuffle=False, size=self.eval_sizes[0])
        return self._eval_loaders("val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loaders("test")
