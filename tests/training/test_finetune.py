"""The fine-tuning callback's bookkeeping (resflex.training.finetune): which parameters train at which
epoch, the BatchNorm layers it holds in eval mode, and the parameter counts it reports (console,
TensorBoard, ``metrics.json``'s ``params``). Unit-level: the callback's hooks called on a tiny module,
no fit."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from resflex.errors import ConfigError
from resflex.training.finetune import Finetuning, count_parameters, format_count
from resflex.training.run_record import RunRecord
from tests.training.test_transfer import make_module

GRADUAL = {"name": "gradual", "unfreeze_at_epochs": [1, 2], "unfreeze_warmup_epochs": 1.0}


class FakeLogger:
    """A logger that keeps what it is given: scalars (``log_metrics``) and TEXT (``experiment.add_text``)."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []
        self.texts: list[tuple[str, str]] = []
        self.experiment = SimpleNamespace(
            add_text=lambda tag, text, global_step=0: self.texts.append((tag, text))
        )

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append(dict(metrics))


def _attach(module: Any, world_size: int = 1) -> tuple[Any, FakeLogger]:
    logger = FakeLogger()
    trainer = SimpleNamespace(is_global_zero=True, loggers=[logger], global_step=0, world_size=world_size)
    module.trainer = trainer
    return trainer, logger


def test_counts_split_total_into_trainable_and_frozen_and_print_short() -> None:
    """``frozen`` is what does not train (total - trainable), and the console's short form switches
    unit at exactly 1000 and 1,000,000."""
    module = make_module(finetune={"name": "linear_probe"})
    callback = Finetuning("linear_probe")
    callback.freeze_before_training(module)
    counts = count_parameters(module.model)
    backbone = sum(p.numel() for p in module.model.backbone.parameters())
    assert counts["frozen"] == backbone > 0
    assert counts["trainable"] == counts["total"] - backbone > 0
    assert [format_count(n) for n in (999, 1000, 1500, 999_999, 1_000_000, 2_345_678)] == [
        "999",
        "1.00k",
        "1.50k",
        "1000.00k",
        "1.00M",
        "2.35M",
    ]


def test_fit_start_fills_the_run_records_params_and_logs_count_curves_only_for_gradual() -> None:
    """``metrics.json``'s ``params`` come from this callback; a constant count is TEXT only (no one-point
    chart), a gradual run's changing counts are also scalars."""
    module = make_module(finetune={"name": "linear_probe"})
    callback = Finetuning("linear_probe")
    callback.run_record = record = RunRecord(output_dir="run")
    callback.freeze_before_training(module)
    trainer, logger = _attach(module)
    callback.on_fit_start(trainer, module)  # type: ignore[arg-type]
    expected = count_parameters(module.model)
    assert record.params == callback.param_counts == expected and expected["frozen"] > 0
    assert record.as_dict()["params"] == expected
    assert logger.metrics == []
    assert len(logger.texts) == 1 and "finetune=linear_probe" in logger.texts[0][1]

    gradual = make_module(finetune=GRADUAL)
    callback = Finetuning(**GRADUAL)
    callback.freeze_before_training(gradual)
    trainer, logger = _attach(gradual)
    callback.on_fit_start(trainer, gradual)  # type: ignore[arg-type]
    counts = count_parameters(gradual.model)
    assert logger.metrics == [
        {"params/trainable": float(counts["trainable"]), "params/frozen": float(counts["frozen"])}
    ]
    assert "unfreeze_at_epochs=[1, 2]" in logger.texts[0][1]


def test_gradual_unfreezes_a_chunk_at_its_epoch_and_puts_its_batchnorm_back_in_train_mode() -> None:
    """Epoch 1 unfreezes the top chunk (layer4) and not a step later; its BatchNorm layers, held in eval
    mode while frozen, update their statistics again; the stem waits for epoch 2."""
    module = make_module(finetune=GRADUAL)
    backbone = module.model.backbone.model
    callback = Finetuning(**GRADUAL)
    _attach(module)
    module.train()
    callback.freeze_before_training(module)
    callback.finetune_function(module, 0, None)
    callback._set_bn_eval()
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.layer4[0].bn1.training and not backbone.bn1.training

    callback.finetune_function(module, 1, None)
    callback._set_bn_eval()
    assert all(p.requires_grad for p in backbone.layer4.parameters())
    assert not backbone.conv1[0].weight.requires_grad
    assert backbone.layer4[0].bn1.training, "an unfrozen BatchNorm updates its statistics again"
    assert not backbone.bn1.training, "the still-frozen stem keeps its statistics"

    callback.finetune_function(module, 2, None)
    callback._set_bn_eval()
    assert all(p.requires_grad for p in backbone.parameters())
    assert all(m.training for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("world_size", [2, 4])
def test_gradual_is_refused_under_ddp_in_one_line(world_size: int) -> None:
    """DDP registers trainable parameters once: stages unfrozen later would not be synchronised."""
    module = make_module(finetune=GRADUAL)
    trainer, _ = _attach(module, world_size=world_size)
    with pytest.raises(ConfigError, match="finetune=gradual does not support multi-process"):
        Finetuning(**GRADUAL).setup(trainer, module, "fit")  # type: ignore[arg-type]


def test_freeze_bn_holds_every_backbone_batchnorm_in_eval_mode_even_one_without_affine_parameters() -> None:
    """``freeze_bn`` promises fixed statistics for *every* backbone BatchNorm, also one with nothing to
    freeze (``affine=False``): its running statistics would otherwise drift with each small batch."""
    module = make_module(finetune={"name": "full", "freeze_bn": True})
    backbone = module.model.backbone.model
    backbone.bn1 = torch.nn.BatchNorm2d(backbone.bn1.num_features, affine=False)
    callback = Finetuning("full", freeze_bn=True)
    module.train()
    callback.freeze_before_training(module)
    callback._set_bn_eval()
    assert not backbone.bn1.training
    assert all(not m.training for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert backbone.conv1[0].weight.requires_grad  # the rest trains
