"""ClassificationModule in process, without a Trainer run: normalisation on the device, what keys the
per-batch draws, the accuracy of a mixed batch, the per-size numbers of a DDP evaluation (a fake two-rank
trainer) and the per-size BatchNorm statistics around a fit, each checked by hand (mutation audit,
round 4)."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resflex.errors import ConfigError
from resflex.models.backbone import TimmBackbone
from resflex.models.bn_calibration import BN_STATS_KEY, batchnorm_layers
from resflex.models.classifier import ImageClassifier
from resflex.models.pooling import AvgPool
from resflex.training import module as module_file
from resflex.training.module import ClassificationModule
from resflex.training.optim import OptimizerFactory
from resflex.training.out_of_memory import BatchSeen
from resflex.types import TokenBatch

NUM_CLASSES = 5


def _module(**kwargs: Any) -> ClassificationModule:
    torch.manual_seed(0)
    model = ImageClassifier(TimmBackbone("test_resnet"), AvgPool(), num_classes=NUM_CLASSES)
    kwargs.setdefault("channels_last", False)
    return ClassificationModule(model, optimizer=OptimizerFactory(), scale_consistency=0.0, **kwargs)


def _batch(n: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)
    return images, torch.arange(n) % NUM_CLASSES


def _record_logs(module: ClassificationModule) -> dict[str, Any]:
    """Replace ``module.log`` by a recorder: name -> the value last logged (no trainer needed)."""
    logged: dict[str, Any] = {}

    def log(name: str, value: Any, **kwargs: Any) -> None:
        logged[name] = value

    module.log = log  # type: ignore[method-assign]
    return logged


@pytest.mark.parametrize("channels_last", [False, True])
def test_uint8_batches_are_normalised_with_the_backbones_mean_and_std(channels_last: bool) -> None:
    """test_resnet's mean and std are 0.5 on the 0..1 scale: 0 -> -1, 255 -> 1, (x / 255 - 0.5) / 0.5 in
    between; model.channels_last gives a channels-last batch, off a plain contiguous one."""
    module = _module(channels_last=channels_last)
    images, labels = _batch(2, 8, 12)
    images[0, :, 0, 0], images[0, :, 0, 1] = 0, 255
    out, same_labels = module.on_after_batch_transfer((images, labels), 0)
    assert same_labels is labels and out.dtype == torch.float32
    torch.testing.assert_close(out, (images.float() / 255.0 - 0.5) / 0.5)
    assert out[0, :, 0, 0].tolist() == [-1.0] * 3 and out[0, :, 0, 1].tolist() == [1.0] * 3
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=layout)
    if channels_last:
        assert not out.is_contiguous()


def test_the_module_remembers_the_shape_of_the_last_batch_it_was_handed() -> None:
    """What an out-of-memory failure names (resflex/training/out_of_memory.py): an image batch's shape,
    a NaFlex token batch's images and sequence length, and whether the module was training."""
    module = _module()
    images, labels = _batch(3, 8, 12)
    module.on_after_batch_transfer((images, labels), 0)
    assert module.last_batch == BatchSeen((3, 3, 8, 12), training=True)
    module.eval()
    tokens = TokenBatch(
        torch.zeros(2, 4, 48, dtype=torch.uint8), torch.zeros(2, 4, 2), torch.ones(2, 4, dtype=torch.bool), 4
    )
    module.on_after_batch_transfer((tokens, labels[:2]), 0)
    assert module.last_batch == BatchSeen((2, 4), training=False)


