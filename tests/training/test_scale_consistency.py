"""Issue 26, size robustness: model.scale_consistency, a smaller view of each training batch pulled to the
main view's detached predictions (resflex.training.scale_consistency)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resflex.build import build_module
from resflex.errors import ResflexError, find_user_error
from resflex.models.backbone import TimmBackbone
from resflex.models.classifier import ImageClassifier
from resflex.models.naflex import check_naflex_config
from resflex.models.pooling import AvgPool
from resflex.preflight import meta_model
from resflex.train import train
from resflex.training.module import ClassificationModule
from resflex.training.optim import OptimizerFactory
from resflex.training.scale_consistency import ScaleConsistency, frozen_bn_stats, small_size
from tests.conftest import TINY, TINY_NAFLEX_MODEL, TINY_SYNTHETIC, run_cli, scalar_tags
from tests.test_configs import compose_train

NUM_CLASSES = 5

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def _module(**kwargs: object) -> ClassificationModule:
    """A module with the term off unless asked for, and then on every step (the tests' clear cases)."""
    torch.manual_seed(0)
    model = ImageClassifier(TimmBackbone("test_resnet"), AvgPool(), num_classes=NUM_CLASSES)
    kwargs.setdefault("channels_last", False)
    kwargs.setdefault("scale_consistency", 0.0)
    kwargs.setdefault("scale_consistency_prob", 1.0)
    return ClassificationModule(model, optimizer=OptimizerFactory(), **kwargs)


def _batch(module: ClassificationModule, n: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)
    return module.on_after_batch_transfer((images, torch.arange(n) % NUM_CLASSES), 0)


def _bn_buffers(module: ClassificationModule) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.model.state_dict().items() if "running" in k or "tracked" in k}


def _reference_kl(main: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """KL(softmax(main) || softmax(small)), batch mean, T = 1, with plain ops."""
    p = torch.exp(main) / torch.exp(main).sum(dim=1, keepdim=True)
    return (p * (torch.log(p) - torch.log_softmax(small, dim=1))).sum() / len(main)


def test_on_by_default_at_weight_0_75_a_view_on_16_percent_of_the_steps_the_smaller_twice_as_often(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    net = ImageClassifier(TimmBackbone("test_resnet"), AvgPool(), num_classes=NUM_CLASSES)
    module = ClassificationModule(net, optimizer=OptimizerFactory())  # the Python defaults
    config = meta_model(compose_train([], tmp_path).model)  # the config's
    for view in (module.scale_view, config.scale_view):
        assert (view.weight, view.factors, view.prob) == (0.75, (0.6, 0.6, 1.4), 0.16)
    drawn = [module.scale_view.draw(epoch, step) for epoch in range(8) for step in range(100)]
    views = [f for f in drawn if f is not None]
    assert 0.12 < len(views) / len(drawn) < 0.20
    assert 0.55 < views.count(0.6) / len(views) < 0.78 and set(views) == {0.6, 1.4}


def test_weight_zero_is_todays_loss() -> None:
    default, zero = _module(), _module(scale_consistency=0.0, scale_consistency_prob=1.0)
    assert default.scale_view is None and zero.scale_view is None  # no extra compute
    assert _module(scale_consistency=1.0, scale_consistency_prob=0.0).scale_view is None
    batch = _batch(default, 6, 32, 32)
    loss = default.training_step((batch[0].clone(), batch[1]), 0)
    assert torch.equal(loss, zero.training_step((batch[0].clone(), batch[1]), 0))
    reference = _module()
    logits = reference(batch[0])
    assert torch.equal(loss, F.cross_entropy(logits, batch[1], label_smoothing=0.1))


@pytest.mark.parametrize(
    ("h", "w", "factor", "small"),
    [(40, 40, 0.6, (24, 24)), (40, 56, 0.6, (24, 32)), (40, 56, 1.4, (56, 80))],  # 1.4: a larger view
)
def test_the_loss_is_the_cross_entropy_plus_the_weighted_kl(
    h: int, w: int, factor: float, small: tuple[int, int]
) -> None:
    module = _module(scale_consistency=0.5, scale_consistency_factors=[factor])
    images, labels = _batch(module, 4, h, w)
    seen: list[tuple[int, int]] = []
    module.model.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape[-2:])))
    loss = module.training_step((images.clone(), labels), 3)
    assert seen == [(h, w), small]
    assert module.train_pixels.pixels == 4 * (h * w + small[0] * small[1])  # both views: train/megapixels

    reference = _module()  # the same weights; train mode: batch statistics, as in the step
    main = reference(images)
    view = F.interpolate(images, size=small, mode="bilinear", antialias=True, align_corners=False)
    expected = F.cross_entropy(main, labels, label_smoothing=0.1) + 0.5 * _reference_kl(main, reference(view))
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)
    assert loss > F.cross_entropy(main, labels, label_smoothing=0.1)


