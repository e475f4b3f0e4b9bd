"""Issue #17, model.ema: the averaged weights equal a hand-computed EMA, differ from the live ones, and
are what validation, test, checkpoints and load_classifier use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf, open_dict

from resflex.build import build_callbacks, build_datamodule, build_module, build_trainer
from resflex.errors import ConfigError
from resflex.inference import load_classifier
from resflex.training.ema import ModelEma
from tests.conftest import TINY, TINY_SYNTHETIC
from tests.test_configs import compose_train

EMA_RUN = [*TINY, *TINY_SYNTHETIC, "logger=none", "eval.resolutions=[]", "model.ema=true"]


class Recorder(pl.Callback):
    """The live weights after each optimizer step, and the weights each validation runs with."""

    def __init__(self) -> None:
        self.live: list[dict[str, torch.Tensor]] = []
        self.validated: list[dict[str, torch.Tensor]] = []

    @staticmethod
    def _weights(module: pl.LightningModule) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.model.state_dict().items() if v.is_floating_point()}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.live.append(self._weights(pl_module))

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        # at the first batch of each validation: the EMA (a callback of the module's, so it runs after
        # this one in every hook) swaps its weights in when the validation epoch starts
        if not trainer.sanity_checking and len(self.validated) < trainer.current_epoch + 1:
            self.validated.append(self._weights(pl_module))


def _fit(tmp_path: Path, *overrides: str) -> tuple[Recorder, Any, Any, pl.Trainer]:
    cfg = compose_train([*EMA_RUN, *overrides], tmp_path)
    run_config = cfg.copy()
    with open_dict(run_config):
        del run_config["hydra"]
    (tmp_path / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(run_config, tmp_path / ".hydra" / "config.yaml")  # as Hydra does: for load_classifier
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.num_classes)
    trainer = build_trainer(cfg)
    recorder = Recorder()
    trainer.callbacks.append(recorder)
    trainer.fit(module, datamodule=datamodule)
    return recorder, module, datamodule, trainer


def _hand_ema(steps: list[dict[str, torch.Tensor]], decays: list[float]) -> dict[str, torch.Tensor]:
    ema = {k: v.clone() for k, v in steps[0].items()}  # the first update copies the weights
    for weights, decay in zip(steps[1:], decays[1:], strict=True):
        ema = {k: decay * ema[k] + (1 - decay) * weights[k] for k in ema}
    return ema


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def test_ema_equals_a_hand_computed_average_and_is_what_validation_and_checkpoints_use(
    tmp_path: Path,
) -> None:
    recorder, module, _, trainer = _fit(
        tmp_path, "model.ema_decay=0.6", "model.ema_warmup=false", "trainer.max_epochs=2"
    )
    assert len(recorder.live) == 6 and len(recorder.validated) == 2
    # after each epoch's 3 steps, validation ran with the EMA of the live weights so far
    for epoch, validated in enumerate(recorder.validated):
        steps = recorder.live[: 3 * (epoch + 1)]
        assert _close(validated, _hand_ema(steps, [0.6] * len(steps)))
        assert not _close(validated, steps[-1]), "the EMA differs from the live weights"
    ema = recorder.validated[-1]
    # the checkpoint's state_dict is the EMA, its current_model_state the live weights
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    live = {
        k.removeprefix("model."): v for k, v in ckpt["current_model_state"].items() if k.startswith("model.")
    }
    assert _close(ema, {k: state[k] for k in ema}) and _close(recorder.live[-1], {k: live[k] for k in ema})
    # after the fit the module holds the EMA (test_after_fit without a checkpoint uses it)
    assert _close(ema, Recorder._weights(module))
    # load_classifier (and scripts/eval.py, predict, export: the same state_dict) reads the EMA
    loaded = load_classifier(tmp_path / "checkpoints" / "last.ckpt")
    assert _close(ema, {k: v for k, v in loaded.model.state_dict().items() if k in ema})
    # trainer.test(ckpt_path=...) after the fit evaluates the EMA, not the checkpoint's live weights
    trainer.test(
        module, datamodule=_fit_datamodule(tmp_path), ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt")
    )
    assert _close(ema, Recorder._weights(module))


def _fit_datamodule(tmp_path: Path) -> Any:
    return build_datamodule(compose_train([*EMA_RUN], tmp_path))


def test_ema_warmup_follows_timm(tmp_path: Path) -> None:
    ema = ModelEma(decay=0.999)
    assert [round(ema.decay_at(t), 4) for t in (1, 10, 100, 1000, 10**5)] == [
        0.37,
        0.7978,
        0.9539,
        0.99,
        0.999,
    ]
    assert ModelEma(decay=0.9, warmup=False).decay_at(1) == 0.9
    recorder, *_ = _fit(tmp_path, "model.ema_decay=0.99")
    steps = recorder.live
    assert _close(
        recorder.validated[-1], _hand_ema(steps, [ema.decay_at(t) for t in range(1, len(steps) + 1)])
    )


def _fit_callbacks(module: pl.LightningModule) -> list[pl.Callback]:
    """The callbacks the module hands to a fit (Lightning calls ``configure_callbacks`` when it starts)."""
    module.trainer = pl.Trainer(logger=False, enable_checkpointing=False)
    module.trainer.state.fn = "fit"
    return module.configure_callbacks()


def test_ema_is_off_by_default_and_built_when_asked(tmp_path: Path) -> None:
    plain = build_module(compose_train(list(TINY), tmp_path), 10)
    assert not any(isinstance(c, ModelEma) for c in _fit_callbacks(plain))
    assert not any(isinstance(c, ModelEma) for c in build_callbacks(compose_train(EMA_RUN, tmp_path), True))
    (ema,) = [
        c
        for c in _fit_callbacks(build_module(compose_train(EMA_RUN, tmp_path), 10))
        if isinstance(c, ModelEma)
    ]
    assert (ema.decay, ema.warmup) == (0.999, True)


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.5, "high"])
def test_decay_outside_zero_one_is_one_line(decay: object, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^model.ema_decay=.* is invalid: expected a number in \(0, 1\)"
    ) as info:
        ModelEma(decay=decay)  # type: ignore[arg-type]
    assert "\n" not in info.value.one_line()
    with pytest.raises(ConfigError, match="model.ema_decay"):
        build_module(compose_train([*TINY, "model.ema=true", f"model.ema_decay={decay}"], tmp_path), 10)


def test_ema_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.ema must be true or false"):
        build_module(compose_train([*TINY, "model.ema=yes"], tmp_path), 10)


def test_ema_keeps_a_compiled_model_compiled(tmp_path: Path) -> None:
    """model.compile=true: the average is copied after configure_model compiled the model in place; the
    live module keeps its compiled call, and the average's tensors are separate copies."""
    cfg = compose_train([*EMA_RUN, "model.compile=true"], tmp_path)
    module = build_module(cfg, 10)
    (ema,) = [c for c in _fit_callbacks(module) if isinstance(c, ModelEma)]
    ema.setup(module.trainer, module, "fit")
    assert getattr(module.model, "_compiled_call_impl", None) is not None
    average = ema._average_model.module
    assert all(
        a.data_ptr() != b.data_ptr() for a, b in zip(average.parameters(), module.parameters(), strict=True)
    )


