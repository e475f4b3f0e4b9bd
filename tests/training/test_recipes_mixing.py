"""Issue #17, regularisation on the device: model.mixup / model.cutmix (timm's Mixup, soft targets with
label smoothing) and data.augment.random_erasing (timm's RandomErasing), per batch, any (h, w)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resflex.errors import ConfigError, ResflexError, find_user_error
from resflex.models.backbone import TimmBackbone
from resflex.models.classifier import ImageClassifier
from resflex.models.pooling import AvgPool
from resflex.train import train
from resflex.training.module import ClassificationModule
from resflex.training.optim import OptimizerFactory
from tests.conftest import TINY, TINY_SYNTHETIC
from tests.test_configs import compose_train

NUM_CLASSES = 5


def _module(**kwargs: object) -> ClassificationModule:
    torch.manual_seed(0)
    model = ImageClassifier(TimmBackbone("test_resnet"), AvgPool(), num_classes=NUM_CLASSES)
    return ClassificationModule(model, optimizer=OptimizerFactory(), channels_last=False, **kwargs)


def _batch(n: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)
    return images, torch.arange(n) % NUM_CLASSES


def _regularize(module: ClassificationModule, n: int, h: int, w: int, batch_idx: int = 0):
    images, labels = _batch(n, h, w)
    normal, _ = module.on_after_batch_transfer((images, labels), 0)
    out, targets = module.regularize(normal.clone(), labels, batch_idx)
    return normal, out, labels, targets


@pytest.mark.parametrize("switch", [{"mixup": 0.8}, {"cutmix": 1.0}, {"mixup": 0.2, "cutmix": 1.0}])
@pytest.mark.parametrize(("n", "h", "w"), [(8, 32, 32), (6, 24, 40), (7, 40, 24), (1, 32, 32)])
def test_mixed_targets_are_soft_and_sum_to_one_at_any_size(switch: dict, n: int, h: int, w: int) -> None:
    module = _module(label_smoothing=0.1, **switch)
    normal, mixed, labels, targets = _regularize(module, n, h, w)
    assert mixed.shape == normal.shape and targets.shape == (n, NUM_CLASSES)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(n))
    assert targets.min() >= 0.1 / NUM_CLASSES - 1e-6  # label smoothing is in every row
    even = n - n % 2
    partner = torch.cat([labels[:even].flip(0), labels[even:]])  # image i is mixed with image even-1-i
    assert all(d in (labels[i], partner[i]) for i, d in enumerate(targets.argmax(dim=1).tolist()))
    if n >= 2:
        assert not torch.equal(mixed, normal)  # the pixels were mixed too
    if n % 2:  # the odd one out keeps its image and its smoothed label
        torch.testing.assert_close(mixed[-1], normal[-1])
        assert targets[-1].max() == pytest.approx(0.9 + 0.1 / NUM_CLASSES)


def test_mixup_targets_are_the_smoothed_labels_mixed_with_the_images_weight() -> None:
    """Mixup: image i = lam * x_i + (1 - lam) * x_(B-1-i), target = the same mix of smoothed one-hots."""
    module = _module(label_smoothing=0.1, mixup=1.0)
    normal, mixed, labels, targets = _regularize(module, 4, 16, 16)
    step = (normal[0] - normal[3]).flatten()
    lam = float(((mixed[0] - normal[3]).flatten() @ step) / (step @ step))
    smooth = F.one_hot(labels, NUM_CLASSES).float() * 0.9 + 0.1 / NUM_CLASSES
    torch.testing.assert_close(mixed, lam * normal + (1 - lam) * normal.flip(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(targets, lam * smooth + (1 - lam) * smooth.flip(0), atol=1e-4, rtol=1e-4)


def test_mix_prob_zero_mixes_nothing_but_targets_carry_the_smoothing() -> None:
    module = _module(label_smoothing=0.1, mixup=0.8, mix_prob=0.0)
    normal, mixed, labels, targets = _regularize(module, 6, 32, 32)
    assert torch.equal(mixed, normal)
    smooth = F.one_hot(labels, NUM_CLASSES).float() * 0.9 + 0.1 / NUM_CLASSES
    torch.testing.assert_close(targets, smooth)


def test_off_by_default_and_the_loss_is_the_hard_label_one() -> None:
    module = _module()
    assert module.mixer is None and module.eraser is None
    normal, out, _, targets = _regularize(module, 4, 32, 32)
    assert targets is None and out.data_ptr() != 0 and torch.equal(out, normal)


def test_draws_repeat_per_batch_and_leave_the_global_random_streams_alone() -> None:
    module = _module(mixup=0.2, cutmix=1.0, mix_prob=0.5, random_erasing=0.5)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    runs = [_regularize(module, 8, 32, 32, batch_idx=b) for b in (3, 3, 4, 5, 6)]
    assert torch.equal(runs[0][1], runs[1][1]) and torch.equal(runs[0][3], runs[1][3])
    assert any(not torch.equal(runs[0][1], r[1]) for r in runs[2:])  # other batches, other draws
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


def test_random_erasing_replaces_rectangles_in_training_batches_only() -> None:
    module = _module(random_erasing=1.0)
    normal, erased, _, targets = _regularize(module, 8, 32, 48)
    assert targets is None
    changed = (erased != normal).any(dim=1)  # (B, h, w): the erased pixels
    assert all(changed[i].any() for i in range(8)), "probability 1: every image has a box"
    for mask in changed:  # one rectangle each: its rows and columns are contiguous
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        assert mask.sum() == len(rows) * len(cols) and mask.float().mean() < 0.5
    # evaluation batches: normalised only (regularize is called from training_step alone)
    images, labels = _batch(8, 32, 48)
    again, _ = module.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(again, normal)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_without_mixing_the_loss_is_the_hard_label_cross_entropy_with_label_smoothing() -> None:
    """model.label_smoothing reaches the loss of an unmixed batch (mixed ones carry it in their targets)."""
    module = _module(label_smoothing=0.2, scale_consistency=0.0)
    images, labels = _batch(6, 32, 32)
    batch = module.on_after_batch_transfer((images, labels), 0)
    module.eval()  # BatchNorm in eval: the same logits in both calls
    loss = module.training_step(batch, 0)
    log_p = module(batch[0]).log_softmax(dim=1)
    # by hand: 0.8 x the label's -log p + 0.2 x the mean over the classes of -log p
    expected = (0.8 * -log_p.gather(1, labels[:, None])[:, 0] + 0.2 * -log_p.mean(dim=1)).mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_uses_soft_targets_and_counts_the_dominant_class() -> None:
    module = _module(label_smoothing=0.1, mixup=0.4, cutmix=1.0)
    images, labels = _batch(8, 32, 32)
    batch = module.on_after_batch_transfer((images, labels), 0)
    normal = batch[0].clone()
    _, expected_targets = module.regularize(normal, labels, 2)
    module.eval()  # BatchNorm in eval: the same logits in both calls
    loss = module.training_step(batch, 2)
    logits = module(normal)
    torch.testing.assert_close(loss, F.cross_entropy(logits, expected_targets))
    dominant = (logits.argmax(dim=1) == expected_targets.argmax(dim=1)).float().mean()
    torch.testing.assert_close(module.train_acc.compute(), dominant)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.mixup=-0.2", "model.mixup"),
        ("model.cutmix=-1", "model.cutmix"),
        ("model.mix_prob=1.5", "model.mix_prob"),
        ("model.mix_switch_prob=-0.1", "model.mix_switch_prob"),
        ("data.augment.random_erasing=1.5", "data.augment.random_erasing"),
        ("data.augment.auto=autoaugment", "data.augment.auto"),
    ],
)
def test_bad_values_fail_before_training_in_one_line(override: str, key: str, tmp_path: Path) -> None:
    cfg = compose_train([*TINY, *TINY_SYNTHETIC, "logger=none", override], tmp_path)
    with pytest.raises(Exception) as info:
        train(cfg)
    error = find_user_error(info.value)
    assert isinstance(error, ResflexError), repr(info.value)
    assert key in error.one_line() and "\n" not in error.one_line(), error.one_line()
    assert not (tmp_path / "checkpoints").exists()


def test_negative_alpha_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^model.mixup=-0.5 is invalid: expected an alpha >= 0 \(0: off\)"):
        _module(mixup=-0.5)
