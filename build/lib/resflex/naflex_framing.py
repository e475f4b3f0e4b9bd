"""How a NaFlex run frames one image for a sequence length: the pieces that inference
(:func:`resflex.inference.load_classifier`), evaluation, export and ``scripts/predict.py`` share.

An image's header size -> the largest size of its aspect whose patch grid holds at most ``seq_len``
patches (:meth:`NaFlexResolution.image_size`, timm's ``get_image_size_for_seq``) -> the run's
evaluation transform at that size -> timm's ``patchify_image``, padded and masked into a batch
(:func:`resflex.data.naflex.collate_tokens`). Kept apart from :mod:`resflex.predict_naflex` (the
folder-prediction loop) so the loaded classifier does not depend on the prediction planner.
"""

from __future__ import annotations

from typing import Any

import torch

from resflex.data.buckets import file_image_size
from resflex.data.images import open_image
from resflex.data.naflex import collate_tokens
from resflex.errors import ConfigError

SEQ_LEN_HINT = "predict.seq_len=64 (tokens per image; null: the run's max_seq_len)"


def parse_seq_len(value: Any, schedule: Any, key: str = "predict.seq_len", hint: str = SEQ_LEN_HINT) -> int:
    """``null`` -> the run's ``max_seq_len``; else a whole number of tokens >= 1 (one line otherwise).

    No upper bound is checked: timm's NaFlexVit interpolates its position embeddings to any grid, so
    the model takes any length (memory is the limit).
    """
    if value is None and schedule is not None:
        return int(schedule.max_seq_len)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a whole number of tokens >= 1, got {value!r}", hint=hint)
    return value


def frame_image(path: Any, schedule: Any, transform: Any, seq_len: int, decoder: str) -> torch.Tensor:
    """One file as evaluation frames it for ``seq_len`` tokens: uint8 (3, h, w), h and w multiples of
    the patch, at most ``seq_len`` patches, the image's aspect."""
    width, height = file_image_size(str(path))
    shape = schedule.image_size(width, height, seq_len)
    return transform(open_image(path, decoder), shape)


def frame_pixels(pixels: torch.Tensor, schedule: Any, transform: Any, seq_len: int) -> torch.Tensor:
    """A decoded uint8 (3, H, W) image as :func:`frame_image` frames its file (decoded at full scale)."""
    shape = schedule.image_size(int(pixels.shape[-1]), int(pixels.shape[-2]), seq_len)
    return transform(pixels, shape)


def token_logits(
    classifier: Any, framed: list[torch.Tensor], seq_len: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Logits of framed uint8 images (each its own (h, w)): patchified, padded and masked into one
    batch (:func:`resflex.data.naflex.collate_tokens`), through a ``TokenClassifier``."""
    tokens, _ = collate_tokens([(pixels, 0) for pixels in framed], classifier.patch_size, seq_len)
    return classifier(*(t.to(device) for t in tokens.model_inputs().values()))