class SaveInsideValidation(pl.Callback):
    """Writes a checkpoint in the middle of the first validation (EMA swapped in) and one after it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking and not (self.folder / "inside.ckpt").exists():
            trainer.save_checkpoint(self.folder / "inside.ckpt")

    def on_validation_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking and not (self.folder / "after.ckpt").exists():
            trainer.save_checkpoint(self.folder / "after.ckpt")


def test_a_checkpoint_written_inside_a_validation_keeps_the_ema_as_state_dict(tmp_path: Path) -> None:
    """Ctrl-C during a validation makes SaveOnInterrupt save there, while the EMA is swapped in."""
    cfg = compose_train([*EMA_RUN, "model.ema_decay=0.6", "model.ema_warmup=false"], tmp_path)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.num_classes)
    trainer = build_trainer(cfg)
    trainer.callbacks.append(SaveInsideValidation(tmp_path))
    trainer.fit(module, datamodule=datamodule)
    inside, after = (
        torch.load(tmp_path / f"{name}.ckpt", weights_only=True, map_location="cpu")
        for name in ("inside", "after")
    )
    for part in ("state_dict", "current_model_state"):
        assert inside[part].keys() == after[part].keys()
        assert all(torch.equal(inside[part][k], after[part][k]) for k in after[part]), part
    assert any(
        not torch.equal(after["state_dict"][k], after["current_model_state"][k]) for k in after["state_dict"]
    )


@pytest.mark.slow
def test_a_compiled_run_with_ema_and_mixing_trains_and_checkpoints_plain_keys(tmp_path: Path) -> None:
    """model.compile=true with the EMA and mixing through a whole fit + test (156 s on 2 CPU cores)."""
    from resflex.train import train

    record = train(
        compose_train([*EMA_RUN, "model.compile=true", "model.mixup=0.2", "model.cutmix=1.0"], tmp_path)
    )
    assert record["status"] == "completed" and "test/acc" in record["metrics"]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert not any("_orig_mod" in k for k in (*ckpt["state_dict"], *ckpt["current_model_state"]))
