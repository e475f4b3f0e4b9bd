"""Decode-once, resize-once transforms from a native-size image to a uint8 tensor at (h, w).

The batch sampler chooses the size; this module turns one image into exactly
that size in a single resample (crop box + resize), on the data worker, and
keeps the pixels uint8: normalisation happens on the device
(:meth:`resflex.training.module.ClassificationModule.on_after_batch_transfer`).
Built from torchvision transforms v2; one pipeline per size, cached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

Size = tuple[int, int]


class TrainTransform:
    """Random-resized crop to (h, w) plus horizontal flip; uint8 CHW out.

    The crop box is drawn by torchvision's ``v2.RandomResizedCrop.make_params`` and the
    pixels go through ``v2.functional`` (``resized_crop``, ``horizontal_flip``,
    ``pil_to_tensor``) directly rather than through a ``v2.Compose``: same random draws,
    same pixels, but without the per-call input flattening of the composed transform, which
    costs a quarter of the time of a 64 px item (0.18 -> 0.14 ms, measured on the dev CPU).
    """

    def __init__(
        self,
        scale: Sequence[float] = (0.35, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: bool = True,
    ) -> None:
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.hflip = hflip
        # the size argument only matters to the kernel, which we call ourselves
        self._crop = v2.RandomResizedCrop((1, 1), scale=self.scale, ratio=self.ratio, antialias=True)

    def __call__(self, image: Image.Image | torch.Tensor, size: Size) -> torch.Tensor:
        box = self._crop.make_params([image])
        out = TF.resized_crop(
            image, box["top"], box["left"], box["height"], box["width"], list(size), antialias=True
        )
        # v2.RandomHorizontalFlip's draw: flip when rand < p
        if self.hflip and torch.rand(1).item() < 0.5:
            out = TF.horizontal_flip(out)
        return TF.pil_to_tensor(out) if isinstance(out, Image.Image) else out


class EvalTransform:
    """Resize so the image covers (h/crop_pct, w/crop_pct) keeping its aspect, then centre-crop (h, w).

    ``crop_pct=1`` keeps as much of the image as the target aspect allows.
    """

    def __init__(self, crop_pct: float = 1.0) -> None:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.crop_pct = crop_pct

    def __call__(self, image: Image.Image, size: Size) -> torch.Tensor:
        h, w = size
        width, height = image.size
        scale = max(h / height, w / width) / self.crop_pct
        resized_hw = [max(h, math.ceil(height * scale - 1e-6)), max(w, math.ceil(width * scale - 1e-6))]
        image = TF.resize(image, resized_hw, antialias=True)
        image = TF.center_crop(image, [h, w])
        return TF.pil_to_tensor(image)
