"""The data module's loaders (:mod:`resflex.data.datamodule`): batch sizes per split, which framing
each loader uses, worker settings, aspect buckets, and validation during fit.

The loaders are built and read in the main process (``num_workers=0``) or only built (no worker
process starts), so each test takes a fraction of a second after the imports.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pytorch_lightning.accelerators import CPUAccelerator

from resflex.data.buckets import assign_buckets, image_sizes
from resflex.data.datamodule import ResflexDataModule
from resflex.data.datasets import SyntheticSource
from resflex.data.resolution import FixedResolution, FixResResolution


def _trainer(world_size: int = 1, global_rank: int = 0, fn: str | None = None) -> SimpleNamespace:
    """What the data module reads of a Lightning trainer."""
    return SimpleNamespace(
        accelerator=CPUAccelerator(),
        world_size=world_size,
        num_nodes=1,
        global_rank=global_rank,
        overfit_batches=0,
        max_epochs=1,
        callbacks=[],
        state=SimpleNamespace(fn=fn),
    )


def test_training_and_evaluation_batches_have_their_own_sizes_and_evaluation_reads_every_image() -> None:
    """batch_size=4 for training (the short last batch dropped), eval_batch_size=6 for validation
    and test: 10 validation images come as 6 + 4, none left out."""
    dm = ResflexDataModule(
        SyntheticSource(num_train=22, num_val=10, num_test=7),
        FixedResolution(32, geometry="square"),
        batch_size=4,
        eval_batch_size=6,
        num_workers=0,
    )
    assert [len(labels) for _, labels in dm.train_dataloader()] == [4] * 5
    assert [len(labels) for _, labels in dm.val_dataloader()] == [6, 4]
    assert [len(labels) for _, labels in dm.test_dataloader()] == [6, 1]
    unset = ResflexDataModule(
        SyntheticSource(8, 10, 0), FixedResolution(32, geometry="square"), batch_size=4, num_workers=0
    )
    assert [len(labels) for _, labels in unset.val_dataloader()] == [4, 4, 2]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # built, never iterated
def test_worker_settings_reach_the_loaders_and_calibration_keeps_no_workers_alive() -> None:
    """Persistent workers for the loaders read every epoch; the calibration loader is read once
    after fit, so its workers end with it. Without workers there is nothing to prefetch."""
    source = SyntheticSource(16, 8, 0)
    dm = ResflexDataModule(
        source, FixedResolution(32, geometry="square"), batch_size=4, num_workers=1, prefetch_factor=3
    )
    train, calibration = dm.train_dataloader(), dm.calibration_loader((32, 32))
    assert train.num_workers == calibration.num_workers == 1
    assert train.persistent_workers and not calibration.persistent_workers
    assert train.prefetch_factor == calibration.prefetch_factor == 3
    assert train.worker_init_fn is not None
    no_workers = ResflexDataModule(
        source, FixedResolution(32, geometry="square"), batch_size=4, num_workers=0
    ).train_dataloader()
    assert (no_workers.persistent_workers, no_workers.prefetch_factor, no_workers.worker_init_fn) == (
        False,
        None,
        None,
    )


def test_calibration_frames_training_images_as_evaluation_does_on_one_unsharded_process() -> None:
    """BatchNorm calibration: the eval framing (no random crop), every training image, even on rank 1 of 2."""
    dm = ResflexDataModule(
        SyntheticSource(12, 4, 0),
        FixedResolution(32, geometry="square"),
        batch_size=4,
        num_workers=0,
        eval_crop_pct=0.875,
    )
    dm.trainer = _trainer(world_size=2, global_rank=1)
    loader = dm.calibration_loader((32, 32))
    assert loader.dataset.transform is dm.eval_transform and dm.eval_transform.crop_pct == 0.875
    assert sorted(request[0] for batch in loader.batch_sampler for request in batch) == list(range(12))
    train = dm.train_dataloader()
    assert train.dataset.transform is dm.train_transform
    # the training loader is sharded: rank 1 reads its 6 images in one full batch of 4
    assert len([i for batch in train.batch_sampler for i in batch]) == 4


def test_a_phase_override_wins_over_data_augment() -> None:
    """FixRes' final phase trains with its own ``scale``, whatever ``data.augment.scale`` says."""
    schedule = FixResResolution(24, 32, final_epochs=1, final_augment={"scale": [0.9, 1.0]}).bind(3)
    dm = ResflexDataModule(
        SyntheticSource(8, 4, 0), schedule, batch_size=4, num_workers=0, augment={"scale": [0.2, 1.0]}
    )
    assert tuple(dm.train_transform.scale) == (0.2, 1.0)
    assert tuple(dm.phase_transforms[schedule.PHASE].scale) == (0.9, 1.0)