def test_the_draws_of_a_batch_change_with_the_epoch_and_the_rank() -> None:
    """Random erasing is keyed by (seed, rank, epoch, batch index): the same batch index draws other boxes
    in the next epoch (else every epoch would erase the same pixels of the same step) and on another
    rank (else the ranks' batches would all share one draw); the same key draws the same boxes and the
    same noise in them, whatever the global random streams' state."""
    module = _module(random_erasing=1.0)
    images, labels = _batch(4, 32, 32)
    normal, _ = module.on_after_batch_transfer((images, labels), 0)

    def erased(rank: int, epoch: int) -> torch.Tensor:
        module.trainer = SimpleNamespace(global_rank=rank, current_epoch=epoch)  # type: ignore[assignment]
        out, _ = module.regularize(normal.clone(), labels, batch_idx=3)
        return out

    first = erased(rank=0, epoch=0)
    assert torch.equal(first, erased(rank=0, epoch=0))
    # the key alone decides, not what the global streams went through before (a resume, other draws)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    try:
        assert torch.equal(first, erased(rank=0, epoch=0))
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
    assert not torch.equal(first, erased(rank=0, epoch=1))
    assert not torch.equal(first, erased(rank=1, epoch=0))
    assert torch.equal(erased(rank=1, epoch=2), erased(rank=1, epoch=2))


def test_random_erasing_fills_each_box_with_per_pixel_noise() -> None:
    """timm's recipe (mode="pixel"): the box holds normal noise on the normalised scale, a different value
    at every pixel and channel, not a constant (mode="const" would write zeros)."""
    module = _module(random_erasing=1.0)
    images, labels = _batch(8, 32, 48)
    normal, _ = module.on_after_batch_transfer((images, labels), 0)
    erased, _ = module.regularize(normal.clone(), labels, batch_idx=0)
    changed = (erased != normal).any(dim=1, keepdim=True).expand_as(erased)
    noise = erased[changed]
    assert noise.numel() > 100
    assert 0.7 < float(noise.std()) < 1.3 and abs(float(noise.mean())) < 0.2
    assert noise.unique().numel() > 0.9 * noise.numel()


def test_the_accuracy_of_a_mixed_batch_counts_each_images_dominant_class_not_its_own_label() -> None:
    """A mixed image whose partner outweighs it is scored against the partner's class (the dominant one
    of its soft target). The model is made to predict each image's own label, and the batch index is one
    whose draw gives the partners the larger weight: the accuracy is then the share of images whose
    partner has the same label (2 of 8), not 1."""
    module = _module(mixup=1.0)
    images, labels = _batch(8, 32, 32)
    normal, _ = module.on_after_batch_transfer((images, labels), 0)
    partner = labels.flip(0)
    for batch_idx in range(100):
        _, targets = module.regularize(normal.clone(), labels, batch_idx)
        assert targets is not None
        if torch.equal(targets.argmax(dim=1), partner):
            break
    else:
        pytest.fail("no batch index whose draw gives the partners the larger weight")
    own_label = F.one_hot(labels, NUM_CLASSES).float() * 10.0
    module.forward = lambda x: own_label  # type: ignore[method-assign]
    _record_logs(module)
    module.training_step((normal.clone(), labels), batch_idx)
    assert float(module.train_acc.compute()) == pytest.approx(float((labels == partner).float().mean()))
    assert float((labels == partner).float().mean()) == 0.25


