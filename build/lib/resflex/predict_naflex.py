"""``scripts/predict.py`` on a NaFlex run: every image patchified at its own aspect, at one sequence length.

A NaFlex run (``resolution=naflex``) takes token sequences, not (B, 3, H, W) batches, so its images are
not planned by size (:mod:`resflex.predict_plan`) but each one framed exactly as its evaluation frames
it: the image's header size (EXIF applied) -> the largest size of its aspect whose patch grid holds at
most ``seq_len`` patches (:meth:`NaFlexResolution.image_size`, timm's ``get_image_size_for_seq``) ->
the run's evaluation transform at that size (``squash``: the whole image, the run's ``data.source.decoder``
and reduced-scale decode) -> timm's ``patchify_image`` -> padded and masked batches
(:func:`resflex.data.naflex.collate_tokens`). The classifier is the run's own module
(:meth:`resflex.run.Run.token_classifier`), fed uint8 patches normalised as evaluation normalises them;
so a labelled folder gets the accuracy ``scripts/eval.py`` reports at that sequence length.

``predict.seq_len``: null is the run's ``max_seq_len`` (its ``val/acc``), or any sequence length >= 1.
Images are batched in file order, ``predict.batch_size`` at a time (padding does not reach the valid
tokens: attention and pooling are masked).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import OmegaConf

from resflex.data.bad_images import BadImageError
from resflex.data.images import DEFAULT_DECODER
from resflex.errors import ConfigError
from resflex.naflex_framing import SEQ_LEN_HINT, frame_image, token_logits
from resflex.predict_plan import Inputs
from resflex.run import Run
from resflex.runtime import size_tag


def check_naflex_options(run: Run, size: Any, seq_len: Any) -> None:
    """One line for an option of the other kind of run: ``predict.size`` on a NaFlex run (it sizes
    images), ``predict.seq_len`` on a run that takes images."""
    if run.is_naflex and size is not None:
        raise ConfigError(
            f"predict.size={OmegaConf.to_container(size) if OmegaConf.is_config(size) else size} sizes "
            "images, and this NaFlex run takes token sequences (each image at its own aspect)",
            hint=f"drop predict.size; {SEQ_LEN_HINT}",
        )
    if not run.is_naflex and seq_len is not None:
        raise ConfigError(
            f"predict.seq_len={seq_len} is for NaFlex runs (resolution=naflex); this run takes images",
            hint="drop predict.seq_len; predict.size=64, [h,w], native or auto",
        )


@torch.inference_mode()
def run_token_predictions(
    classifier: Any,
    classes: list[str],
    inputs: Inputs,
    schedule: Any,
    transform: Any,
    seq_len: int,
    batch_size: int,
    topk: int,
    device: torch.device,
    decoder: str = DEFAULT_DECODER,
) -> tuple[list[dict[str, Any]], dict[int, str], int]:
    """Classify every file at ``seq_len`` tokens: rows as :func:`resflex.predict.run_predictions`
    writes them (``height``/``width``: the image's framed size; ``size``: the sequence length),
    unreadable files, and the number of batches."""
    rows: list[dict[str, Any]] = []
    unreadable: dict[int, str] = {}
    framed: list[tuple[int, torch.Tensor]] = []
    for i, file in enumerate(inputs.files):
        try:
            framed.append((i, frame_image(file, schedule, transform, seq_len, decoder)))
        except BadImageError as exc:
            unreadable[i] = exc.message
        except (OSError, ValueError) as exc:  # a header that does not parse
            unreadable[i] = str(BadImageError(file, exc).message)
    k = min(topk, len(classes))
    batches = 0
    for start in range(0, len(framed), batch_size):
        chunk = framed[start : start + batch_size]
        logits = token_logits(classifier, [pixels for _, pixels in chunk], seq_len, device)
        probs = logits.float().softmax(dim=1).cpu()
        top = probs.topk(k, dim=1)
        for row, (i, pixels) in enumerate(chunk):
            label = inputs.labels[i]
            rows.append(
                {
                    "path": str(inputs.files[i]),
                    "index": i,
                    "height": int(pixels.shape[-2]),
                    "width": int(pixels.shape[-1]),
                    "size": size_tag(seq_len, seq_len),
                    "bucket": None,
                    "batch": batches,
                    "top": [
                        {"class": classes[int(c)], "prob": float(p)}
                        for c, p in zip(top.indices[row], top.values[row], strict=True)
                    ],
                    "label": classes[label] if label is not None else None,
                    "correct": (int(top.indices[row, 0]) == label) if label is not None else None,
                }
            )
        batches += 1
    return rows, unreadable, batches