@pytest.mark.parametrize(("factor", "small", "kept"), [(1.4, (56, 80), 2), (0.6, (24, 32), 4)])
def test_max_pixels_gives_a_view_the_batchs_first_images_up_to_the_main_views_pixels(
    factor: float, small: tuple[int, int], kept: int
) -> None:
    """At 1.0 a 1.4x view (56x80 of 40x56: twice the pixels an image) takes half the batch, the
    0.6x view all of it; the term is the KL of those images alone, and train/megapixels counts them."""
    module = _module(
        scale_consistency=0.5, scale_consistency_factors=[factor], scale_consistency_max_pixels=1.0
    )
    images, labels = _batch(module, 4, 40, 56)
    seen: list[tuple[int, ...]] = []
    module.model.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
    loss = module.training_step((images.clone(), labels), 3)
    assert seen == [(4, 3, 40, 56), (kept, 3, *small)]
    assert module.train_pixels.pixels == 4 * 40 * 56 + kept * small[0] * small[1]

    reference = _module()
    main = reference(images)
    view = F.interpolate(images[:kept], size=small, mode="bilinear", antialias=True, align_corners=False)
    expected = F.cross_entropy(main, labels, label_smoothing=0.1) + 0.5 * _reference_kl(
        main[:kept], reference(view)
    )
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)


def test_max_pixels_keeps_at_least_one_image_and_never_more_than_the_batch() -> None:
    view = _module(scale_consistency=1.0, scale_consistency_max_pixels=0.01).scale_view
    assert view.view_images(8, (64, 64), (88, 88)) == 1
    assert view.view_images(8, (64, 64), (40, 40)) == 1  # 0.01 of the pixels: fewer than one image
    wide = _module(scale_consistency=1.0, scale_consistency_max_pixels=2.0).scale_view
    assert wide.view_images(8, (64, 64), (88, 88)) == 8 and wide.view_images(8, (64, 64), (40, 40)) == 8
    assert _module(scale_consistency=1.0).scale_view.view_images(8, (64, 64), (88, 88)) == 8  # null: all
    assert (
        _module(scale_consistency=1.0, scale_consistency_max_pixels=1.0).scale_view.view_images(
            8, (64, 64), (88, 88)
        )
        == 4
    )  # 8 * 4096 / 7744 = 4.2


@pytest.mark.parametrize(("factor", "small"), [(1.4, (56, 80)), (0.6, (24, 32))])
def test_share_gives_every_view_that_share_of_the_batchs_first_images(
    factor: float, small: tuple[int, int]
) -> None:
    """At 0.5 either view takes the first half of the batch; the term is their KL alone."""
    module = _module(scale_consistency=0.5, scale_consistency_factors=[factor], scale_consistency_share=0.5)
    images, labels = _batch(module, 4, 40, 56)
    seen: list[tuple[int, ...]] = []
    module.model.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
    loss = module.training_step((images.clone(), labels), 3)
    assert seen == [(4, 3, 40, 56), (2, 3, *small)]
    assert module.train_pixels.pixels == 4 * 40 * 56 + 2 * small[0] * small[1]

    reference = _module()
    main = reference(images)
    view = F.interpolate(images[:2], size=small, mode="bilinear", antialias=True, align_corners=False)
    expected = F.cross_entropy(main, labels, label_smoothing=0.1) + 0.5 * _reference_kl(
        main[:2], reference(view)
    )
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)