@pytest.mark.parametrize("stage", ["val", "test"])
def test_a_ddp_evaluation_leaves_padding_out_and_reports_exact_per_size_numbers(
    stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ranks (a fake trainer whose reduce sums this rank's counts with the other rank's identical
    ones), two evaluation sizes. The main size's batch of 6 ends with 2 padding repeats, as its own
    stage's loader planned (the other stage's loaders have none): they are left out, the other 4 images
    give <stage>/acc@32 and <stage>/loss@32 (the mean loss over those images), and <stage>/loss is the
    main size's, not the last loader's."""
    module = _module()
    module.eval()
    logged = _record_logs(module)
    monkeypatch.setattr(module_file, "batch_padding", lambda loader, batch_idx, n: loader.padding)
    padded = [SimpleNamespace(padding=2), SimpleNamespace(padding=0)]
    unpadded = [SimpleNamespace(padding=0), SimpleNamespace(padding=0)]
    module.trainer = SimpleNamespace(  # type: ignore[assignment]
        world_size=2,
        global_rank=0,
        datamodule=SimpleNamespace(eval_sizes=[(32, 32), (16, 16)]),
        val_dataloaders=padded if stage == "val" else unpadded,
        test_dataloaders=padded if stage == "test" else unpadded,
        strategy=SimpleNamespace(reduce=lambda totals, reduce_op: totals * 2 if reduce_op == "sum" else None),
    )
    step = module.validation_step if stage == "val" else module.test_step
    epoch_start = module.on_validation_epoch_start if stage == "val" else module.on_test_epoch_start
    epoch_end = module.on_validation_epoch_end if stage == "val" else module.on_test_epoch_end
    main, main_labels = _batch(6, 32, 32, seed=1)
    small, small_labels = _batch(4, 16, 16, seed=2)
    main_labels = torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad():
        x_main, _ = module.on_after_batch_transfer((main, main_labels), 0)
        x_small, _ = module.on_after_batch_transfer((small, small_labels), 1)
        epoch_start()
        step((x_main, main_labels), 0, dataloader_idx=0)
        step((x_small, small_labels), 0, dataloader_idx=1)
        epoch_end()
        logits_main, logits_small = module(x_main)[:4], module(x_small)
    counted = main_labels[:4]
    acc_main = float((logits_main.argmax(1) == counted).float().mean())
    loss_main = float(F.cross_entropy(logits_main, counted))
    loss_small = float(F.cross_entropy(logits_small, small_labels))
    assert logged[f"{stage}/acc@32"] == pytest.approx(acc_main, abs=1e-6)
    assert logged[f"{stage}/loss@32"] == pytest.approx(loss_main, rel=1e-5)
    assert logged[f"{stage}/loss"] == pytest.approx(loss_main, rel=1e-5)
    assert logged[f"{stage}/loss@16"] == pytest.approx(loss_small, rel=1e-5)
    accuracy = module.val_acc if stage == "val" else module.test_acc
    assert accuracy.compute() == pytest.approx(acc_main, abs=1e-6)  # <stage>/acc: the same 4 images


def _fill_running_means(module: ClassificationModule, value: float) -> None:
    for layer in batchnorm_layers(module.model).values():
        assert layer.running_mean is not None
        layer.running_mean.fill_(value)


@pytest.mark.parametrize("tracked", [True, False])
def test_a_fit_keeps_tracked_per_size_statistics_and_drops_calibrated_ones(tracked: bool) -> None:
    """At the start of a fit (a resume: the table came from the checkpoint) model.bn_stats_per_size=true
    keeps its per-size table; without it the table holds calibrated statistics of the weights as they
    were, stale once training changes them, so it is dropped."""
    module = _module(bn_stats_per_size=tracked)
    assert module.size_stats is not None
    module.size_stats.after_step(32)
    module.trainer = SimpleNamespace(estimated_stepping_batches=10, current_epoch=0)  # type: ignore[assignment]
    module.on_train_start()
    assert module.fit_steps == 10.0
    assert (32 in module.size_stats.table) is tracked


@pytest.mark.parametrize("tracked", [True, False])
def test_training_steps_fill_the_per_size_table_only_when_asked(tracked: bool) -> None:
    """model.bn_stats_per_size=false trains one set of BatchNorm statistics for every size: no per-size
    table is kept while training (after fit, calibration fills it); true keeps one per training side."""
    module = _module(bn_stats_per_size=tracked)
    assert module.size_stats is not None
    _record_logs(module)
    for h in (16, 32):
        images, labels = _batch(4, h, h)
        module.training_step(module.on_after_batch_transfer((images, labels), 0), 0)
    assert sorted(module.size_stats.table) == ([16, 32] if tracked else [])


def test_a_checkpoint_saved_before_any_validation_holds_the_main_sizes_statistics() -> None:
    """Per-size statistics, the main size (32) trained first and 16 last: a checkpoint written before any
    validation (a mid-epoch save) still carries the main size's statistics in its weights, and the table of
    both sizes beside them."""
    module = _module(bn_stats_per_size=True)
    assert module.size_stats is not None
    module.trainer = SimpleNamespace(  # type: ignore[assignment]
        datamodule=SimpleNamespace(eval_sizes=[(32, 32), (16, 16)]), current_epoch=0
    )
    _fill_running_means(module, 1.0)
    module.size_stats.after_step(32)
    _fill_running_means(module, 2.0)
    module.size_stats.after_step(16)
    checkpoint: dict[str, Any] = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    means = [v for k, v in checkpoint["state_dict"].items() if k.endswith("running_mean")]
    assert means and all(bool((m == 1.0).all()) for m in means)
    assert set(checkpoint[BN_STATS_KEY]) == {"32", "16"}


def test_label_smoothing_of_one_is_refused() -> None:
    """model.label_smoothing must be in [0, 1): at 1 every target is uniform and nothing is learnt."""
    with pytest.raises(ConfigError, match=r"^model.label_smoothing=1.0 is invalid"):
        _module(label_smoothing=1.0)


def test_a_keep_aspect_bucket_is_tracked_under_the_schedules_size() -> None:
    """With keep_aspect buckets a step of the 32-px schedule may be 24x40: its BatchNorm statistics are
    the 32-px size's (the size evaluation asks for), not those of a 31-px size that is never scheduled."""
    module = _module(bn_stats_per_size=True)
    assert module.size_stats is not None
    _record_logs(module)
    plan = [SimpleNamespace(size=(24, 40), scheduled=(32, 32))]
    sampler = SimpleNamespace(plan=lambda: plan)
    module.trainer = SimpleNamespace(  # type: ignore[assignment]
        train_dataloader=SimpleNamespace(batch_sampler=sampler), global_rank=0, current_epoch=0
    )
    images, labels = _batch(4, 24, 40)
    module.training_step(module.on_after_batch_transfer((images, labels), 0), 0)
    assert list(module.size_stats.table) == [32]


