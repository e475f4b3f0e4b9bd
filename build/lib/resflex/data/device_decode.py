"""``data.source.decoder=device``: JPEGs decoded, cropped and resized on the batch's device.

Why: decoding a JPEG and resampling it are most of what a data worker does per image
(``scripts/benchmark.py --sections loader``, "steps alone"), and on a GPU machine the
workers' CPU cores can be what limits a fast model. Here the workers do only what needs
the file system and the per-sample random draws; torchvision's batched
``decode_jpeg(list, device=...)`` (nvJPEG when the device is CUDA) and the v2 functionals
do the rest on the device, one batch at a time.

Who does what:

- worker, :class:`DeviceFraming` (wraps the CPU ``square`` transform): reads the header
  (:class:`~resflex.data.images.ImageFile`), draws the framing with the wrapped transform's own
  methods (train: :meth:`~resflex.data.transforms.TrainTransform.square_box` then
  :meth:`~resflex.data.transforms.TrainTransform.draw_flip`; eval:
  :meth:`~resflex.data.transforms.EvalTransform.cover_size`) and reads the file's bytes,
  without decoding them. Files ``decode_jpeg`` cannot take (PNG and other formats, CMYK
  JPEGs) are framed right there by the wrapped transform, as ``decoder=torchvision`` does,
  so a batch can mix both;
- :func:`collate_encoded`: an :class:`EncodedBatch` (all the bytes in one tensor, the
  worker-framed images in another, a :class:`Framing` per sample) and the labels;
- transfer, :meth:`EncodedBatch.to`: framed pixels move to the device; bytes stay on the
  host, where ``decode_jpeg`` reads them whatever the output device;
- device, :meth:`EncodedBatch.decode`, called by
  :meth:`resflex.training.module.ClassificationModule.on_after_batch_transfer` before it
  normalises: one ``decode_jpeg`` call for the batch's JPEGs, then per image the EXIF
  orientation, the crop and resize (train: ``resized_crop``; eval: ``resize`` to cover,
  ``center_crop``) and the flip; out comes the uint8 (B, 3, h, w) batch the CPU path collates.

Determinism: every random draw happens in the worker, under the generator
:class:`~resflex.data.datamodule.SizedDataset` seeds with (seed, epoch, index), through the
same calls in the same order as the CPU transform; the device draws nothing. So an image
gets the same box and flip whatever the decoder. With ``device=cpu`` the pixels are
``decoder=torchvision``'s exactly (the same libjpeg-turbo decode, the same torch kernels;
``tests/data/test_device_decode.py``); on CUDA nvJPEG's decode and torch's float resize
kernel round differently (that test bounds the difference when a GPU is there).

EXIF orientation: ``decode_jpeg``'s ``apply_exif_orientation`` is implemented on the CPU
only (torchvision 0.29's docstring; it is ignored on CUDA), so JPEGs are decoded unturned
and :func:`orient` applies the orientation read from the header: the same code on every
device, which the CPU tests therefore cover.

Limits (:func:`check_device_decode`): ``resolution.geometry=square`` only;
``data.augment.auto`` and ``color_jitter`` run on decoded images in the workers, so they
are refused; only image folders have JPEG files (:func:`resflex.build.check_source_decoder`).
A file whose header reads but whose data is corrupt fails on the device, not in the worker:
it goes through the bad-image policy there (``skip`` puts another image of the batch, with
its label, in its place). On CUDA each decode first waits for the work already queued on the
current stream (see :func:`_decode`), so it does not overlap the previous step's kernels.
Checked on the CPU only: the nvJPEG path has not been run or measured on a GPU yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from resflex.data.bad_images import BadImageError, BadImagePolicy
from resflex.data.images import DEVICE_DECODER, ImageFile, decode_jpeg_reason, orient
from resflex.data.transforms import EvalTransform, TrainTransform
from resflex.errors import ConfigError, DataError
from resflex.types import Size

#: ``data.augment`` keys that transform decoded images in the workers
WORKER_AUGMENT = ("auto", "color_jitter")
_HINT = "data.source.decoder=auto"


def check_device_decode(
    geometry: str, reason: str, train: TrainTransform, phases: Iterable[TrainTransform] = ()
) -> None:
    """One-line errors for what ``data.source.decoder=device`` cannot do: a geometry other than
    ``square`` (``reason``: why the geometry is what it is) and augmentation of decoded images in
    the workers, in the ``train`` transform or a schedule phase's (FixRes' ``final_augment``, the
    only schedule with phases)."""
    if geometry != "square":
        raise ConfigError(
            f"data.source.decoder={DEVICE_DECODER} frames square crops only, "
            f"but resolution.geometry is {geometry} ({reason})",
            hint=f"resolution.geometry=square, or {_HINT}",
        )
    for where, transform in [("data.augment", train), *(("resolution.final_augment", t) for t in phases)]:
        for key in WORKER_AUGMENT:
            if getattr(transform, key, None) is not None:  # TrainTransform: the built policy / jitter
                raise ConfigError(
                    f"{where}.{key} is set: it changes decoded images in the data workers, which "
                    f"data.source.decoder={DEVICE_DECODER} leaves undecoded",
                    hint=f"{where}.{key}=null, or {_HINT}",
                )


@dataclass(frozen=True)
class Framing:
    """How a decoded JPEG becomes a (3, h, w) sample: turned by its EXIF ``orientation``, then train:
    the ``box`` (top, left, height, width) resized to ``size`` = (h, w); eval: resized to ``cover``
    (h, w) and centre-cropped to ``size``; then mirrored if ``flip``. Boxes are in the turned image,
    as the CPU transforms draw them. ``path`` names the file in errors."""

    size: Size
    box: tuple[int, int, int, int] | None = None
    cover: Size | None = None
    flip: bool = False
    orientation: int = 1
    path: str = ""

    def apply(self, decoded: torch.Tensor) -> torch.Tensor:
        """The decoded (unturned) image framed, on its own device."""
        image = orient(decoded, self.orientation)
        h, w = self.size
        if self.box is not None:
            top, left, crop_h, crop_w = self.box
            image = TF.resized_crop(image, top, left, crop_h, crop_w, [h, w], antialias=True)
        else:
            assert self.cover is not None
            image = TF.center_crop(TF.resize(image, list(self.cover), antialias=True), [h, w])
        return TF.horizontal_flip(image) if self.flip else image


class EncodedImage(NamedTuple):
    """One sample as a worker leaves it: a JPEG file's bytes (1-D uint8) and their ``framing``, or
    (``framing`` None) the uint8 (3, h, w) image the worker framed itself."""

    data: torch.Tensor
    framing: Framing | None = None


class DeviceFraming:
    """The worker side: ``transform``'s framing drawn for an image file, its bytes read, no decoding.

    ``transform`` is the CPU ``square`` transform (train or eval) the data module built; the draws
    are its own methods, so a sample gets the box and flip the CPU path would give it. Anything
    that is not a JPEG ``decode_jpeg`` takes is framed by ``transform`` here, in full.
    """

    def __init__(self, transform: TrainTransform | EvalTransform) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image | ImageFile, size: Size) -> EncodedImage:
        data = image.read_jpeg() if isinstance(image, ImageFile) else None
        if data is None:  # PNG, CMYK JPEG, an in-memory image: framed here, as the CPU path does
            return EncodedImage(self.transform(image, size))
        assert isinstance(image, ImageFile)
        width, height = image.size
        framing = partial(Framing, size, orientation=image.orientation, path=image.path)
        if isinstance(self.transform, TrainTransform):
            box = self.transform.square_box(width, height, size)
            return EncodedImage(data, framing(box=box, flip=self.transform.draw_flip()))
        cover = self.transform.cover_size(width, height, size)
        return EncodedImage(data, framing(cover=(cover[0], cover[1])))


class EncodedBatch:
    """A batch on its way to ``device``, packed for the trip out of a worker process: every JPEG's bytes
    in one tensor (``jpegs``, split by ``lengths``), the worker-framed images in another (``pixels``),
    and per sample its :class:`Framing` (None: the next row of ``pixels``). Two tensors, not one
    per sample: each tensor a worker sends holds a file descriptor until it is received.
    :meth:`decode` makes it pixels.

    ``bad_images``: the source's policy for files that turn out corrupt when decoded (None: raise).
    """

    def __init__(
        self,
        jpegs: torch.Tensor,
        lengths: Sequence[int],
        framings: Sequence[Framing | None],
        pixels: torch.Tensor | None,
        device: torch.device | str = "cpu",
        bad_images: BadImagePolicy | None = None,
    ) -> None:
        self.jpegs, self.lengths, self.framings = jpegs, list(lengths), list(framings)
        self.pixels = pixels
        self.device = torch.device(device)
        self.bad_images = bad_images

    @classmethod
    def pack(cls, images: Sequence[EncodedImage], bad_images: BadImagePolicy | None = None) -> EncodedBatch:
        jpegs = [i.data for i in images if i.framing is not None]
        framed = [i.data for i in images if i.framing is None]
        return cls(
            torch.cat(jpegs) if jpegs else torch.empty(0, dtype=torch.uint8),
            [len(j) for j in jpegs],
            [i.framing for i in images],
            torch.stack(framed) if framed else None,
            bad_images=bad_images,
        )

    def __len__(self) -> int:
        return len(self.framings)

    def _with_pixels(self, pixels: torch.Tensor | None, device: torch.device) -> EncodedBatch:
        return EncodedBatch(self.jpegs, self.lengths, self.framings, pixels, device, self.bad_images)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> EncodedBatch:
        """What Lightning's batch transfer calls: worker-framed images move to ``device``; JPEG bytes
        stay on the host (``decode_jpeg`` takes them from there for any output device)."""
        device = torch.device(device)
        pixels = None if self.pixels is None else self.pixels.to(device, non_blocking=non_blocking)
        return self._with_pixels(pixels, device)

    def pin_memory(self) -> EncodedBatch:
        """What the loader's ``pin_memory`` calls: worker-framed images pinned (a non-blocking copy)."""
        return self._with_pixels(None if self.pixels is None else self.pixels.pin_memory(), self.device)

    def decode(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 (B, 3, h, w) batch on :attr:`device` and its labels.

        A JPEG that fails to decode goes through :attr:`bad_images`: ``raise`` stops naming it;
        ``skip`` records it and puts the next good image of the batch, and its label, in its place
        (the batch keeps its shape, as in the workers).
        """
        jpegs = iter(self._decode_jpegs())
        framed: Iterator[torch.Tensor] = iter(self.pixels if self.pixels is not None else [])
        images = [next(framed) if f is None else _apply(f, next(jpegs)) for f in self.framings]
        readable = {k: image for k, image in enumerate(images) if image is not None}
        good = list(readable)
        if not good:
            raise DataError(f"no image of a batch of {len(images)} could be decoded", hint="check the files")
        # a failed image's place goes to the next good one (wrapping around)
        order = [k if k in good else next((g for g in good if g > k), good[0]) for k in range(len(images))]
        batch = torch.stack([readable[k] for k in order])
        if len(good) < len(images):
            labels = labels[torch.tensor(order, device=labels.device)]
        return batch, labels

    def _decode_jpegs(self) -> list[torch.Tensor | None]:
        """The JPEGs decoded on :attr:`device`, in one call; when that call fails, one by one, to find
        the file(s) at fault (None for each, after the bad-image policy)."""
        if not self.lengths:
            return []
        data = list(self.jpegs.split(self.lengths))
        try:
            return list(_decode(data, self.device))
        except RuntimeError:
            pass
        paths = [f.path for f in self.framings if f is not None]
        decoded: list[torch.Tensor | None] = []
        for one, path in zip(data, paths, strict=True):
            try:
                decoded.append(_decode([one], self.device)[0])
            except RuntimeError as exc:
                (self.bad_images or BadImagePolicy("raise")).handle(
                    BadImageError(path, decode_jpeg_reason(exc))
                )
                decoded.append(None)
        return decoded


def _apply(framing: Framing, decoded: torch.Tensor | None) -> torch.Tensor | None:
    return None if decoded is None else framing.apply(decoded)


def _decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """``decode_jpeg`` of JPEG files' bytes (a list) into RGB on ``device``, unturned (:func:`orient`)."""
    if device.type == "cuda":
        # torchvision's CUDA decode writes its outputs from a private stream that does not wait for
        # the caller's: memory just freed by kernels still queued there can be overwritten
        # (pytorch/vision#9606), so let the queued work finish first
        torch.cuda.current_stream(device).synchronize()
    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=False)


def collate_encoded(
    samples: Sequence[tuple[EncodedImage, int]], bad_images: BadImagePolicy | None = None
) -> tuple[EncodedBatch, torch.Tensor]:
    """The loader's ``collate_fn`` for :class:`DeviceFraming` samples: (batch, labels)."""
    images, labels = zip(*samples, strict=True)
    return EncodedBatch.pack(images, bad_images), torch.tensor(labels, dtype=torch.long)
