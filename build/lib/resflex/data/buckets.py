"""Aspect-ratio buckets for ``geometry=keep_aspect``: which bucket each image belongs to.

Bucketing needs every image's (width, height) before training, without
decoding the pixels: a dataset can answer cheaply through an
``image_size(index)`` method (the synthetic shapes compute it from their seed),
image folders are read with PIL's lazy ``Image.open`` (header only, EXIF
orientation applied), and ``Subset`` maps indices to its base. Anything else
falls back to decoding, once, with a warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from PIL import Image
from torch.utils.data import Dataset, Subset

from resflex.data.images import SWAPPING_ORIENTATIONS, exif_orientation

if TYPE_CHECKING:
    from resflex.data.datasets import Split

log = logging.getLogger(__name__)


def file_image_size(path: str) -> tuple[int, int]:
    """(width, height) as the decoded, EXIF-transposed image would have; reads only the header."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = exif_orientation(image)
    return (height, width) if orientation in SWAPPING_ORIENTATIONS else (width, height)


def image_sizes(dataset: Split) -> list[tuple[int, int]]:
    """(width, height) of every item of ``dataset``, as cheaply as the dataset allows."""
    lookup = image_sizes_lookup(dataset)
    return [lookup(i) for i in range(len(dataset))]


def image_sizes_lookup(dataset: Split | Dataset) -> Callable[[int], tuple[int, int]]:
    """``index -> (width, height)``, as cheaply as ``dataset`` allows (a ``Subset`` maps to its base)."""
    if isinstance(dataset, Subset):
        base, indices = image_sizes_lookup(dataset.dataset), dataset.indices
        return lambda i: base(int(indices[i]))
    if hasattr(dataset, "image_size"):
        return dataset.image_size
    samples = getattr(dataset, "samples", None)  # torchvision ImageFolder / DatasetFolder
    if isinstance(samples, list) and samples and isinstance(samples[0], tuple):
        return lambda i: file_image_size(samples[i][0])
    log.warning("%s has no cheap image_size(); decoding every image once to bucket by aspect", type(dataset))
    return lambda i: tuple(dataset[i][0].size)


def assign_buckets(sizes: Sequence[tuple[int, int]], aspect_ratios: Sequence[float]) -> list[int]:
    """Index of the nearest bucket aspect (w/h, compared in log space) for each (width, height)."""
    logs = [math.log(a) for a in aspect_ratios]
    out = []
    for width, height in sizes:
        a = math.log(width / height)
        out.append(min(range(len(logs)), key=lambda k: abs(logs[k] - a)))
    return out


def merge_small_buckets(
    buckets: Sequence[int], aspect_ratios: Sequence[float], minimum: int = 2
) -> list[int]:
    """Move the images of buckets with fewer than ``minimum`` members to the nearest larger bucket.

    A bucket of one image would train a batch of one: BatchNorm in training mode then
    normalises a sample by its own statistics (or fails on a 1x1 map). Nearest is
    measured in log aspect, as in :func:`assign_buckets`.
    """
    counts = {b: buckets.count(b) for b in set(buckets)}
    if len(counts) < 2 or all(n >= minimum for n in counts.values()):
        return list(buckets)
    keep = [b for b, n in counts.items() if n >= minimum] or [max(counts, key=counts.__getitem__)]
    logs = [math.log(a) for a in aspect_ratios]
    target = {b: min(keep, key=lambda k: abs(logs[k] - logs[b])) for b in counts}
    return [b if b in keep else target[b] for b in buckets]