def test_keep_aspect_buckets_cover_every_image_of_a_sampled_split_and_merge_only_for_training() -> None:
    """The profile read 10 of 30 headers: buckets still come from every training image's size.

    A bucket of one training image joins its neighbour (no batch of one in training); the
    validation split keeps each image in its own nearest bucket, as it is framed.
    """
    source = SyntheticSource(30, 12, 0, min_side=24, max_side=96)
    aspects = (0.25, 0.5, 1.0, 2.0, 4.0)
    schedule = FixedResolution(32, geometry="keep_aspect", aspect_ratios=list(aspects))
    dm = ResflexDataModule(source, schedule, batch_size=4, num_workers=0, profile_images=10)
    assert len(dm.profile.sizes) == 10
    val = assign_buckets(image_sizes(source.splits["val"]), aspects)
    assert min(val.count(b) for b in set(val)) == 1  # a bucket of one image: kept for evaluation
    assert dm.buckets("val") == val
    expected = assign_buckets(image_sizes(source.splits["train"]), aspects)
    counts = {b: expected.count(b) for b in set(expected)}
    assert counts[0] == 1  # the training bucket of one image (aspect 1/4) ...
    train = dm.buckets("train")
    assert train is not None and len(train) == 30
    assert train == [1 if b == 0 else b for b in expected]  # ... joins the 1/2 bucket, nothing else moves


def test_under_ddp_every_training_bucket_gives_each_rank_at_least_two_images() -> None:
    """Two ranks: a bucket needs four images so that neither rank's share is a batch of one."""
    source = SyntheticSource(40, 8, 0, min_side=24, max_side=96)
    aspects = (0.25, 0.5, 1.0, 2.0, 4.0)
    single = assign_buckets(image_sizes(source.splits["train"]), aspects)
    assert single.count(0) == single.count(4) == 2  # kept on one process, merged under two ranks
    dm = ResflexDataModule(
        source, FixedResolution(32, geometry="keep_aspect", aspect_ratios=list(aspects)), num_workers=0
    )
    dm.trainer = _trainer(world_size=2)
    buckets = dm.buckets("train")
    assert buckets is not None and sorted(set(buckets)) == [1, 2, 3]
    assert all(buckets.count(b) >= 4 for b in set(buckets))


def test_fit_validates_at_the_main_size_only_when_extra_sizes_wait_until_after_fit() -> None:
    """``eval.sizes_every_epoch=false``: during fit one loader at the main size; after fit all sizes."""
    source = SyntheticSource(8, 6, 0)
    dm = ResflexDataModule(
        source,
        FixedResolution(32, geometry="square"),
        batch_size=4,
        num_workers=0,
        eval_resolutions=[24, 48],
        eval_sizes_every_epoch=False,
    )
    assert dm.extra_sizes_after_fit
    dm.trainer = _trainer(fn="fit")
    images, _ = next(iter(dm.val_dataloader()))
    assert tuple(images.shape[-2:]) == (32, 32)
    dm.trainer = _trainer(fn="validate")
    assert [tuple(next(iter(loader))[0].shape[-2:]) for loader in dm.val_dataloader()] == [
        (32, 32),
        (24, 24),
        (48, 48),
    ]
    every = ResflexDataModule(
        source, FixedResolution(32, geometry="square"), num_workers=0, eval_resolutions=[24, 48]
    )
    every.trainer = _trainer(fn="fit")
    assert not every.extra_sizes_after_fit and len(every.val_dataloader()) == 3
