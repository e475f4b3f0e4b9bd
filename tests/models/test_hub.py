"""backbone.pretrained=true without a network: the hub's cache at once, one line when the weights are not
there (it took 47 s of retries before), and online behaviour untouched."""

from __future__ import annotations

import time

import pytest
import timm
from huggingface_hub import constants

from resflex.errors import ConfigError
from resflex.models import hub
from resflex.models.backbone import create_timm_model


def test_an_unreachable_endpoint_is_known_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    started = time.monotonic()
    assert not hub.hub_reachable(timeout=3.0)
    assert time.monotonic() - started < 3.0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert not hub.hub_reachable()


def test_offline_the_weights_come_from_the_cache_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def create_model(name: str, pretrained: bool, **kwargs: object) -> None:
        seen.append(constants.HF_HUB_OFFLINE)
        raise RuntimeError("LocalEntryNotFoundError: not in the cache")

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(timm, "create_model", create_model)
    before = constants.HF_HUB_OFFLINE
    with pytest.raises(ConfigError, match="not reachable, and they are not cached") as info:
        create_timm_model("resnet18", pretrained=True)
    assert seen == [True]
    assert before == constants.HF_HUB_OFFLINE  # offline for the call only
    assert "backbone.weights=" in str(info.value) and "\n" not in str(info.value)


def test_online_the_hub_is_asked_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)

    def create_model(name: str, pretrained: bool, **kwargs: object) -> str:
        seen.append(constants.HF_HUB_OFFLINE)
        return "model"

    monkeypatch.setattr(timm, "create_model", create_model)
    assert create_timm_model("resnet18", pretrained=True) == "model"
    assert seen == [constants.HF_HUB_OFFLINE]
