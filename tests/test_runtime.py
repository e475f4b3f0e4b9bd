"""resflex.runtime: the machine rules every command shares (precision, device, memory layout, size names).

The CI machine has no GPU: a GPU is simulated by patching ``torch.cuda``'s answers, which is all these
rules read."""

from __future__ import annotations

import pytest
import torch

from resflex.runtime import autocast_for, resolve_channels_last, resolve_device, resolve_precision, size_tag


def pretend_gpu(monkeypatch: pytest.MonkeyPatch, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_precision_auto_on_a_gpu_is_bf16_where_supported_else_fp16(
    bf16: bool, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older GPUs (no bf16) get fp16 mixed precision; newer ones bf16 (no loss scaling needed)."""
    pretend_gpu(monkeypatch, bf16)
    assert resolve_precision("auto") == expected
    assert resolve_precision("auto", "cuda:0") == expected
    assert resolve_precision("64-true") == "64-true"  # a precision asked for by name is kept


def test_precision_auto_follows_the_device_asked_for_not_the_visible_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``device=cpu`` on a machine with a GPU (evaluation on the CPU): fp32, as the CPU computes it."""
    pretend_gpu(monkeypatch)
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("auto", torch.device("cpu")) == "32-true"


def test_auto_device_and_channels_last_follow_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_channels_last("auto") is False
    pretend_gpu(monkeypatch)
    assert resolve_device("auto") == torch.device("cuda") and resolve_channels_last("auto") is True
    assert resolve_device("cpu") == torch.device("cpu") and resolve_channels_last(False) is False


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)]
)
def test_autocast_for_computes_in_the_precisions_dtype(precision: str, dtype: torch.dtype) -> None:
    """Evaluation outside a Trainer must compute as training did (Lightning's precision plugin)."""
    a = torch.ones(2, 2)
    with autocast_for(precision, torch.device("cpu")):
        assert (a @ a).dtype == dtype
    with autocast_for("32-true", torch.device("cpu")):
        assert (a @ a).dtype == torch.float32


def test_size_tag_names_a_square_by_one_side_and_others_height_by_width() -> None:
    """Metric names and folders say ``48x80`` for 48 high and 80 wide (as eval.resolutions writes it)."""
    assert size_tag(64, 64) == "64"
    assert size_tag(48, 80) == "48x80"
