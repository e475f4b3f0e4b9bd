"""The shared value types (``resflex.types``): the (height, width) size and the NaFlex token batch, each
checked by hand (mutation audit, round 8) beyond what the loader and model tests read of them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from resflex.types import TokenBatch, as_size


def test_as_size_is_height_then_width_as_plain_ints() -> None:
    """A non-square size keeps its order (h, w), and whatever the numbers came as (a tensor's elements,
    numpy's) the pair holds Python ints: a dict key equal to the config's, and JSON-writable (metrics)."""
    assert as_size([24, 40]) == (24, 40) and as_size((40, 24)) == (40, 24)
    for value in (torch.tensor([24, 40]), np.array([24, 40])):
        size = as_size(value)
        assert size == (24, 40) and all(type(v) is int for v in size)
        assert json.dumps({"size": size}) == '{"size": [24, 40]}'
    with pytest.raises(ValueError):
        as_size([24, 40, 3])


def _tokens(coord: list[list[list[int]]], valid: list[list[bool]], seq_len: int = 4) -> TokenBatch:
    b, n = len(coord), len(coord[0])
    patches = torch.arange(b * n * 12, dtype=torch.uint8).view(b, n, 12)  # 2x2 patches, 3 channels
    return TokenBatch(patches, torch.tensor(coord), torch.tensor(valid), seq_len)


def test_grid_sizes_read_valid_tokens_only() -> None:
    """Coordinates in padding slots (whatever a collator left there) do not count; an image without a
    valid token has a 0 x 0 grid."""
    batch = _tokens(
        [[[0, 0], [0, 1], [7, 9]], [[0, 0], [1, 0], [5, 5]], [[3, 3], [0, 0], [0, 0]]],
        [[True, True, False], [True, True, False], [False, False, False]],
    )
    assert batch.grid_sizes().tolist() == [[1, 2], [2, 1], [0, 0]]


def test_pin_memory_keeps_every_field_in_its_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the loader's ``pin_memory`` calls: the same batch back, field by field (pinning itself needs
    CUDA, so here it is a copy), with the step's sequence length."""
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self.clone())
    batch = _tokens([[[0, 0], [0, 1], [0, 0]]], [[True, True, False]], seq_len=5)
    pinned = batch.pin_memory()
    assert torch.equal(pinned.patches, batch.patches)
    assert torch.equal(pinned.patch_coord, batch.patch_coord)
    assert torch.equal(pinned.patch_valid, batch.patch_valid) and pinned.patch_valid.dtype == torch.bool
    assert pinned.seq_len == 5 and pinned.shape == (1, 5, 5)


def test_normalized_keeps_the_step_and_normalises_each_channel() -> None:
    """Float patches, (value - mean) / std per channel (the last axis of timm's patch layout); the step's
    sequence length (``shape``, which the callbacks read) and the mask are unchanged."""
    batch = _tokens([[[0, 0], [0, 1], [0, 0]]], [[True, True, False]], seq_len=6)
    out = batch.normalized(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 8.0]))
    values = batch.patches.float().view(1, 3, 4, 3)
    expected = (values - torch.tensor([1.0, 2.0, 3.0])) / torch.tensor([2.0, 4.0, 8.0])
    assert out.patches.dtype == torch.float32 and torch.allclose(out.patches, expected.view(1, 3, 12))
    assert out.shape == (1, 6, 6) and len(out) == 1
    assert torch.equal(out.patch_valid, batch.patch_valid) and torch.equal(out.patch_coord, batch.patch_coord)
