"""Resolution schedules: the size (and batch size) they give at chosen epochs and steps."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from resflex.data.resolution import (
    FixedResolution,
    FixResResolution,
    MultigridResolution,
    MultiScaleResolution,
    ProgressiveResolution,
    RandomResolution,
)
from resflex.data.sizes import round_to
from resflex.errors import ConfigError


def test_round_to_rounds_half_up_and_never_below_the_multiple() -> None:
    assert [round_to(v, 16) for v in (40, 56, 3, 71.9, 72)] == [48, 64, 16, 64, 80]


def test_fixed_is_constant_and_eval_size_defaults_to_it() -> None:
    s = FixedResolution(48)
    assert {s.size_at(e, t) for e in range(3) for t in range(5)} == {(48, 48)}
    assert s.eval_size == (48, 48)
    assert FixedResolution(48, eval_size=64).eval_size == (64, 64)
    assert s.batch_size_at(0, 0, 32) == 32


def test_progressive_ramps_ffcv_style_with_rounding_and_final_phase() -> None:
    s = ProgressiveResolution(start_size=32, end_size=64, start_epoch=1, end_epoch=5, multiple=16)
    s.bind(8)
    # epochs 0-1 at start, ramp 32 -> 64 over epochs 1..5 (40, 48, 56 rounded to 16), then end
    assert [s.size_at(e, 0)[0] for e in range(8)] == [32, 32, 48, 48, 64, 64, 64, 64]
    assert s.size_at(3, 999) == s.size_at(3, 0)  # per epoch, not per step
    final = ProgressiveResolution(start_size=32, end_size=64, final_size=96, final_epochs=2, multiple=8).bind(
        6
    )
    # ramp ends on the last epoch before the final phase (epoch 3), then 2 epochs at 96
    assert [final.size_at(e, 0)[0] for e in range(6)] == [32, 40, 56, 64, 96, 96]
    assert final.eval_size == (96, 96)
    assert final.train_sizes() == [(32, 32), (40, 40), (56, 56), (64, 64), (96, 96)]
    # a start size off the multiple is kept as given up to start_epoch, itself included; the ramp rounds
    odd = ProgressiveResolution(start_size=40, end_size=64, start_epoch=1, end_epoch=3, multiple=16).bind(5)
    assert [odd.size_at(e, 0)[0] for e in range(5)] == [40, 40, 48, 64, 64]


def test_progressive_needs_max_epochs_and_checks_the_epoch_order() -> None:
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs"):
        ProgressiveResolution().bind(-1)
    with pytest.raises(ConfigError, match=r"resolution\.end_epoch"):
        ProgressiveResolution(start_epoch=4, end_epoch=2)


def test_random_is_a_pure_function_of_seed_epoch_step_and_follows_probs() -> None:
    s = RandomResolution(sizes=[32, 48, 64], probs=[0.5, 0.25, 0.25], seed=3)
    draws = [s.size_at(e, t) for e in range(4) for t in range(500)]
    same = RandomResolution(sizes=[32, 48, 64], probs=[0.5, 0.25, 0.25], seed=3)
    other = RandomResolution(sizes=[32, 48, 64], probs=[0.5, 0.25, 0.25], seed=4)
    assert draws == [same.size_at(e, t) for e in range(4) for t in range(500)]
    assert draws != [other.size_at(e, t) for e in range(4) for t in range(500)]
    assert draws[:500] != draws[500:1000]  # a new draw each epoch, not the same sizes step for step
    share = draws.count((32, 32)) / len(draws)
    assert 0.45 < share < 0.55
    assert s.eval_size == (64, 64)
    zero = RandomResolution(sizes=[32, 64], probs=[0.0, 1.0])
    assert {zero.size_at(0, t) for t in range(50)} == {(64, 64)}
    assert zero.train_sizes() == [(64, 64)]


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        ([0.5, 0.6, 0.1], "sum to 1"),
        ([0.5, 0.5], "resolution.probs has 2 entries"),
        ([1.2, -0.2, 0.0], ">= 0"),
    ],
)
def test_random_rejects_bad_probs_naming_the_key(probs: list[float], match: str) -> None:
    with pytest.raises(ConfigError, match=r"resolution\.probs") as info:
        RandomResolution(sizes=[32, 48, 64], probs=probs)
    assert match in str(info.value)


def test_multigrid_long_and_short_cycles_keep_pixels_per_batch_constant() -> None:
    s = MultigridResolution(size=64, long_factors=[0.5, 1.0], short_factors=[0.5, 1.0], final_epochs=1)
    s.bind(5)  # epochs 0-1: long factor 0.5, epochs 2-3: 1.0, epoch 4: final phase at 64
    assert [s.size_at(0, t) for t in range(4)] == [(16, 16), (32, 32), (16, 16), (32, 32)]
    assert [s.size_at(2, t) for t in range(2)] == [(32, 32), (64, 64)]
    assert [s.size_at(4, t) for t in range(3)] == [(64, 64)] * 3
    assert [s.batch_size_at(0, t, 8) for t in range(2)] == [128, 32]
    assert [s.batch_size_at(2, t, 8) for t in range(2)] == [32, 8]
    assert s.batch_size_at(4, 0, 8) == 8
    for epoch in range(5):
        for step in range(2):
            h, w = s.size_at(epoch, step)
            assert s.batch_size_at(epoch, step, 8) * h * w == 8 * 64 * 64
    capped = MultigridResolution(size=64, long_factors=[0.5], short_factors=[], max_batch_size=20).bind(3)
    assert capped.batch_size_at(0, 0, 8) == 20


def test_multigrid_several_long_cycles() -> None:
    s = MultigridResolution(size=64, long_factors=[0.5, 1.0], short_factors=[], long_cycles=2, final_epochs=0)
    s.bind(8)
    assert [s.size_at(e, 0)[0] for e in range(8)] == [32, 32, 64, 64, 32, 32, 64, 64]


def test_fixres_switches_size_and_augmentation_in_the_last_epochs() -> None:
    s = FixResResolution(size=48, test_size=64, final_epochs=2, final_augment={"scale": [0.9, 1.0]}).bind(5)
    assert [s.size_at(e, 0)[0] for e in range(5)] == [48, 48, 48, 64, 64]
    assert [s.augment_at(e, 0) for e in range(5)] == [None, None, None, "fixres", "fixres"]
    assert s.augment_phases == {"fixres": {"scale": [0.9, 1.0]}}
    assert s.eval_size == (64, 64)


def test_batch_scaling_grows_the_batch_at_small_sizes_up_to_the_cap() -> None:
    s = RandomResolution(sizes=[32, 64], batch_scaling=True, max_batch_size=24)
    sizes = {s.size_at(0, t): s.batch_size_at(0, t, 8) for t in range(20)}
    assert sizes == {(64, 64): 8, (32, 32): 24}  # 32 would get 8 * 4 = 32, capped at 24
    assert s.varies_batch_size
    assert not FixedResolution(32, batch_scaling=True).varies_batch_size
    # above the reference size the batch shrinks, but never below one image (2 * 32² / 64² = 0.5)
    small_ref = RandomResolution(sizes=[32, 64], batch_scaling=True, reference_size=32)
    assert {small_ref.size_at(0, t): small_ref.batch_size_at(0, t, 2) for t in range(20)} == {
        (32, 32): 2,
        (64, 64): 1,
    }
    # a non-square reference counts its h x w pixels: 8 * (32 * 64) / 32² = 16
    wide_ref = FixedResolution(32, batch_scaling=True, reference_size=[32, 64])
    assert wide_ref.batch_size_at(0, 0, 8) == 16


def test_keep_aspect_bucket_shapes_keep_the_short_side_or_the_area() -> None:
    s = FixedResolution(64, geometry="keep_aspect", multiple=8)
    assert s.shape_for((64, 64), 1.0) == (64, 64)
    assert s.shape_for((64, 64), 2.0) == (64, 128)  # short side = the size, as a square crop has it
    assert s.shape_for((64, 64), 0.75) == (88, 64)  # 85.3 rounded to the multiple
    area = FixedResolution(64, geometry="keep_aspect", multiple=8, bucket_size="area")
    h, w = area.shape_for((64, 64), 2.0)
    assert (h, w) == (48, 88) and abs(h * w - 64 * 64) / (64 * 64) < 0.05
    with pytest.raises(ConfigError, match=r"resolution\.bucket_size"):
        FixedResolution(64, bucket_size="long_side")
    with pytest.raises(ConfigError, match=r"resolution\.geometry"):
        FixedResolution(64, geometry="round")


def test_multiscale_draws_around_the_target_size_at_a_fixed_runs_pixel_cost() -> None:
    s = MultiScaleResolution(size=64, seed=3, probs=[0.2, 0.2, 0.3, 0.2, 0.1])
    assert s.train_sizes() == [(32, 32), (48, 48), (64, 64), (80, 80), (96, 96)]
    assert s.eval_size == (64, 64) and s.reference_size == (64, 64)
    assert s.pixel_cost() == pytest.approx(1.0)
    draws = [s.size_at(e, t) for e in range(4) for t in range(500)]
    assert draws == [MultiScaleResolution(size=64, seed=3, probs=[0.2, 0.2, 0.3, 0.2, 0.1]).size_at(e, t)
                     for e in range(4) for t in range(500)]  # fmt: skip
    assert 0.27 < draws.count((64, 64)) / len(draws) < 0.33
    measured = sum(h * w for h, w in draws) / len(draws) / (64 * 64)
    assert measured == pytest.approx(1.0, abs=0.05)
    # sizes follow resolution.size and are rounded to the multiple; non-square targets scale both sides
    forty = MultiScaleResolution(size=40, scales=[0.6, 1.0, 1.6])
    assert forty.train_sizes() == [(24, 24), (40, 40), (64, 64)]
    assert MultiScaleResolution(size=[32, 64], scales=[0.5, 1.0]).train_sizes() == [(16, 32), (32, 64)]
    assert MultiScaleResolution(size=64, eval_size=96).eval_size == (96, 96)
    # resolution.multiple rounds the drawn sides: 0.6 x 64 = 38.4 is 32 at multiple 16 (40 at 8)
    sixteen = MultiScaleResolution(size=64, scales=[0.6, 1.0], multiple=16)
    assert sixteen.train_sizes() == [(32, 32), (64, 64)] and sixteen.multiple == 16


def test_multiscale_final_epochs_run_at_the_target_size() -> None:
    s = MultiScaleResolution(size=64, seed=1, final_epochs=2).bind(5)
    assert s.needs_max_epochs
    assert {s.size_at(e, t) for e in (3, 4) for t in range(50)} == {(64, 64)}
    assert len({s.size_at(2, t) for t in range(50)}) > 1  # epoch 2 still draws around the size
    with pytest.raises(RuntimeError, match="bind"):
        MultiScaleResolution(size=64, final_epochs=1).size_at(0, 0)


@pytest.mark.parametrize(("scales", "match"), [([], "non-empty"), ([0.5, -1.0], r"\(0, 4\]"), (2.0, "list")])
def test_multiscale_rejects_bad_scales_naming_the_key(scales: object, match: str) -> None:
    with pytest.raises(ConfigError, match=r"resolution\.scales") as info:
        MultiScaleResolution(size=64, scales=scales)  # type: ignore[arg-type]
    assert info.match(match)


@pytest.mark.parametrize("name", ["fixed", "progressive", "random", "multigrid", "fixres", "multiscale"])
def test_every_config_instantiates(name: str, tmp_path: Path) -> None:
    from tests.test_configs import compose_train

    schedule = instantiate(compose_train([f"resolution={name}"], tmp_path).resolution).bind(4)
    assert schedule.size_at(0, 0)[0] > 0
    assert schedule.eval_size[0] > 0


def test_fixres_run_reaches_its_final_phase_at_the_test_size(tmp_path: Path) -> None:
    """resolution=fixres through a real Trainer: the final epoch trains at test_size; val runs at it."""
    from resflex.train import train
    from tests.conftest import TINY, TINY_SYNTHETIC, scalar_tags
    from tests.test_configs import compose_train

    overrides = [
        *(a for a in TINY if not a.startswith(("resolution.", "trainer.max_epochs", "trainer.limit_train"))),
        *TINY_SYNTHETIC,
        "resolution=fixres",
        "resolution.size=16",
        "resolution.test_size=32",
        "resolution.final_epochs=1",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        "eval.resolutions=[]",
        "test_after_fit=false",
    ]
    record = train(compose_train(overrides, tmp_path))
    assert record["status"] == "completed"
    tags = scalar_tags(tmp_path)
    sizes = [value for _, value in sorted(tags["train/resolution"])]
    assert sizes == [16.0, 16.0, 32.0, 32.0]  # epoch 0 at size, the final epoch at test_size
    assert "val/acc@32" in record["metrics"] and "val/acc@16" not in record["metrics"]  # eval at test_size
