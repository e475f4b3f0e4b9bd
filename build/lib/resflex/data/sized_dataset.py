"""The dataset the loaders read: a source's ``(image, label)`` framed on request at the batch's size.

:class:`SizedDataset` is indexed by :class:`~resflex.data.sampler.SampleRequest` (sample, h, w, and the
augmentation phase and epoch), so the batch sampler, not the dataset, decides every image's size;
:func:`mean_color` is the ``pad`` geometry's fill. Split from :mod:`resflex.data.datamodule`, which
wires these into loaders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from resflex.data.bad_images import BadImageError, BadImagePolicy
from resflex.data.device_decode import DeviceFraming, EncodedImage
from resflex.data.images import ImageFile
from resflex.data.sampler import SampleRequest
from resflex.data.transforms import DEFAULT_FILL, EvalTransform, TrainTransform
from resflex.errors import DataError

if TYPE_CHECKING:
    from resflex.data.datasets import Split

#: what frames a sample: the CPU transforms, or the device decoder's worker side
Transform = TrainTransform | EvalTransform | DeviceFraming


class SizedDataset(Dataset):
    """A ``(PIL image, label)`` dataset framed on request: ``dataset[SampleRequest(i, h, w)]`` -> uint8 image.

    A request with a ``phase`` uses ``phase_transforms[phase]`` instead (FixRes' final phase:
    the train transform with weaker crops); one with an ``epoch`` draws its augmentation
    from a generator seeded by (seed, epoch, index). Plain tuples in that order work too.
    With ``data.source.decoder=device`` the transforms are :class:`DeviceFraming` and the item an
    :class:`~resflex.data.device_decode.EncodedImage` (bytes and framing; decoded on the device).
    """

    def __init__(
        self,
        base: Split,
        transform: Transform,
        phase_transforms: Mapping[str, Transform] | None = None,
        bad_images: BadImagePolicy | None = None,
        seed: int = 0,
    ) -> None:
        self.base = base
        self.transform = transform
        self.phase_transforms = phase_transforms or {}
        self.bad_images = bad_images or BadImagePolicy("skip")
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: SampleRequest | tuple) -> tuple[torch.Tensor | EncodedImage, int]:
        index, h, w, phase, epoch = SampleRequest(*item)
        transform = self.phase_transforms[phase] if phase is not None else self.transform
        if epoch is None:
            return self._load_and_transform(index, transform, (h, w))
        # random augmentation as a pure function of (seed, epoch, index): identical after a
        # resume and whatever the number of workers (only the CPU generator, which the v2
        # transforms draw from: ``torch.manual_seed`` would also reseed every accelerator,
        # a third of the cost of a small item)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(hash((self.seed, epoch, index)) & 0x7FFF_FFFF)
            return self._load_and_transform(index, transform, (h, w))

    def _load_and_transform(
        self, index: int, transform: Transform, size: tuple[int, int]
    ) -> tuple[torch.Tensor | EncodedImage, int]:
        """The sample at ``index``; with ``on_bad_image=skip`` an unreadable one is replaced by the next.

        Image folders decode in the transform (at the scale the crop needs), so a
        truncated file can fail there as well as when its header is read.
        """
        n = len(self)
        for attempt in range(min(n, 64)):
            try:
                image, label = self.base[(index + attempt) % n]
                return transform(image, size), label
            except BadImageError as error:
                self.bad_images.handle(error)  # raises with on_bad_image=raise
        raise DataError(f"no readable image near index {index} (64 tried)", hint="check the dataset files")


def mean_color(dataset: Split, indices: Sequence[int]) -> tuple[int, int, int]:
    """Mean RGB of a few images (decoded small): the ``pad`` geometry's fill colour.

    Padding with the data's own mean keeps the border close to what the network sees
    inside images, so it carries no signal of its own after normalisation.
    """
    means = []
    for index in indices:
        try:
            image = dataset[index][0]
            if isinstance(image, ImageFile):
                image, _ = image.decode((32, 32))
            means.append(np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0))
        except BadImageError:
            continue
    if not means:
        return DEFAULT_FILL
    r, g, b = (round(float(v)) for v in np.mean(means, axis=0))
    return r, g, b
