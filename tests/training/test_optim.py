"""Optimizers by name (timm's factory over resflex's parameter groups) and the LR schedule object."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from resflex.build import build_module
from resflex.errors import ConfigError
from resflex.training.lr_schedule import LrFactor, WarmupCosine
from resflex.training.optim import OptimizerFactory
from tests.test_configs import compose_train


def _groups() -> list[dict]:
    w, b = torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.zeros(3))
    return [
        {"params": [w], "weight_decay": 0.05, "lr_mult": 0.1},
        {"params": [b], "weight_decay": 0.0, "lr_mult": 1.0},
    ]


def test_groups_keep_their_weight_decay_and_lr_mult() -> None:
    optimizer = OptimizerFactory("adamw", lr=0.01, weight_decay=0.05)(_groups())
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.001, 0.01])


def test_linear_scaling_rule_multiplies_by_the_world_size() -> None:
    factory = OptimizerFactory("adamw", lr=0.01, scale_lr_with_world_size=True)
    assert [g["lr"] for g in factory(_groups(), world_size=4).param_groups] == pytest.approx([0.004, 0.04])


@pytest.mark.parametrize(
    ("name", "cls"), [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("lamb", None), ("lion", None)]
)
def test_any_timm_optimizer_by_name(name: str, cls: type | None) -> None:
    optimizer = OptimizerFactory(name, lr=0.01)(_groups())
    if cls is not None:
        assert type(optimizer) is cls
    assert type(optimizer).__name__.lower().startswith(name[:3])


def test_sgd_config_is_nesterov_momentum(tmp_path: Path) -> None:
    optimizer = instantiate(compose_train(["optimizer=sgd"], tmp_path).optimizer)(_groups())
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "adamx"}, "unknown optimizer.name 'adamx' (hint: did you mean adamax, adam"),
        ({"lr": -1.0}, "optimizer.lr=-1.0 is invalid"),
        ({"lr": "fast"}, "optimizer.lr='fast' is invalid"),
        ({"weight_decay": -0.1}, "optimizer.weight_decay=-0.1 is invalid"),
        ({"momentum": 1.5}, "optimizer.momentum=1.5 is invalid"),
        ({"momentum": 1.0}, "optimizer.momentum=1.0 is invalid"),  # [0, 1): 1 never forgets a step
    ],
)
def test_bad_optimizer_values_are_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        OptimizerFactory(**kwargs)
    assert "\n" not in info.value.one_line()


def test_warmup_cosine_values_at_chosen_steps() -> None:
    """100 steps over 10 epochs, 2 warm-up epochs: 1 % at step 0, the full LR at 20, the floor at 100."""
    schedule = WarmupCosine(warmup_epochs=2, min_lr_ratio=0.1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    factor = schedule.build(optimizer, total_steps=100, epochs=10).lr_lambdas[0]
    assert isinstance(factor, LrFactor)
    assert factor(0) == pytest.approx(0.01)
    assert factor(10) == pytest.approx(0.01 + 0.99 * 0.5)
    assert factor(20) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert factor(100) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"warmup_epochs": -1}, "scheduler.warmup_epochs"), ({"min_lr_ratio": 2}, "scheduler.min_lr_ratio")],
)
def test_bad_schedule_values_are_one_line(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        WarmupCosine(**kwargs)


def test_the_module_uses_the_configured_optimizer_and_schedule(tmp_path: Path) -> None:
    cfg = compose_train(
        ["backbone.name=test_resnet", "optimizer=sgd", "optimizer.lr=0.2", "scheduler.warmup_epochs=0"],
        tmp_path,
    )
    module = build_module(cfg, num_classes=3)
    module._trainer = SimpleNamespace(world_size=1, estimated_stepping_batches=10, max_epochs=2)
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert [g["initial_lr"] for g in optimizer.param_groups] == pytest.approx(
        [0.2] * len(optimizer.param_groups)
    )
    assert scheduler.lr_lambdas[0](0) == pytest.approx(1.0)  # no warm-up
    assert module.hparams["optimizer"]["name"] == "sgd"


def test_an_sgd_run_trains_with_nesterov_momentum(tmp_path: Path) -> None:
    """optimizer=sgd through a real run: the optimizer state in its checkpoint is SGD's, with Nesterov."""
    from resflex.train import train
    from tests.conftest import TINY, TINY_SYNTHETIC

    overrides = [*TINY, *TINY_SYNTHETIC, "optimizer=sgd", "logger=none", "eval.resolutions=[]"]
    overrides.append("test_after_fit=false")
    record = train(compose_train(overrides, tmp_path))
    assert record["status"] == "completed" and record["choices"]["optimizer"] == "sgd"
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    (optimizer,) = state["optimizer_states"]
    assert optimizer["param_groups"] and all(
        g["nesterov"] and g["momentum"] == 0.9 and g["initial_lr"] == pytest.approx(0.1 * g.get("lr_mult", 1))
        for g in optimizer["param_groups"]
    )
    buffers = list(optimizer["state"].values())
    assert buffers and all(set(s) == {"momentum_buffer"} for s in buffers)  # SGD's state, not Adam's
