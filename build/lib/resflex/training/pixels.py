"""The training pixels a run has forwarded (``train/megapixels``): its compute, in the unit schedules trade.

Why a count of its own: wall time depends on the machine and on what else runs on it, and images
per step hide the size, but the schedules (a size per batch, batch growth, a second view at another
size) differ exactly in how many pixels a step costs. The count is every training image's h × w,
the scale-consistency term's second views included, taken from tensor shapes on the host (no device
sync); token batches (NaFlex) are not counted (their cost is a sequence length, not a side).

It survives a resume: the checkpoint carries the count so far (rank 0's; each rank takes it back,
so a resumed DDP run counts its earlier epochs as if every rank had seen rank 0's pixels, which the
distributed sampler's equal shares make true up to the aspect buckets' shapes).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

#: the checkpoint key of the count
PIXELS_KEY = "resflex_train_pixels"


class PixelCounter:
    """Pixels forwarded by training steps on this rank, since the run's start."""

    def __init__(self) -> None:
        self.pixels = 0

    def add(self, images: Any) -> None:
        """Count a (B, C, h, w) batch; anything else (a token batch) is not counted."""
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            self.pixels += int(images.shape[0]) * int(images.shape[-2]) * int(images.shape[-1])

    def save(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[PIXELS_KEY] = self.pixels

    def load(self, checkpoint: dict[str, Any]) -> None:
        self.pixels = int(checkpoint.get(PIXELS_KEY, 0))

    def megapixels(self, trainer: pl.Trainer | None, device: torch.device) -> float:
        """The count over every rank, in millions."""
        total = torch.tensor(float(self.pixels), device=device)
        if trainer is not None and trainer.world_size > 1:
            total = trainer.strategy.reduce(total, reduce_op="sum")
        return float(total) / 1e6
