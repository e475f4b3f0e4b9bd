"""NaFlex token batches (resflex.data.naflex): per-image sizes, the token-budget plan, collation, loaders."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from resflex.build import build_datamodule
from resflex.data.naflex import (
    NaFlexBatchSampler,
    NaFlexResolution,
    TokenBatch,
    collate_tokens,
    image_size_for_seq,
    step_loss_scale,
    token_schedule_of,
)
from resflex.errors import ConfigError
from tests.conftest import make_image_folder
from tests.test_configs import compose_train


@pytest.mark.parametrize(
    ("width", "height"), [(28, 28), (100, 25), (25, 100), (3, 5), (1, 1), (640, 480), (17, 333)]
)
@pytest.mark.parametrize("seq_len", [1, 16, 64, 100])
def test_image_size_keeps_the_aspect_within_the_sequence(width: int, height: int, seq_len: int) -> None:
    h, w = image_size_for_seq(width, height, 8, seq_len)
    assert h % 8 == 0 and w % 8 == 0 and h >= 8 and w >= 8
    assert (h // 8) * (w // 8) <= seq_len
    # one more patch row or column would not fit, unless the grid is already at its one-patch minimum
    grid_aspect, aspect = (w / 8) / (h / 8), width / height
    if min(h, w) > 8 and seq_len >= 4:
        assert abs(math.log(grid_aspect / aspect)) < math.log(1 + 2 / min(h // 8, w // 8)) + 1e-9


def sampler(schedule: NaFlexResolution, rank: int = 0, world: int = 1, **kwargs) -> NaFlexBatchSampler:
    sizes = [(20 + 7 * (i % 13), 20 + 5 * (i % 7)) for i in range(203)]  # (width, height), varied aspects
    args = dict(schedule=schedule, shuffle=True, training=True, drop_last=False, seed=3)
    args.update(batch_size=8, rank=rank, world_size=world)
    return NaFlexBatchSampler(num_samples=len(sizes), image_sizes=sizes, **{**args, **kwargs})


def test_sequence_length_and_batch_are_a_function_of_seed_epoch_step() -> None:
    schedule = NaFlexResolution(
        seq_lens=[16, 32, 64], max_seq_len=32, patch_size=8, tokens_per_batch=None, seed=5
    )
    ranks = [sampler(schedule, rank, 2) for rank in range(2)]
    for epoch in (0, 1):
        plans = []
        for s in ranks:
            s.set_epoch(epoch)
            plans.append(list(s))
        assert len(plans[0]) == len(plans[1]) == ranks[0].num_batches(epoch)
        for step, (a, b) in enumerate(zip(*plans, strict=True)):
            seq_len = schedule.size_at(epoch, step)[0]
            assert a[0].seq_len == b[0].seq_len == seq_len  # every rank, every step: the same length
            assert {r.seq_len for r in a} == {seq_len}
            if step < len(plans[0]) - 1:  # the budget: 8 images at 64 tokens = 512 tokens
                assert len(a) == len(b) == 512 // seq_len
            for r in a:
                assert (r.h // 8) * (r.w // 8) <= seq_len
        seen = [r.sample_index for plan in plans for batch in plan for r in batch]
        assert set(seen) == set(range(203))  # every sample, sharded over the two ranks
    lengths = [[schedule.size_at(e, t)[0] for t in range(20)] for e in (0, 1)]
    assert lengths[0] != lengths[1]  # a new draw each epoch
    assert set(lengths[0]) == {16, 32, 64}


def test_a_step_never_takes_more_tokens_than_the_budget() -> None:
    """tokens_per_batch // s images per step, rounded down: 1000 tokens are 10 images of 96, not 11."""
    schedule = NaFlexResolution(seq_lens=[48, 96], max_seq_len=96, patch_size=8, tokens_per_batch=1000)
    assert schedule.batch_for(96, 8) == 10 and schedule.batch_for(48, 8) == 20
    assert schedule.batch_for(1000, 8) == 1 and schedule.batch_for(2000, 8) == 1  # at least one image
    for seq_len in (48, 96):
        assert schedule.batch_for(seq_len, 8) * seq_len <= 1000


def test_a_resumed_sampler_continues_with_the_same_batches() -> None:
    schedule = NaFlexResolution(
        seq_lens=[16, 32, 64], max_seq_len=32, patch_size=8, tokens_per_batch=None, seed=5
    )
    full = sampler(schedule)
    full.set_epoch(2)
    batches = list(full)
    resumed = sampler(schedule)  # a new process: nothing cached
    resumed.load_state_dict({"epoch": 2, "start_step": 5})
    assert list(resumed) == batches[5:]
    assert list(resumed) == batches  # the skip applies once


def test_a_resume_with_half_the_token_budget_finishes_the_epoch_on_its_plan() -> None:
    """The out-of-memory hint's half ``resolution.tokens_per_batch`` from a checkpoint at step 4: the
    rest of the epoch is its planned token batches, each cut in two (the same images at the same
    sequence lengths); the next epoch is planned with the new budget."""
    from resflex.data.sampler import resume_position, sampler_position

    def schedule(tokens: int) -> NaFlexResolution:
        return NaFlexResolution(
            seq_lens=[16, 32], max_seq_len=32, patch_size=8, tokens_per_batch=tokens, seed=5
        )

    started = sampler(schedule(512))
    started.set_epoch(1)
    planned = list(started)
    resumed = sampler(schedule(256))
    resume_position(resumed, sampler_position(started, done=4))
    rest = list(resumed)
    assert [r for b in rest for r in b] == [r for b in planned[4:] for r in b]
    assert len(rest) == 2 * len(planned[4:]) and len(resumed) == 4 + len(rest)
    assert max(sum(r.seq_len for r in b) for b in rest) <= 256  # each piece within the new budget
    resumed.set_epoch(2)
    fresh = sampler(schedule(256))
    fresh.set_epoch(2)
    assert list(resumed) == list(fresh)


