"""Issue #17, LR schedules: scheduler=cosine|step|constant|plateau, each with the warm-up and the
per-group unfreeze ramps, values at chosen steps, exact resume of the plateau rule, one-line errors."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from resflex.build import build_module
from resflex.config import group_options
from resflex.errors import ConfigError
from resflex.training.lr_schedule import (
    PlateauStep,
    WarmupConstant,
    WarmupCosine,
    WarmupPlateau,
    WarmupSchedule,
    WarmupStep,
)
from tests.test_configs import compose_train

SCHEDULES = {
    "cosine": WarmupCosine,
    "step": WarmupStep,
    "constant": WarmupConstant,
    "plateau": WarmupPlateau,
}


def _optimizer(groups: int = 1, unfreeze: tuple[float, ...] = ()) -> torch.optim.Optimizer:
    params = [
        {"params": [torch.nn.Parameter(torch.zeros(1))], "unfreeze_epoch": (unfreeze or (0,) * groups)[i]}
        for i in range(max(groups, len(unfreeze)))
    ]
    return torch.optim.SGD(params, lr=1.0)


def test_every_scheduler_file_is_known_and_equals_its_python_defaults(tmp_path: Path) -> None:
    assert sorted(group_options("scheduler")) == sorted(SCHEDULES)
    for name, cls in SCHEDULES.items():
        built = instantiate(compose_train([f"scheduler={name}"], tmp_path).scheduler)
        assert type(built) is cls
        assert built.as_dict() == cls().as_dict(), name


def test_step_values_at_chosen_steps() -> None:
    """100 steps over 10 epochs, 1 warm-up epoch, x0.1 at 50 % and 75 % of the run."""
    factor = WarmupStep(warmup_epochs=1, milestones=[0.5, 0.75], gamma=0.1).build(_optimizer(), 100, 10)
    f = factor.lr_lambdas[0]
    assert f(0) == pytest.approx(0.01)
    assert f(5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert [f(s) for s in (10, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_constant_values_at_chosen_steps() -> None:
    f = WarmupConstant(warmup_epochs=2).build(_optimizer(), 100, 10).lr_lambdas[0]
    assert [f(s) for s in (0, 10, 20, 50, 99)] == pytest.approx([0.01, 0.505, 1, 1, 1])
    assert WarmupConstant(warmup_epochs=0).build(_optimizer(), 100, 10).lr_lambdas[0](0) == 1.0


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_keeps_the_unfreeze_ramp_of_a_gradual_group(name: str) -> None:
    """A group unfrozen at epoch 4 is at zero before step 40, then ramps over one epoch (10 steps)."""
    schedule: WarmupSchedule = SCHEDULES[name](warmup_epochs=0)
    frozen, late = schedule.build(_optimizer(unfreeze=(0, 4)), 100, 10).lr_lambdas
    assert late(39) == 0.0
    assert late(40) == pytest.approx(frozen(40) * 0.1)
    assert late(49) == pytest.approx(frozen(49))


def _plateau(values: list[float], **kwargs: float) -> tuple[list[float], torch.optim.lr_scheduler.LambdaLR]:
    """Drive scheduler=plateau as a fit does: 10 steps an epoch, then the rule with a validation value."""
    optimizer = _optimizer(groups=2)
    schedule = WarmupPlateau(warmup_epochs=1, **kwargs)
    entry = schedule.lightning_config(optimizer, 10 * len(values), len(values))
    lambda_lr = entry["scheduler"]
    rule = schedule.rule(lambda_lr)
    lrs = []
    for value in values:
        for _ in range(10):
            optimizer.step()
            lambda_lr.step()
        rule.step(value)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs, lambda_lr


def test_plateau_lowers_the_lr_after_patience_bad_validations_down_to_the_floor() -> None:
    lrs, lambda_lr = _plateau([0.1, 0.2, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3], patience=2)
    # best 0.2 at epoch 2; the 3rd epoch without progress (epoch 5) reduces; 0.3 is a new best, then
    # 3 more bad epochs reduce again (epoch 9); after 3 more the floor (min_lr_ratio 0.01) holds
    assert lrs == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01])
    assert [f.scale for f in lambda_lr.lr_lambdas] == pytest.approx([0.01, 0.01])
    lambda_lr.optimizer.step()
    lambda_lr.step()  # the per-step schedule keeps the reduction
    assert [g["lr"] for g in lambda_lr.optimizer.param_groups] == pytest.approx([0.01, 0.01])


def test_plateau_state_is_plain_data_and_resumes_exactly() -> None:
    """The rule's counters and the factors' scales survive a weights_only checkpoint."""
    schedule = WarmupPlateau(warmup_epochs=0, patience=1)
    entry = schedule.lightning_config(_optimizer(), 100, 10)
    rule = schedule.rule(entry["scheduler"])
    for value in (0.5, 0.4):
        rule.step(value)
    buffer = io.BytesIO()
    torch.save({"rule": rule.state_dict(), "lambda": entry["scheduler"].state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # plain data only: no factor objects pickled
    entry2 = schedule.lightning_config(_optimizer(), 100, 10)
    rule2 = schedule.rule(entry2["scheduler"])
    entry2["scheduler"].load_state_dict(state["lambda"])
    rule2.load_state_dict(state["rule"])
    for r in (rule, rule2):
        r.step(0.45)  # the second bad validation in a row: both reduce now
    assert entry["scheduler"].lr_lambdas[0].scale == entry2["scheduler"].lr_lambdas[0].scale == 0.1
    assert rule2.best == 0.5


def test_the_module_registers_the_plateau_step_and_one_lambda_lr(tmp_path: Path) -> None:
    cfg = compose_train(["backbone.name=test_resnet", "scheduler=plateau"], tmp_path)
    module = build_module(cfg, num_classes=3)
    module._trainer = SimpleNamespace(
        world_size=1, estimated_stepping_batches=10, max_epochs=2, state=SimpleNamespace(fn="fit")
    )
    configured = module.configure_optimizers()
    assert configured["lr_scheduler"]["interval"] == "step"
    (callback,) = module.configure_callbacks()
    assert isinstance(callback, PlateauStep) and callback.schedule.monitor == "val/acc"
    assert module.hparams["lr_schedule"]["monitor"] == "val/acc"
    module._trainer.state = SimpleNamespace(fn="test")
    assert module.configure_callbacks() == []  # test, validate: nothing to step
    cosine = build_module(compose_train(["backbone.name=test_resnet"], tmp_path), 3)
    cosine._trainer = module._trainer
    assert cosine.configure_callbacks() == []


def _plateau_run(tmp_path: Path, epochs: int, *extra: str) -> dict:
    from resflex.train import train
    from tests.conftest import TINY, TINY_SYNTHETIC

    overrides = [*TINY, *TINY_SYNTHETIC, "scheduler=plateau", "scheduler.warmup_epochs=0"]
    overrides += ["scheduler.patience=0", "scheduler.threshold=0.5", "logger=none", "eval.resolutions=[]"]
    overrides += ["test_after_fit=false", f"trainer.max_epochs={epochs}", *extra]
    assert train(compose_train(overrides, tmp_path))["status"] == "completed"
    return torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")


def _plateau_state(checkpoint: dict) -> tuple[dict, list[float]]:
    (rule,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("PlateauStep")]
    scales = [f["scale"] for f in checkpoint["lr_schedulers"][0]["lr_lambdas"]]
    return rule, scales


def test_a_plateau_run_steps_after_each_validation_and_resumes_from_an_epoch_end_exactly(
    tmp_path: Path,
) -> None:
    """Through Lightning: the rule sees val/acc after each of 3 validations, the checkpoint written
    at the end of an epoch already holds that step, so 2 epochs + a resumed third equal 3 epochs.
    (With Lightning's monitored lr_scheduler entry the resumed run was one step behind.)"""
    whole = _plateau_state(_plateau_run(tmp_path / "whole", 3))
    assert whole[0]["last_epoch"] == 3
    assert len(set(whole[1])) == 1 and any(whole[1][0] == pytest.approx(v) for v in (0.1, 0.01))
    _plateau_run(tmp_path / "cut", 2)
    resumed = _plateau_run(tmp_path / "cut", 3, f"ckpt_path={tmp_path / 'cut' / 'checkpoints' / 'last.ckpt'}")
    assert _plateau_state(resumed) == whole


@pytest.mark.parametrize(
    ("cls", "kwargs", "key"),
    [
        (WarmupStep, {"milestones": [0.5, 1.5]}, "scheduler.milestones"),
        (WarmupStep, {"milestones": [0.75, 0.5]}, "scheduler.milestones"),
        (WarmupStep, {"milestones": 0.5}, "scheduler.milestones"),
        (WarmupStep, {"gamma": 0}, "scheduler.gamma"),
        (WarmupConstant, {"warmup_epochs": -1}, "scheduler.warmup_epochs"),
        (WarmupPlateau, {"factor": 1.0}, "scheduler.factor"),
        (WarmupPlateau, {"patience": -1}, "scheduler.patience"),
        (WarmupPlateau, {"mode": "up"}, "scheduler.mode"),
        (WarmupPlateau, {"monitor": ""}, "scheduler.monitor"),
    ],
)
def test_bad_schedule_values_are_one_line(cls: type, kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as info:
        cls(**kwargs)
    assert "\n" not in info.value.one_line()


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_a_warm_up_as_long_as_the_run_is_one_warning_line_with_the_hint(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The default 3-epoch warm-up in a 3-epoch run is clamped to the run: the LR never leaves it."""
    schedule: WarmupSchedule = SCHEDULES[name]()
    with caplog.at_level("WARNING", logger="resflex.training.lr_schedule"):
        factor = schedule.build(_optimizer(), 30, 3).lr_lambdas[0]
    (record,) = [r for r in caplog.records if r.name == "resflex.training.lr_schedule"]
    message = record.getMessage()
    assert "\n" not in message
    assert message.startswith(
        "scheduler: the 3-epoch warm-up covers the whole 3-epoch run: the LR only rises"
    )
    assert "(hint: scheduler.warmup_epochs=1.5, or scheduler.warmup_epochs=0)" in message
    assert factor(28) > factor(20) > factor(0)  # what it warns about: rising to the end
    caplog.clear()
    # the default run (3 of 6 epochs), a longer one, no warm-up: no warning, the same curve as before
    with caplog.at_level("WARNING", logger="resflex.training.lr_schedule"):
        for warmup, steps, epochs in ((3.0, 60, 6), (3.0, 100, 10), (0.0, 10, 1), (2.9, 30, 3)):
            SCHEDULES[name](warmup_epochs=warmup).build(_optimizer(), steps, epochs)
    assert not caplog.records
    default = WarmupCosine().build(_optimizer(), 60, 6).lr_lambdas[0]
    assert default(0) == pytest.approx(0.01) and default(30) == pytest.approx(1.0)
    assert default(59) < 0.02  # the cosine reaches the floor
