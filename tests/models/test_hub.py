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


@pytest.mark.parametrize(
    ("endpoint", "address"),
    [
        ("https://hub.example", ("hub.example", 443)),
        ("http://hub.example", ("hub.example", 80)),
        ("http://hub.example:8080", ("hub.example", 8080)),
    ],
)
def test_the_probe_connects_to_the_endpoints_host_and_port(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, address: tuple[str, int]
) -> None:
    """The probe asks the endpoint the hub library would ask (HTTPS 443, HTTP 80, an explicit port): a
    probe of the wrong port calls a reachable mirror unreachable (cache only) or the reverse."""
    seen: list[tuple[str, int]] = []

    class Connection:
        def close(self) -> None:
            pass

    def create_connection(addr: tuple[str, int], timeout: float) -> Connection:
        seen.append(addr)
        return Connection()

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hub.socket, "create_connection", create_connection)
    assert hub.hub_reachable()
    assert seen == [address]


def test_the_hubs_own_offline_mode_is_unreachable_without_a_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 set by the user: the hub is not asked, even when its endpoint would answer."""

    def create_connection(addr: tuple[str, int], timeout: float) -> None:
        raise AssertionError(f"probed {addr} in offline mode")

    monkeypatch.setattr(hub.socket, "create_connection", create_connection)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert not hub.hub_reachable()


def test_offline_for_a_call_gives_back_the_users_own_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user who set HF_HUB_OFFLINE stays offline after a download from the cache (and online stays
    online); hub_or_cache yields whether the hub answered, offline only when it did not."""
    for before in (True, False):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", before)
        with hub.hub_offline():
            assert constants.HF_HUB_OFFLINE
        assert constants.HF_HUB_OFFLINE is before
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for reachable in (True, False):
        monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0, r=reachable: r)
        with hub.hub_or_cache("weights") as online:
            assert online is reachable
            assert constants.HF_HUB_OFFLINE is (not reachable)
        assert constants.HF_HUB_OFFLINE is False