def test_evaluation_at_one_sequence_length_covers_the_split_in_order() -> None:
    schedule = NaFlexResolution(seq_lens=[16, 64], max_seq_len=32, patch_size=8, tokens_per_batch=256)
    s = sampler(schedule, shuffle=False, training=False, fixed_size=(32, 32))
    batches = list(s)
    assert [r.sample_index for b in batches for r in b] == list(range(203))
    assert {len(b) for b in batches[:-1]} == {256 // 32}
    requests = [r for b in batches for r in b]
    assert {r.seq_len for r in requests} == {32} and all(r.epoch is None for r in requests)


def test_collation_pads_to_the_longest_sequence_and_masks() -> None:
    shapes = [(16, 32), (8, 8), (24, 16)]  # 2x4, 1x1 and 3x2 patch grids of 8 px
    items = [(torch.full((3, h, w), k, dtype=torch.uint8), k) for k, (h, w) in enumerate(shapes)]
    batch, labels = collate_tokens(items, 8, seq_len=9)
    assert isinstance(batch, TokenBatch) and labels.tolist() == [0, 1, 2]
    assert batch.patches.shape == (3, 8, 8 * 8 * 3) and batch.patches.dtype == torch.uint8
    assert batch.patch_valid.sum(1).tolist() == [8, 1, 6]
    assert batch.grid_sizes().tolist() == [[2, 4], [1, 1], [3, 2]]
    assert batch.patch_coord[0, :8].tolist() == [[y, x] for y in range(2) for x in range(4)]
    assert float(batch.padding_share) == pytest.approx(1 - 15 / 24)
    assert batch.shape == (3, 9, 9) and len(batch) == 3
    assert (batch.patches[2, :6] == 2).all() and (batch.patches[1, 1:] == 0).all()
    normalized = batch.normalized(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0]))
    first = normalized.patches[0, 0].view(-1, 3)  # channels last within a patch: (value - mean) / std
    assert first[0].tolist() == [-0.5, -1.0, -1.5]
    # one patch over the step's length is refused, not silently batched past the token budget
    with pytest.raises(RuntimeError, match="10 patches, more than the step's 9"):
        collate_tokens([(torch.zeros((3, 16, 40), dtype=torch.uint8), 0)], 8, seq_len=9)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"tokens_per_batch": 63}, "below one image"),
        ({"seq_lens": []}, "non-empty list"),
        ({"seq_lens": [16, 0]}, "resolution.seq_lens"),
        ({"loss_scale": "cubic"}, "resolution.loss_scale"),
        ({"geometry": "keep_aspect"}, "resolution.geometry"),
    ],
)
def test_bad_schedules_fail_in_one_line(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        NaFlexResolution(**{"seq_lens": [16, 64], **kwargs})


def test_loss_scale_follows_timm() -> None:
    linear = NaFlexResolution(seq_lens=[16, 64], patch_size=8, tokens_per_batch=None)
    assert linear.loss_scale_for(32, batch_size=8) == 4.0  # 32 images where 8 fit at the longest length
    assert (
        NaFlexResolution(seq_lens=[16, 64], tokens_per_batch=None, loss_scale="sqrt").loss_scale_for(32, 8)
        == 2.0
    )
    assert (
        NaFlexResolution(seq_lens=[16, 64], tokens_per_batch=None, loss_scale="none").loss_scale_for(32, 8)
        == 1.0
    )


def test_the_training_side_reads_the_loss_scale_through_the_data_layer() -> None:
    """``training/naflex.py`` hands the trainer's data module to :func:`step_loss_scale`: anything that is
    not a NaFlex data module (image batches, no data module at all) scales by 1."""
    from types import SimpleNamespace

    naflex = SimpleNamespace(
        schedule=NaFlexResolution(seq_lens=[16, 64], tokens_per_batch=None), batch_size=8
    )
    assert token_schedule_of(naflex) is naflex.schedule and step_loss_scale(naflex, 32) == 4.0
    images = SimpleNamespace(schedule=object(), batch_size=8)
    assert token_schedule_of(images) is None and step_loss_scale(images, 32) == 1.0
    assert token_schedule_of(None) is None and step_loss_scale(None, 32) == 1.0


def test_the_data_module_makes_token_loaders(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images", per_class=8, splits=("train", "val"))
    cfg = compose_train(
        [
            "backbone=naflexvit",
            "resolution=naflex",
            "data=imagefolder",
            f"data.root={folder}",
            "data.num_workers=0",
            "data.batch_size=4",
            "resolution.tokens_per_batch=null",  # data.batch_size images at the longest length
            "eval.seq_lens=[16,96]",
        ],
        tmp_path,
    )
    datamodule = build_datamodule(cfg)
    assert datamodule.eval_sizes == [(64, 64), (16, 16), (96, 96)]  # max_seq_len first, then eval.seq_lens
    datamodule.schedule.bind(1)
    batch, labels = next(iter(datamodule.train_dataloader()))
    seq_len = datamodule.schedule.size_at(0, 0)[0]
    assert isinstance(batch, TokenBatch) and batch.seq_len == seq_len
    assert len(labels) == len(batch) == 4 * 96 // seq_len
    assert int(batch.patch_valid.sum(1).max()) <= seq_len and batch.patches.shape[-1] == 8 * 8 * 3
    loaders = datamodule.val_dataloader()
    for loader, (s, _) in zip(loaders, datamodule.eval_sizes, strict=True):
        batch, _ = next(iter(loader))
        assert batch.seq_len == s and int(batch.patch_valid.sum(1).max()) <= s
