"""Issue #17, model and optimizer switches: backbone.drop_path_rate, optimizer presets (lamb, lion)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from resflex.config import CONFIG_DIR, group_options
from resflex.errors import ConfigError
from resflex.models.backbone import TimmBackbone


def _drop_rates(backbone: TimmBackbone) -> list[float]:
    return [m.drop_prob for m in backbone.model.modules() if type(m).__name__ == "DropPath"]


def test_drop_path_rate_reaches_timm_and_null_keeps_the_default() -> None:
    assert _drop_rates(TimmBackbone("test_resnet")) == []
    rates = _drop_rates(TimmBackbone("test_resnet", drop_path_rate=0.2))
    assert rates and max(rates) == pytest.approx(0.2)  # timm scales it up to the deepest block


@pytest.mark.parametrize("option", group_options("backbone"))
def test_every_backbone_file_documents_drop_path_rate_as_null(option: str) -> None:
    text = (CONFIG_DIR / "backbone" / f"{option}.yaml").read_text()
    assert OmegaConf.create(text)["drop_path_rate"] is None
    assert "stochastic depth" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop_path_rate": 1.5}, "backbone.drop_path_rate=1.5 is invalid"),
        ({"drop_path_rate": -0.1}, "backbone.drop_path_rate=-0.1 is invalid"),
        ({"drop_path_rate": 0.1, "model_kwargs": {"drop_path_rate": 0.1}}, "both set"),
    ],
)
def test_bad_drop_path_rate_is_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        TimmBackbone("test_resnet", **kwargs)
    assert "\n" not in str(info.value)


def test_drop_path_rate_on_a_model_without_stochastic_depth_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"has no stochastic depth \(backbone.drop_path_rate\)"):
        TimmBackbone("vgg11", drop_path_rate=0.1)


@pytest.mark.parametrize(("option", "cls_name"), [("lamb", "Lamb"), ("lion", "Lion")])
def test_optimizer_preset_builds_its_class_and_takes_a_step(option: str, cls_name: str) -> None:
    from resflex.models.classifier import ImageClassifier
    from resflex.models.pooling import AvgPool
    from resflex.training.param_groups import FinetuneSpec, build_param_groups

    factory = instantiate(OmegaConf.load(CONFIG_DIR / "optimizer" / f"{option}.yaml"))
    torch.manual_seed(0)
    model = ImageClassifier(TimmBackbone("test_resnet"), AvgPool(), num_classes=3)
    optimizer = factory(build_param_groups(model, factory.weight_decay, FinetuneSpec.from_config(None)))
    assert type(optimizer).__name__ == cls_name
    assert max(g["lr"] for g in optimizer.param_groups) == pytest.approx(factory.lr)  # the head
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 2]))
    loss.backward()
    optimizer.step()
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_small_data_finetune_preset_turns_on_what_the_study_kept(tmp_path: Path) -> None:
    from resflex.build import build_callbacks, build_datamodule, build_module
    from resflex.training.ema import ModelEma
    from resflex.training.lr_schedule import WarmupCosine
    from tests.test_configs import compose_train

    small = ["data.source.num_train=24", "data.source.num_val=8", "data.source.num_test=8"]
    cfg = compose_train(["experiment=small_data_finetune", "backbone.name=test_resnet", *small], tmp_path)
    assert cfg.task_name == "small_data_finetune"
    transform = build_datamodule(cfg).train_transform
    # what the study found costs accuracy on small data in short runs stays off (experiments/recipes/)
    assert transform.policy is None and transform.color_jitter is None
    module = build_module(cfg, num_classes=10)
    assert module.mixer is None and module.eraser is None
    assert isinstance(module.lr_schedule, WarmupCosine) and module.lr_schedule.warmup_epochs == 3.0
    assert _drop_rates(module.model.backbone) and max(_drop_rates(module.model.backbone)) == pytest.approx(
        0.1
    )
    assert module.ema_args == {"decay": 0.999, "warmup": True}
    assert not any(isinstance(c, ModelEma) for c in build_callbacks(cfg, True))  # the module brings it
