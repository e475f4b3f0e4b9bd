"""The multi-resolution batch sampler: DDP agreement, resume, variable batch sizes, aspect buckets."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from resflex.data.buckets import assign_buckets, file_image_size, image_sizes
from resflex.data.datamodule import ResflexDataModule, SizedDataset
from resflex.data.datasets import ImageFolderSource, SyntheticSource
from resflex.data.resolution import (
    FixedResolution,
    FixResResolution,
    MultigridResolution,
    ProgressiveResolution,
    RandomResolution,
)
from resflex.data.sampler import ResolutionBatchSampler
from resflex.data.transforms import TrainTransform


def _epoch(sampler: ResolutionBatchSampler) -> list[list[tuple]]:
    return [list(batch) for batch in sampler]


def _sizes(batches: list[list[tuple]]) -> list[tuple[int, int]]:
    return [(batch[0][1], batch[0][2]) for batch in batches]


@pytest.mark.parametrize(
    "schedule",
    [
        RandomResolution(sizes=[32, 48, 64], seed=5),
        RandomResolution(sizes=[32, 64], batch_scaling=True, seed=5),
        MultigridResolution(size=64).bind(4),
        ProgressiveResolution(start_size=32, end_size=64).bind(4),
    ],
    ids=["random", "random+batch_scaling", "multigrid", "progressive"],
)
def test_ranks_agree_on_sizes_and_batch_sizes_and_share_out_every_sample(schedule) -> None:
    for epoch in range(3):
        per_rank = []
        for rank in range(4):
            sampler = ResolutionBatchSampler(
                103, 4, schedule, seed=1, rank=rank, world_size=4, drop_last=False
            )
            sampler.set_epoch(epoch)
            per_rank.append(_epoch(sampler))
        shapes = [[(len(b), b[0][1], b[0][2]) for b in batches] for batches in per_rank]
        assert all(s == shapes[0] for s in shapes), f"ranks disagree in epoch {epoch}"
        assert _sizes(per_rank[0]) == [schedule.size_at(epoch, t) for t in range(len(per_rank[0]))]
        seen = Counter(i for batches in per_rank for batch in batches for i, *_ in batch)
        assert set(seen) == set(range(103))  # 103 = 4 * 26 - 1: exactly one sample is repeated as padding
        assert sum(seen.values()) == 104


def test_variable_batch_sizes_cover_each_sample_once_and_len_follows_the_epoch() -> None:
    schedule = MultigridResolution(size=64, long_factors=[0.5, 1.0], short_factors=[0.5, 1.0]).bind(3)
    sampler = ResolutionBatchSampler(200, 8, schedule, seed=0, drop_last=False)
    assert sampler.varies_per_epoch
    lengths = [sampler.num_batches(e) for e in range(3)]
    assert lengths == [3, 10, 25]  # 128+32 per pair of steps, then 32+8, then 8 per step
    assert len(sampler) == 13  # before set_epoch: the mean (Lightning's LR-schedule length)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = _epoch(sampler)
        assert len(sampler) == len(batches) == lengths[epoch]
        indices = [i for batch in batches for i, *_ in batch]
        assert sorted(indices) == list(range(200))
        full = batches[:-1]
        assert [len(b) for b in full] == [schedule.batch_size_at(epoch, t, 8) for t in range(len(full))]


def test_each_epoch_has_a_new_order_the_same_for_the_same_seed_and_epoch() -> None:
    schedule = FixedResolution(32)
    sampler = ResolutionBatchSampler(64, 8, schedule, seed=4)
    orders = [[i for b in sampler.plan(e) for i in b.indices] for e in range(3)]
    assert all(sorted(order) == list(range(64)) for order in orders)
    assert orders[0] != orders[1] and orders[1] != orders[2]  # reshuffled every epoch
    fresh = ResolutionBatchSampler(64, 8, schedule, seed=4)  # another rank, or a resumed process
    assert [i for b in fresh.plan(1) for i in b.indices] == orders[1]
    unshuffled = ResolutionBatchSampler(64, 8, schedule, shuffle=False)
    assert [i for b in unshuffled.plan(2) for i in b.indices] == list(range(64))


def test_drop_last_drops_the_short_last_batch_but_never_the_whole_epoch() -> None:
    schedule = FixedResolution(32)

    def lengths(num_samples: int, drop_last: bool) -> list[int]:
        plan = ResolutionBatchSampler(num_samples, 8, schedule, drop_last=drop_last).plan(0)
        return [len(b.indices) for b in plan]

    assert lengths(20, drop_last=True) == [8, 8]
    assert lengths(20, drop_last=False) == [8, 8, 4]
    # a split smaller than one batch still trains: its one short batch is kept
    assert lengths(5, drop_last=True) == [5]


def test_keep_aspect_bucket_order_changes_each_epoch_and_spreads_small_buckets_over_it() -> None:
    """Each step draws a bucket weighted by what it has left, seeded by (seed, epoch): the aspects are
    mixed over the whole epoch (not a small bucket used up first) and differ from epoch to epoch."""
    schedule = FixedResolution(32, geometry="keep_aspect", aspect_ratios=[0.5, 2.0])
    buckets = [0] * 80 + [1] * 8
    positions, shapes = [], []
    for epoch in range(40):
        plan = ResolutionBatchSampler(88, 4, schedule, buckets=buckets, seed=0).plan(epoch)
        assert sorted(i for b in plan for i in b.indices) == list(range(88))
        shapes.append([b.size for b in plan])
        positions += [k / (len(plan) - 1) for k, b in enumerate(plan) if b.indices[0] >= 80]
    assert len(set(map(tuple, shapes))) > 10
    assert 0.35 < sum(positions) / len(positions) < 0.65  # drawn uniformly: about 0.1


def test_resume_mid_epoch_continues_with_the_same_sizes_and_samples() -> None:
    schedule = RandomResolution(sizes=[32, 48, 64], seed=2)
    full = ResolutionBatchSampler(64, 4, schedule, seed=9, training=True)
    full.set_epoch(3)
    expected = _epoch(full)
    resumed = ResolutionBatchSampler(64, 4, schedule, seed=9, training=True)  # a fresh process
    resumed.load_state_dict({"epoch": 3, "start_step": 6})
    assert len(resumed) == len(expected)  # Lightning counts the skipped batches itself
    assert _epoch(resumed) == expected[6:]
    assert len(_epoch(resumed)) == len(expected)  # the skip applies once


def test_fixres_final_phase_items_carry_the_phase_and_get_the_weaker_crop() -> None:
    schedule = FixResResolution(size=32, test_size=48, final_epochs=1, final_augment={"scale": [0.9, 1.0]})
    schedule.bind(2)
    sampler = ResolutionBatchSampler(16, 4, schedule, training=True)
    assert {item[1:] for batch in sampler for item in batch} == {(32, 32, None, 0)}
    sampler.set_epoch(1)
    assert {item[1:] for batch in sampler for item in batch} == {(48, 48, "fixres", 1)}
    dm = ResflexDataModule(SyntheticSource(16, 8, 0), schedule, batch_size=4, num_workers=0)
    assert dm.phase_transforms["fixres"].scale == (0.9, 1.0)
    assert dm.train_transform.scale != (0.9, 1.0)
    dataset = SizedDataset(dm.source.splits["train"], dm.train_transform, dm.phase_transforms)
    assert dataset[(0, 48, 48, "fixres")][0].shape == (3, 48, 48)


def test_real_dataloader_batches_have_exactly_the_scheduled_shapes() -> None:
    schedule = RandomResolution(sizes=[24, 40, [32, 48]], seed=0, batch_scaling=True)
    dataset = SizedDataset(SyntheticSource(40, 8, 0).splits["train"], TrainTransform())
    sampler = ResolutionBatchSampler(len(dataset), 4, schedule, drop_last=False, training=True)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=0)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        shapes = [tuple(images.shape) for images, _ in loader]
        plan = sampler.plan(epoch)
        assert shapes == [(len(b.indices), 3, *b.size) for b in plan]
        assert shapes[0][2:] == schedule.size_at(epoch, 0)
        assert {s[2:] for s in shapes} <= {(24, 24), (40, 40), (32, 48)}
        assert sum(s[0] for s in shapes) == 40
    images, labels = next(iter(loader))
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64


def test_keep_aspect_batches_are_non_square_and_cover_every_sample_once() -> None:
    source = SyntheticSource(120, 8, 0, min_side=24, max_side=96)
    schedule = FixedResolution(48, geometry="keep_aspect", multiple=8)
    dm = ResflexDataModule(source, schedule, batch_size=8, num_workers=0)
    loader = dm.train_dataloader()
    sampler = loader.batch_sampler
    for epoch in range(2):
        sampler.set_epoch(epoch)
        seen: list[int] = []
        shapes = []
        for batch, (images, _) in zip(sampler.plan(epoch), loader, strict=True):
            seen += batch.indices
            shapes.append(tuple(images.shape[-2:]))
            assert tuple(images.shape[-2:]) == batch.size
        assert sorted(seen) == list(range(120))
        non_square = [s for s in shapes if s[0] != s[1]]
        assert len(non_square) >= len(shapes) // 2
        assert all(min(h, w) == 48 for h, w in shapes)  # bucket_size=short_side: the short side is the size
        # every sample went to the bucket nearest its own aspect ratio
        buckets = assign_buckets(image_sizes(source.splits["train"]), schedule.aspect_ratios)
        for batch in sampler.plan(epoch):
            assert len({buckets[i] for i in batch.indices}) == 1
    val = dm.val_dataloader().batch_sampler
    assert sorted(i for b in val.plan(0) for i in b.indices) == list(range(8))


def test_keep_aspect_under_ddp_gives_every_rank_the_same_shapes() -> None:
    source = SyntheticSource(90, 8, 0, min_side=24, max_side=96)
    buckets = assign_buckets(image_sizes(source.splits["train"]), (0.5, 1.0, 2.0))
    schedule = RandomResolution(sizes=[32, 48], geometry="keep_aspect", aspect_ratios=[0.5, 1.0, 2.0], seed=3)
    plans = []
    for rank in range(3):
        sampler = ResolutionBatchSampler(90, 4, schedule, rank=rank, world_size=3, buckets=buckets, seed=1)
        plans.append(sampler.plan(2))
    assert [[(b.size, len(b.indices)) for b in p] for p in plans[1:]] == [
        [(b.size, len(b.indices)) for b in plans[0]]
    ] * 2
    assert set(range(90)) == {i for p in plans for b in p for i in b.indices}


def test_keep_aspect_under_ddp_gives_each_rank_a_full_batch_per_step() -> None:
    """data.batch_size is per rank, as for square: a step takes batch_size x world_size of a bucket."""
    schedule = FixedResolution(32, geometry="keep_aspect", aspect_ratios=[1.0])
    for rank in range(2):
        sampler = ResolutionBatchSampler(40, 4, schedule, rank=rank, world_size=2, buckets=[0] * 40)
        assert [len(b.indices) for b in sampler.plan(0)] == [4] * 5


def test_image_folder_sizes_come_from_headers_with_exif_rotation(tmp_path) -> None:
    from PIL import Image

    root = tmp_path / "imgs"
    (root / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (60, 20)).save(root / "train" / "a" / "wide.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 60x20, shown 20x60
    Image.new("RGB", (60, 20)).save(root / "train" / "a" / "rotated.jpg", exif=exif)
    assert file_image_size(str(root / "train" / "a" / "rotated.jpg")) == (20, 60)
    source = ImageFolderSource(str(root), val_fraction=0.5, seed=0)
    train = source.splits["train"]
    sizes = image_sizes(train)
    assert sizes == [train[i][0].size for i in range(len(train))]


def test_lightning_sets_the_epoch_on_the_batch_sampler() -> None:
    from lightning_fabric.utilities.data import _set_sampler_epoch

    loader = ResflexDataModule(SyntheticSource(16, 8, 0), FixedResolution(32), batch_size=4, num_workers=0)
    train = loader.train_dataloader()
    _set_sampler_epoch(train, 5)
    assert train.batch_sampler.epoch == 5


def test_datamodule_resumes_the_sampler_from_its_checkpoint_state() -> None:
    schedule = RandomResolution(sizes=[16, 24, 32], seed=0, geometry="square")
    dm = ResflexDataModule(SyntheticSource(64, 8, 0), schedule, batch_size=8, num_workers=0, seed=4)
    reference = ResolutionBatchSampler(64, 8, schedule, seed=4, training=True)
    reference.set_epoch(1)
    dm.load_state_dict({"epoch": 1, "step": 3})  # what Lightning restores before building the loader
    assert _epoch(dm.train_dataloader().batch_sampler) == _epoch(reference)[3:]
    finished = ResflexDataModule(SyntheticSource(64, 8, 0), schedule, batch_size=8, num_workers=0, seed=4)
    finished.load_state_dict({"epoch": 1, "step": 8})  # saved at the end of epoch 1: continue with epoch 2
    assert finished.train_dataloader().batch_sampler.epoch == 2


@pytest.mark.slow
def test_a_run_resumed_mid_epoch_continues_with_the_same_sizes(tmp_path) -> None:
    from tests.conftest import TINY, run_cli, scalar_tags

    common = [
        *(a for a in TINY if not a.startswith(("resolution.", "trainer.limit_train", "trainer.max_epochs"))),
        "trainer.max_epochs=2",
        "data.source.num_train=48",
        "data.source.num_val=8",
        "data.source.num_test=8",
        "resolution=random",
        "resolution.sizes=[16,24,32]",
        "test_after_fit=false",
    ]
    first = tmp_path / "first"
    mid = [
        "+callbacks.mid._target_=pytorch_lightning.callbacks.ModelCheckpoint",
        "+callbacks.mid.every_n_train_steps=8",
        "+callbacks.mid.save_top_k=-1",
        f"+callbacks.mid.dirpath={tmp_path / 'mid'}",
        "+callbacks.mid.filename=mid",
    ]
    result = run_cli([*common, *mid, f"hydra.run.dir={first}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    second = tmp_path / "second"
    result = run_cli(
        [*common, f"ckpt_path={tmp_path / 'mid' / 'mid.ckpt'}", f"hydra.run.dir={second}"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    original = dict(scalar_tags(first)["train/resolution"])
    resumed = dict(scalar_tags(second)["train/resolution"])
    assert min(resumed) == 9  # 6 steps per epoch; the checkpoint is at step 8 (epoch 1, step 2)
    assert resumed == {step: original[step] for step in resumed}
    assert len(set(resumed.values())) > 1


def test_training_never_gives_batchnorm_a_batch_of_one_in_keep_aspect() -> None:
    """A bucket of 65 at batch size 64 trains one batch of 65, not 64 + 1; a bucket of one image
    joins its nearest bucket (in log aspect) before planning."""
    from resflex.data.buckets import merge_small_buckets

    aspects = (0.5, 1.0, 2.0)
    buckets = merge_small_buckets([0] * 65 + [1] + [2] * 10, aspects, minimum=2)
    assert buckets[65] in (0, 2) and buckets[:65] == [0] * 65 and buckets[66:] == [2] * 10
    schedule = FixedResolution(32, geometry="keep_aspect", aspect_ratios=list(aspects))
    sampler = ResolutionBatchSampler(76, 64, schedule, drop_last=True, buckets=buckets, seed=0)
    for epoch in range(4):
        sizes = [len(batch.indices) for batch in sampler.plan(epoch)]
        assert min(sizes) >= 2, sizes
        assert sorted(i for b in sampler.plan(epoch) for i in b.indices) == list(range(76))
    # evaluation (drop_last=False) keeps exact batches: nothing is trained there
    evaluation = ResolutionBatchSampler(76, 64, schedule, shuffle=False, drop_last=False, buckets=buckets)
    assert sorted(len(b.indices) for b in evaluation.plan(0)) == sorted(
        [64, 1, 11] if buckets[65] == 2 else [64, 2, 10]
    )


def test_a_sample_request_is_a_tuple_whose_index_method_works() -> None:
    """A field named ``index`` hid ``tuple.index`` (``request.index(64)``: 'int' object is not callable)."""
    from resflex.data.naflex import TokenRequest
    from resflex.data.sampler import SampleRequest

    assert SampleRequest(7, 64, 48).index(64) == 1
    assert TokenRequest(7, 64, 48, None, 0, 96).index(96) == 5
    assert SampleRequest(7, 64, 48).sample_index == 7


def _requests(batches: list[list[tuple]]) -> list[tuple]:
    return [request for batch in batches for request in batch]


@pytest.mark.parametrize("geometry", ["square", "keep_aspect"])
def test_a_mid_epoch_resume_with_half_the_batch_finishes_the_epoch_on_its_plan(geometry: str) -> None:
    """Half ``data.batch_size`` (twice the accumulation) from a checkpoint at step 3: the rest of the
    epoch is the planned batches cut in two, the same images at the same sizes in the same order, and
    the steps before the cut keep their place (Lightning counts from the saved step); a second stop in
    that epoch resumes on the cut plan; the next epoch is planned with the new batch."""
    from resflex.data.sampler import resume_position, sampler_position

    aspects = [0.5, 1.0, 2.0]
    schedule = RandomResolution(sizes=[16, 24, 32], seed=3, geometry=geometry, aspect_ratios=aspects)
    buckets = [i % 3 for i in range(70)] if geometry == "keep_aspect" else None
    started = ResolutionBatchSampler(70, 8, schedule, seed=1, training=True, buckets=buckets)
    started.set_epoch(2)
    planned = _epoch(started)
    saved = sampler_position(started, done=3)

    resumed = ResolutionBatchSampler(70, 4, schedule, seed=1, training=True, buckets=buckets)
    resume_position(resumed, saved)
    rest = _epoch(resumed)
    assert _requests(rest) == _requests(planned[3:])  # same images, sizes, augmentation epoch, order
    pieces = iter(rest)
    for batch in planned[3:]:  # each planned batch is two near-equal pieces (one when under 4 images)
        cut = [next(pieces)]
        while sum(map(len, cut)) < len(batch):
            cut.append(next(pieces))
        assert len(cut) == max(1, min(2, len(batch) // 2)) and len(cut[0]) - len(cut[-1]) in (0, 1)
    assert len(resumed) == 3 + len(rest)  # Lightning's count goes on from the saved step to the end

    again = ResolutionBatchSampler(70, 4, schedule, seed=1, training=True, buckets=buckets)
    resume_position(again, sampler_position(resumed, done=3 + 5))  # stopped again, 5 pieces later
    assert _epoch(again) == rest[5:]

    resumed.set_epoch(3)
    planned_with_4 = ResolutionBatchSampler(70, 4, schedule, seed=1, training=True, buckets=buckets)
    planned_with_4.set_epoch(3)
    assert _epoch(resumed) == _epoch(planned_with_4)


def test_an_epochs_end_stays_one_when_the_resume_has_another_batch_size() -> None:
    """A checkpoint at the end of epoch 1 (``last.ckpt``, what a run that ran out of memory leaves)
    resumed with half the batch starts epoch 2: the new batch's longer epoch 1 must not be finished."""
    from resflex.data.sampler import resume_position, sampler_position

    schedule = RandomResolution(sizes=[16, 32], seed=0)
    started = ResolutionBatchSampler(48, 8, schedule, seed=2, training=True)
    started.set_epoch(1)
    saved = sampler_position(started, done=started.num_batches(1))
    resumed = ResolutionBatchSampler(48, 4, schedule, seed=2, training=True)
    resume_position(resumed, saved)
    assert (resumed.epoch, resumed.start_step) == (2, 0)
    reference = ResolutionBatchSampler(48, 4, schedule, seed=2, training=True)
    reference.set_epoch(2)
    assert _epoch(resumed) == _epoch(reference)