def test_share_and_max_pixels_together_take_the_smaller_and_at_least_one_image() -> None:
    view = _module(
        scale_consistency=1.0, scale_consistency_share=0.5, scale_consistency_max_pixels=1.0
    ).scale_view
    assert view.view_images(8, (64, 64), (40, 40)) == 4  # the share: 4 images (the pixel cap allows 8)
    assert view.view_images(8, (64, 64), (88, 88)) == 4  # both allow 4
    assert view.view_images(10, (64, 64), (88, 88)) == 5  # the share 5, the pixel cap 5.3
    assert view.view_images(32, (64, 64), (128, 128)) == 8  # the cap: a quarter of the batch
    tiny = _module(scale_consistency=1.0, scale_consistency_share=0.01).scale_view
    assert tiny.view_images(8, (64, 64), (40, 40)) == 1


def test_the_main_view_is_detached_and_the_small_view_gets_the_gradient() -> None:
    module = _module(scale_consistency=1.0)
    images, _ = _batch(module, 4, 32, 32)
    images.requires_grad_(True)
    logits = module(images)
    term = module.scale_view.term(module.model, images, logits, 0, 0)
    grad, logits_grad = torch.autograd.grad(term, (images, logits), allow_unused=True)
    assert grad.abs().sum() > 0  # through the small view
    assert term.grad_fn is not None and logits.requires_grad
    assert logits_grad is None  # the teacher's logits are detached: no path from the term to them


def test_channels_last_batches_give_channels_last_views() -> None:
    module = _module(scale_consistency=1.0, channels_last=True)
    images, labels = _batch(module, 4, 40, 56)
    assert images.is_contiguous(memory_format=torch.channels_last)
    seen: list[torch.Tensor] = []
    module.model.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    loss = module.training_step((images, labels), 0)
    assert torch.isfinite(loss) and seen[1].shape[-2:] == (24, 32)
    assert seen[1].is_contiguous(memory_format=torch.channels_last)


def test_draws_are_a_function_of_seed_and_step_and_leave_the_random_streams_alone() -> None:
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    term = ScaleConsistency(1.0, [0.5, 0.6, 0.75], 0.5, seed=3)
    steps = [(e, b) for e in range(3) for b in range(100)]
    draws = [term.draw(*s) for s in steps]
    assert draws == [ScaleConsistency(1.0, [0.5, 0.6, 0.75], 0.5, seed=3).draw(*s) for s in steps]
    assert draws != [ScaleConsistency(1.0, [0.5, 0.6, 0.75], 0.5, seed=4).draw(*s) for s in steps]
    drawn = [d for d in draws if d is not None]
    assert set(drawn) == {0.5, 0.6, 0.75}  # several factors: they differ across steps
    assert 0.4 < len(drawn) / len(draws) < 0.6  # prob 0.5 of the steps
    assert all(ScaleConsistency(1.0, [0.6], 1.0, seed=0).draw(*s) == 0.6 for s in steps)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


def test_small_sizes_are_multiples_of_8_and_at_least_the_backbones_minimum() -> None:
    assert small_size(40, 56, 0.6) == (24, 32)
    assert small_size(224, 224, 0.5) == (112, 112)
    assert small_size(16, 16, 0.1) == (8, 8)
    assert small_size(32, 48, 0.3, minimum=16) == (16, 16)
    module = _module(scale_consistency=1.0, scale_consistency_factors=[0.3])
    assert module.scale_view.minimum == 16  # test_resnet: total stride 32, sides >= 16
    images, _ = _batch(module, 2, 16, 16)  # no view smaller than the batch: no term
    assert module.scale_view.term(module.model, images, module(images), 0, 0) is None


def test_a_side_at_the_minimum_stays_and_the_other_side_still_shrinks() -> None:
    """16 x 64 at 0.6x: the height cannot go below the backbone's 16, the width goes to 40; the view is
    smaller all the same, so the step gets its term."""
    module = _module(scale_consistency=1.0, scale_consistency_factors=[0.6])
    images, _ = _batch(module, 2, 16, 64)
    seen: list[torch.Size] = []
    module.model.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    term = module.scale_view.term(module.model, images, module(images), 0, 0)
    assert term is not None and torch.isfinite(term)
    assert seen[-1][-2:] == (16, 40)