@pytest.mark.parametrize("stage", ["val", "test"])
def test_after_an_evaluation_at_every_size_the_model_holds_the_main_sizes_statistics(stage: str) -> None:
    """Evaluation swaps in each size's BatchNorm statistics (32 px, then 16 px last); at the epoch's end
    the main size's are back in the model, for the training that follows and for what uses the model."""
    module = _module(bn_stats_per_size=True)
    assert module.size_stats is not None
    module.eval()
    _record_logs(module)
    module.trainer = SimpleNamespace(  # type: ignore[assignment]
        world_size=1,
        datamodule=SimpleNamespace(eval_sizes=[(32, 32), (16, 16)]),
        val_dataloaders=[object(), object()],
        test_dataloaders=[object(), object()],
        current_epoch=0,
    )
    _fill_running_means(module, 1.0)
    module.size_stats.after_step(32)
    _fill_running_means(module, 2.0)
    module.size_stats.after_step(16)
    step = module.validation_step if stage == "val" else module.test_step
    with torch.no_grad():
        for k, side in enumerate((32, 16)):
            images, labels = _batch(4, side, side)
            step(module.on_after_batch_transfer((images, labels), k), 0, dataloader_idx=k)
        assert all(bool((m.running_mean == 2.0).all()) for m in batchnorm_layers(module.model).values())
        (module.on_validation_epoch_end if stage == "val" else module.on_test_epoch_end)()
    assert all(bool((m.running_mean == 1.0).all()) for m in batchnorm_layers(module.model).values())


def test_bn_stats_per_size_on_a_model_without_batchnorm_says_it_keeps_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ViT with ``pooling=avg`` has no BatchNorm: the switch was accepted without a word (found by a
    ViT audit)."""
    backbone = TimmBackbone("vit_tiny_patch16_224", model_kwargs={"dynamic_img_size": True, "depth": 1})
    net = ImageClassifier(backbone, AvgPool(), num_classes=3)
    with caplog.at_level("WARNING", logger="resflex"):
        ClassificationModule(net, optimizer=OptimizerFactory(), scale_consistency=0.0, bn_stats_per_size=True)
    assert "model.bn_stats_per_size=true: the model has no BatchNorm, nothing is kept per size" in caplog.text