def test_cut_pieces_keep_the_ddp_padding_last_and_every_rank_the_same_steps() -> None:
    from resflex.data.sampler import PlannedBatch, cut_batch

    batch = PlannedBatch((16, 32), (24, 24), list(range(9)), None, padding=2)
    pieces = cut_batch(batch, 2)
    assert [p.indices for p in pieces] == [list(range(4)), list(range(4, 9))]  # near-equal halves
    assert [p.padding for p in pieces] == [0, 2] and {p.size for p in pieces} == {(16, 32)}
    assert [p.padding for p in cut_batch(batch, 3)] == [0, 0, 2]
    assert [len(p.indices) for p in cut_batch(batch._replace(indices=[0, 1, 2], padding=0), 4)] == [3]

    from resflex.data.sampler import resume_position, sampler_position

    schedule = RandomResolution(sizes=[16, 24], seed=1, geometry="keep_aspect", aspect_ratios=[0.5, 1.0, 2.0])
    buckets = [i % 3 for i in range(61)]
    plans = []
    for rank in range(2):
        args = {"seed": 0, "training": True, "buckets": buckets, "rank": rank, "world_size": 2}
        started = ResolutionBatchSampler(61, 6, schedule, **args)
        resumed = ResolutionBatchSampler(61, 3, schedule, **args)
        resume_position(resumed, sampler_position(started, done=2))
        plans.append(resumed.plan())
        assert [r.indices for r in resumed.plan()[2:]] == [
            p.indices for b in started.plan()[2:] for p in cut_batch(b, 2)
        ]
    assert [(b.size, len(b.indices)) for b in plans[0]] == [(b.size, len(b.indices)) for b in plans[1]]


def test_a_mid_epoch_resume_on_other_training_data_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """Images added or removed between a stop and its resume: the saved step skips into another plan
    (some images twice, others not at all) without a word."""
    import logging

    from resflex.data.sampler import resume_position, sampler_position

    schedule = RandomResolution(sizes=[16, 32], seed=3)
    started = ResolutionBatchSampler(180, 8, schedule, seed=1, training=True)
    saved = sampler_position(started, done=5)
    with caplog.at_level(logging.WARNING, logger="resflex"):
        resume_position(ResolutionBatchSampler(180, 8, schedule, seed=1, training=True), saved)
        assert "other training data" not in caplog.text  # the same data: nothing to say
        resume_position(ResolutionBatchSampler(199, 8, schedule, seed=1, training=True), saved)
    assert (
        "resumed mid-epoch on other training data: epoch 0 had 22 batches at the checkpoint and has 24"
        in (caplog.text)
    )