def test_the_small_view_leaves_batchnorm_running_statistics_alone() -> None:
    on, off = _module(scale_consistency=1.0), _module()
    batch = _batch(on, 8, 40, 56)
    on.training_step((batch[0].clone(), batch[1]), 0)
    off.training_step((batch[0].clone(), batch[1]), 0)
    before, after = _bn_buffers(_module()), _bn_buffers(on)
    assert after.keys() == _bn_buffers(off).keys() and after
    for name, value in _bn_buffers(off).items():
        assert torch.equal(after[name], value), name
    assert any(not torch.equal(before[k], after[k]) for k in before if "running_mean" in k)  # the main view
    momenta = [m.momentum for m in on.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with pytest.raises(RuntimeError), frozen_bn_stats(on.model):
        raise RuntimeError("a failing forward")
    assert [m.momentum for m in on.model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == momenta


def test_it_runs_with_batchnorm_statistics_per_size() -> None:
    on, off = _module(scale_consistency=1.0, bn_stats_per_size=True), _module(bn_stats_per_size=True)
    batch = _batch(on, 4, 32, 32)
    on.training_step((batch[0].clone(), batch[1]), 0)
    off.training_step((batch[0].clone(), batch[1]), 0)
    assert on.size_stats.table.keys() == off.size_stats.table.keys() == {32}  # the small size: not tracked
    for name, value in off.size_stats.table[32].items():
        assert torch.equal(on.size_stats.table[32][name], value), name


def test_the_config_composes_and_builds(tmp_path: Path) -> None:
    overrides = ["model.scale_consistency=0.5", "model.scale_consistency_factors=[0.5,0.75]"]
    cfg = compose_train(overrides, tmp_path)
    assert cfg.model.scale_consistency == 0.5 and list(cfg.model.scale_consistency_factors) == [0.5, 0.75]
    module = meta_model(cfg.model)
    assert module.scale_view.factors == (0.5, 0.75) and module.scale_view.prob == 0.16
    assert module.hparams["scale_consistency_factors"] == [0.5, 0.75]  # plain values in checkpoints
    assert meta_model(compose_train(["model.scale_consistency=0"], tmp_path).model).scale_view is None


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.scale_consistency=-0.5", "model.scale_consistency"),
        ("model.scale_consistency_factors=[0.6,1.0]", "model.scale_consistency_factors"),
        ("model.scale_consistency_factors=[2.5]", "model.scale_consistency_factors"),
        ("model.scale_consistency_factors=[0]", "model.scale_consistency_factors"),
        ("model.scale_consistency_factors=[]", "model.scale_consistency_factors"),
        ("model.scale_consistency_prob=1.5", "model.scale_consistency_prob"),
        ("model.scale_consistency_prob=-0.1", "model.scale_consistency_prob"),
        ("model.scale_consistency_rampup=1.0", "model.scale_consistency_rampup"),
        ("model.scale_consistency_stop=0", "model.scale_consistency_stop"),
        ("model.scale_consistency_stop=1.5", "model.scale_consistency_stop"),
        ("model.scale_consistency_max_pixels=0", "model.scale_consistency_max_pixels"),
        ("model.scale_consistency_max_pixels=many", "model.scale_consistency_max_pixels"),
        ("model.scale_consistency_share=0", "model.scale_consistency_share"),
        ("model.scale_consistency_share=1.5", "model.scale_consistency_share"),
        (
            "model.scale_consistency_rampup=0.6 model.scale_consistency_stop=0.5",
            "model.scale_consistency_rampup",
        ),
    ],
)
def test_bad_values_fail_before_training_in_one_line(override: str, key: str, tmp_path: Path) -> None:
    overrides = [*TINY, *TINY_SYNTHETIC, "logger=none", "model.scale_consistency=1", *override.split()]
    cfg = compose_train(overrides, tmp_path)
    with pytest.raises(Exception) as info:
        train(cfg)
    error = find_user_error(info.value)
    assert isinstance(error, ResflexError), repr(info.value)
    assert error.one_line().startswith(key) and "\n" not in error.one_line(), error.one_line()
    assert not (tmp_path / "checkpoints").exists()


