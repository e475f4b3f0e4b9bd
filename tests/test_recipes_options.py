"""Issue #17, model and optimizer switches: backbone.drop_path_rate, optimizer presets (lamb, lion)."""

from __future__ import annotations

import pytest
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
