"""Value types shared by every layer (data, models, training, the entry points).

One home, so an image size means the same thing everywhere: ``(height, width)`` in
pixels, the order torch's tensors use (``images.shape[-2:]``). It sits below
``data/`` and ``models/`` so both can name it without importing each other; so does
:class:`TokenBatch`, which the NaFlex loader (``data/naflex.py``) makes and the NaFlex
backbone (``models/naflex.py``) reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: an image or input size, ``(height, width)`` in pixels
Size = tuple[int, int]


def as_size(value: Sequence[int]) -> Size:
    """An (h, w) pair as configs and tensors give it (a list, a tuple) as a :data:`Size`, e.g. a dict key."""
    h, w = value
    return int(h), int(w)


@dataclass
class TokenBatch:
    """A batch of patch sequences: ``patches`` (B, N, P*P*3) in timm's channels-last patch layout
    (uint8 from the loader, float once normalised), ``patch_coord`` (B, N, 2) as (row, column) in
    each image's grid, ``patch_valid`` (B, N) False on padding; ``seq_len``: the step's sequence
    length (the most tokens an image may have; N <= seq_len)."""

    patches: torch.Tensor
    patch_coord: torch.Tensor
    patch_valid: torch.Tensor
    seq_len: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, s, s): what the callbacks read as (batch, h, w) of an image batch; the 'size' is s."""
        return (int(self.patches.shape[0]), self.seq_len, self.seq_len)

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    @property
    def padding_share(self) -> torch.Tensor:
        """Share of the batch's token slots that are padding (what the transformer computes in vain)."""
        return 1.0 - self.patch_valid.float().mean()

    def grid_sizes(self) -> torch.Tensor:
        """(B, 2): each image's patch grid (rows, columns), from its valid tokens' coordinates."""
        coord = self.patch_coord.masked_fill(~self.patch_valid[..., None], -1)
        return coord.amax(dim=1) + 1

    def pin_memory(self) -> TokenBatch:
        return TokenBatch(
            self.patches.pin_memory(),
            self.patch_coord.pin_memory(),
            self.patch_valid.pin_memory(),
            self.seq_len,
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The keyword arguments of timm's ``NaFlexVit.forward_features``."""
        return {"patches": self.patches, "patch_coord": self.patch_coord, "patch_valid": self.patch_valid}

    def normalized(self, mean: torch.Tensor, std: torch.Tensor) -> TokenBatch:
        """uint8 patches -> float, normalised per channel (the last axis of timm's patch layout)."""
        b, n, d = self.patches.shape
        x = self.patches.float().view(b, n, d // 3, 3)
        x = (x - mean.reshape(3)) / std.reshape(3)
        return TokenBatch(x.view(b, n, d), self.patch_coord, self.patch_valid, self.seq_len)