def test_it_is_off_for_naflex_token_batches_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_train([*TINY_NAFLEX_MODEL, "data.root=unused"], tmp_path)
    assert cfg.model.scale_consistency > 0  # on by default, not refused
    check_naflex_config(cfg)
    with caplog.at_level(logging.INFO, logger="resflex"):
        assert meta_model(cfg.model).scale_view is None  # the pre-flight copy: no extra compute, no line
        assert not caplog.records
        assert build_module(cfg, num_classes=3).scale_view is None  # the run's module: one line
    lines = [r.getMessage() for r in caplog.records if "scale_consistency" in r.getMessage()]
    assert lines == ["model.scale_consistency is off for NaFlex token batches (every length trains)"]


def test_it_is_off_for_a_backbone_of_one_input_size_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    backbone = TimmBackbone("test_vit", model_kwargs={"dynamic_img_size": False, "img_size": 32})  # 32 px
    net = ImageClassifier(backbone, AvgPool(), num_classes=NUM_CLASSES)
    with caplog.at_level(logging.WARNING, logger="resflex"):
        module = ClassificationModule(net, optimizer=OptimizerFactory())
    assert module.scale_view is None
    line = next(r.getMessage() for r in caplog.records if "scale_consistency" in r.getMessage())
    assert line.startswith("model.scale_consistency is off:") and "dynamic_img_size" in line


def test_a_tiny_run_logs_the_term(tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = [*TINY, *TINY_SYNTHETIC, "model.scale_consistency=1.0", "eval.resolutions=[]"]
    result = run_cli([*overrides, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    points = scalar_tags(run)["train/scale_consistency"]
    assert len(points) == 3 and all(np.isfinite(v) and v >= 0 for _, v in points), points


def test_the_weight_ramps_up_and_stops_over_the_run() -> None:
    view = ScaleConsistency(2.0, [0.6], 1.0, seed=0, rampup=0.25, stop=0.75)
    weights = [view.weight_at(p) for p in (0.0, 0.125, 0.25, 0.5, 0.7499, 0.75, 1.0)]
    assert weights == [0.0, 1.0, 2.0, 2.0, 2.0, 0.0, 0.0]
    assert view.weight_at(None) == 2.0  # an open-ended run: the full weight
    assert ScaleConsistency(2.0, [0.6], 1.0, seed=0).weight_at(0.0) == 2.0  # the default: no ramp


def test_a_step_where_the_term_is_off_gets_no_view(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _module(scale_consistency=1.0, scale_consistency_factors=[0.6], scale_consistency_stop=0.5)
    images, labels = _batch(module, 4, 32, 32)
    seen: list[tuple[int, ...]] = []
    module.model.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape[-2:])))
    progress = iter([0.25, 0.5])
    monkeypatch.setattr(module, "_training_progress", lambda: next(progress))
    on = module.training_step((images.clone(), labels), 0)
    off = module.training_step((images.clone(), labels), 0)
    assert seen == [(32, 32), (16, 16), (32, 32)]  # no view (and no compute) once the term stops
    torch.testing.assert_close(off, F.cross_entropy(_module()(images), labels, label_smoothing=0.1))
    assert on > off


def test_the_progress_counts_optimizer_steps_of_the_fit(tmp_path: Path) -> None:
    """Progress is global_step / the fit's optimizer steps: 0 at the first step, (n - 1) / n at the last,
    the same on every rank (global_step)."""
    cfg = compose_train(
        [*TINY, *TINY_SYNTHETIC, "logger=none", "model.scale_consistency_rampup=0.5"], tmp_path
    )
    seen: list[float | None] = []
    original = ClassificationModule._training_progress

    def record(self: ClassificationModule) -> float | None:
        seen.append(original(self))
        return seen[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ClassificationModule, "_training_progress", record)
        train(cfg)
    total = len(seen)
    assert total >= 2 and seen == pytest.approx([i / total for i in range(total)])
