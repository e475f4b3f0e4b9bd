"""Decode-once, resize-once transforms from a native-size image to a uint8 tensor at (h, w).

The batch sampler chooses the size; this module turns one image into exactly
that size in a single resample, on the data worker, and keeps the pixels uint8:
normalisation happens on the device
(:meth:`resflex.training.module.ClassificationModule.on_after_batch_transfer`).
Built from torchvision transforms v2 (parameters and functional kernels).

How the image is framed into (h, w) is the *geometry* (``resolution.geometry``):

===========  ===================================================================
square       train: random-resized crop (``scale``, ``ratio``); eval: resize to
             cover, centre crop. The classic ImageNet recipe.
keep_aspect  (h, w) is the shape of the image's aspect-ratio bucket
             (:mod:`resflex.data.buckets`); the whole image is resized to it, so
             its aspect changes at most by half a bucket step (sqrt(1.5) = 1.22x
             with the default buckets, for aspects within 0.5-2; the outer
             buckets stretch anything beyond); train: ``squash``'s mild jitter.
squash       the whole image resized to (h, w), aspect ignored (timm's
             ``crop_mode='squash'``); train: a mild crop, each side keeping a
             share in sqrt(``whole_scale``).
pad          letterbox: the whole image fitted inside (h, w) keeping its aspect,
             the rest filled with ``fill`` (the dataset's mean colour); train:
             shrunk by ``whole_scale`` of the fitted area and shifted at random.
===========  ===================================================================

``auto`` is resolved to one of these from the dataset's profile before the
transforms are built (:mod:`resflex.data.profile`).

After the framing and the flip, training can add torchvision's automatic
augmentation policies and colour jitter to the framed uint8 image
(``data.augment.auto``, ``magnitude``, ``color_jitter``; :func:`build_policy`).
Every random draw comes from torch's CPU generator, which
:class:`~resflex.data.datamodule.SizedDataset` seeds per sample, so an image's
augmentation is a function of (seed, epoch, index): the same after a resume and
on any number of workers or ranks. (timm's ``rand_augment_transform`` draws from
Python's ``random`` and numpy instead, hence torchvision v2 here.) Random erasing
is done per batch on the device, after normalisation
(:class:`resflex.training.module.ClassificationModule`).

Why keep_aspect frames the whole image rather than taking random-resized crops
inside its bucket (with the aspect range relative to the bucket's w/h, which
it did first): on images with an object anywhere (experiments/variable_size/),
crops cut objects at the edges and whole-image framings learned faster, as
``squash`` did against ``square``.

From an image folder the transforms receive an :class:`~resflex.data.images.ImageFile`
(header read, pixels not): they draw the box first, then ask for a decode just
large enough for it, so a JPEG several times larger than needed is decoded at
1/2, 1/4 or 1/8 scale (see :mod:`resflex.data.images`). With ``data.source.decoder=auto``
(the default) or ``torchvision`` the decode is a uint8 tensor and the same v2
functionals resample it in torch, several times faster than PIL on uint8 images.
With ``data.source.decoder=device`` the ``square`` framing is drawn by these transforms'
own methods (:meth:`TrainTransform.square_box`, :meth:`TrainTransform.draw_flip`,
:meth:`EvalTransform.cover_size`) in the worker and applied on the batch's device
(:mod:`resflex.data.device_decode`). In-memory images (synthetic, Fashion-MNIST) take
the plain path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from resflex.data.images import ImageFile, as_tensor
from resflex.errors import ConfigError
from resflex.types import Size
from resflex.validation import check_value

#: geometries the transforms implement (``auto`` is resolved before they are built)
FRAMINGS = ("square", "keep_aspect", "squash", "pad")
#: ImageNet mean as uint8: the padding colour when no dataset mean is known
DEFAULT_FILL = (124, 116, 104)


def _check_geometry(geometry: str) -> str:
    if geometry not in FRAMINGS:
        raise ConfigError(
            f"resolution.geometry must be one of {', '.join(FRAMINGS)} (or auto), got {geometry!r}",
            hint="resolution.geometry=auto",
        )
    return geometry


#: ``data.augment.auto`` values (null: none)
POLICIES = ("rand", "trivial", "augmix")
#: ``data.augment.magnitude`` per policy: (lowest, highest, default) of RandAugment's ``magnitude`` and
#: AugMix's ``severity``
MAGNITUDES = {"rand": (0, 30, 9), "augmix": (1, 10, 3)}


def build_policy(
    auto: str | None,
    magnitude: int | None = None,
    fill: Sequence[int] = DEFAULT_FILL,
    config_key: str = "data.augment",
) -> v2.Transform | None:
    """``data.augment.auto``: torchvision v2's ``RandAugment`` (``rand``), ``TrivialAugmentWide``
    (``trivial``) or ``AugMix`` (``augmix``), or None.

    ``magnitude`` (null: the policy's default): ``rand`` the strength of its 2 ops per image,
    0..30 (default 9, as timm's ``rand-m9``); ``augmix`` the severity 1..10 (default 3);
    ``trivial`` draws a strength per image and ignores it. Geometric ops fill with ``fill``
    (the dataset's mean colour when known) and resample bilinearly.
    """
    if magnitude is not None:  # checked with the policy off too: a typo waits for no switch
        check_value(f"{config_key}.magnitude", magnitude, int, lambda v: v >= 0, "an integer >= 0 or null")
    if auto is None:
        return None
    if auto not in POLICIES:
        raise ConfigError(
            f"{config_key}.auto must be one of {', '.join(POLICIES)} (or null), got {auto!r}",
            hint=f"{config_key}.auto=trivial",
        )
    bilinear = v2.InterpolationMode.BILINEAR
    fill_list = [int(v) for v in fill]
    if auto == "trivial":
        return v2.TrivialAugmentWide(interpolation=bilinear, fill=fill_list)
    low, high, default = MAGNITUDES[auto]
    value = default if magnitude is None else magnitude
    check_value(
        f"{config_key}.magnitude",
        value,
        int,
        lambda v: low <= v <= high,
        f"an integer in [{low}, {high}] for auto={auto}",
    )
    if auto == "rand":
        return v2.RandAugment(
            num_ops=2, magnitude=value, num_magnitude_bins=31, interpolation=bilinear, fill=fill_list
        )
    return v2.AugMix(severity=value, interpolation=bilinear, fill=fill_list)


def build_color_jitter(strength: float | None, config_key: str = "data.augment") -> v2.Transform | None:
    """``data.augment.color_jitter=s``: brightness, contrast and saturation each scaled by a factor
    in [1 - s, 1 + s] (timm's ``color_jitter`` float; hue untouched); null or 0: off."""
    if strength is None:
        return None
    s = check_value(
        f"{config_key}.color_jitter", strength, float, lambda v: 0 <= v <= 1, "a number in [0, 1] or null"
    )
    return v2.ColorJitter(brightness=s, contrast=s, saturation=s) if s > 0 else None


#: the yaml defaults, as examples in the errors of :func:`_check_range`
RANGE_EXAMPLES = {"scale": "[0.5,1.0]", "ratio": "[0.75,1.3333]", "whole_scale": "[0.8,1.0]"}


def _check_range(
    value: Sequence[float], key: str, upper: float | None, config_key: str = "data.augment"
) -> tuple[float, float]:
    bound = f"0 < low <= high <= {upper:g}" if upper is not None else "0 < low <= high"
    pair = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    if pair is None or len(pair) != 2 or not all(_typed_number(v) for v in pair):
        raise ConfigError(
            f"{config_key}.{key} must be two numbers [low, high] with {bound}, got {value!r}",
            hint=f"e.g. {config_key}.{key}={RANGE_EXAMPLES.get(key, '[0.5,1.0]')}",
        )
    lo, hi = (float(v) for v in pair)
    if not 0 < lo <= hi or (upper is not None and hi > upper):
        raise ConfigError(f"{config_key}.{key} must satisfy {bound}, got {pair}")
    return lo, hi


def _typed_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class TrainTransform:
    """Random framing of an image into (h, w) for training, plus horizontal flip; uint8 CHW out.

    Then, on the framed uint8 image, the ``auto`` policy and ``color_jitter`` when set
    (:func:`build_policy`, :func:`build_color_jitter`; off by default).

    ``square`` crop boxes are drawn by torchvision's
    ``v2.RandomResizedCrop.make_params``; the pixels go through ``v2.functional``
    directly rather than through a ``v2.Compose`` (same draws, same pixels, without the
    composed transform's per-call input flattening, a quarter of a small item's cost).
    For ``square`` the result is bit-identical to ``v2.RandomResizedCrop`` + flip.

    A disc stays round within ``ratio`` in every geometry but ``squash``, whose point is to
    ignore aspect.
    """

    def __init__(
        self,
        scale: Sequence[float] = (0.35, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        geometry: str = "square",
        whole_scale: Sequence[float] = (0.8, 1.0),
        fill: Sequence[int] = DEFAULT_FILL,
        auto: str | None = None,
        magnitude: int | None = None,
        color_jitter: float | None = None,
        config_key: str = "data.augment",
    ) -> None:
        # config_key: where the arguments were set, for the errors (a FixRes phase's overrides are
        # resolution.final_augment, not data.augment)
        self.scale = _check_range(scale, "scale", 1.0, config_key)
        self.ratio = _check_range(ratio, "ratio", None, config_key)
        self.whole_scale = _check_range(whole_scale, "whole_scale", 1.0, config_key)
        self.hflip = hflip
        self.geometry = _check_geometry(geometry)
        self.fill = tuple(int(v) for v in fill)
        self._crops: dict[tuple[float, tuple[float, float]], v2.RandomResizedCrop] = {}
        self.auto, self.magnitude = auto, magnitude
        self.policy = build_policy(auto, magnitude, self.fill, config_key)
        self.color_jitter = build_color_jitter(color_jitter, config_key)

    def _crop_params(self, width: int, height: int, aspect: float, scale: tuple[float, float]) -> dict:
        """RandomResizedCrop's box on a (height, width) image, with the aspect range times ``aspect``."""
        key = (round(aspect, 6), scale)
        crop = self._crops.get(key)
        if crop is None:  # the size argument only matters to the kernel, which we call ourselves
            ratio = (self.ratio[0] * aspect, self.ratio[1] * aspect)
            crop = self._crops[key] = v2.RandomResizedCrop((1, 1), scale=scale, ratio=ratio, antialias=True)
        return crop.make_params([torch.empty((0, height, width))])

    def __call__(self, image: Image.Image | ImageFile, size: Size) -> torch.Tensor:
        width, height = image.size
        if self.geometry == "pad":
            out = self._pad(image, size)
        else:
            if self.geometry in ("squash", "keep_aspect"):
                box = self._whole_box(width, height)
            else:  # square: w/h == 1, the classic draw
                box = self.square_box(width, height, size)
            out = resized_crop(image, box, size)
        if self.draw_flip():
            out = TF.horizontal_flip(out)
        pixels = as_tensor(out)
        if self.policy is not None:  # timm's order: the policy, then colour jitter
            pixels = self.policy(pixels)
        if self.color_jitter is not None:
            pixels = self.color_jitter(pixels)
        return pixels

    def square_box(self, width: int, height: int, size: Size) -> tuple[int, int, int, int]:
        """``square``'s crop box (top, left, height, width) on a ``width`` x ``height`` image for ``size``.

        Public so that ``data.source.decoder=device`` (:mod:`resflex.data.device_decode`) draws the
        very box this transform would, in the same order as :meth:`draw_flip`.
        """
        h, w = size
        params = self._crop_params(width, height, w / h, self.scale)
        return params["top"], params["left"], params["height"], params["width"]

    def draw_flip(self) -> bool:
        """Whether to mirror this image: v2.RandomHorizontalFlip's draw (flip when rand < p), drawn
        after the box; nothing is drawn when ``hflip`` is off."""
        return self.hflip and torch.rand(1).item() < 0.5

    def _whole_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """``squash``'s mild crop: each side keeps a fraction in sqrt(``whole_scale``), drawn separately.

        Not RandomResizedCrop's draw: it picks area and aspect, so one side can shrink to
        sqrt(area * ratio_low) (77 % at area 0.8, ratio 3/4) and cut an object at the edge;
        drawing the sides separately bounds the loss on either side at 1 - sqrt(low).
        """
        lo, hi = (math.sqrt(v) for v in self.whole_scale)
        fh, fw = (lo + (hi - lo) * v for v in torch.rand(2).tolist())
        crop_h, crop_w = max(1, round(height * fh)), max(1, round(width * fw))
        top = int(torch.randint(0, height - crop_h + 1, (1,)).item())
        left = int(torch.randint(0, width - crop_w + 1, (1,)).item())
        return top, left, crop_h, crop_w

    def _pad(self, image: Image.Image | ImageFile, size: Size) -> Image.Image | torch.Tensor:
        """Letterbox with jitter: the fitted image shrunk to ``whole_scale`` of its area, placed at random."""
        h, w = size
        width, height = image.size
        lo, hi = self.whole_scale
        area = lo + (hi - lo) * torch.rand(1).item()
        fit = min(h / height, w / width) * math.sqrt(area)
        content = (max(1, min(h, round(height * fit))), max(1, min(w, round(width * fit))))
        top = int(torch.randint(0, h - content[0] + 1, (1,)).item())
        left = int(torch.randint(0, w - content[1] + 1, (1,)).item())
        return letterbox(image, content, (top, left), size, self.fill)


class EvalTransform:
    """Deterministic framing into (h, w) for validation, test and prediction.

    ``square``: resize so the image covers (h/crop_pct, w/crop_pct) keeping its aspect,
    then centre-crop (h, w); ``crop_pct=1`` keeps as much of the image as a square allows.
    ``squash`` / ``keep_aspect``: the whole image resized to (h, w) (for keep_aspect that
    is the image's bucket shape, within half a bucket step of its own aspect).
    ``pad``: the whole image fitted inside (h, w), centred, the rest ``fill``.
    """

    def __init__(
        self, crop_pct: float = 1.0, geometry: str = "square", fill: Sequence[int] = DEFAULT_FILL
    ) -> None:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.crop_pct = crop_pct
        self.geometry = _check_geometry(geometry)
        self.fill = tuple(int(v) for v in fill)

    def __call__(self, image: Image.Image | ImageFile | torch.Tensor, size: Size) -> torch.Tensor:
        """``image``: a file, a PIL image, or a decoded uint8 (3, H, W) tensor (framed as the file it was
        decoded from at full scale: :func:`resflex.inference.load_classifier` of a NaFlex run)."""
        h, w = size
        if isinstance(image, torch.Tensor):
            height, width = int(image.shape[-2]), int(image.shape[-1])
        else:
            width, height = image.size
        if self.geometry in ("squash", "keep_aspect"):
            return as_tensor(resized_crop(image, (0, 0, height, width), size))
        if self.geometry == "pad":
            fit = min(h / height, w / width)
            content = (max(1, min(h, round(height * fit))), max(1, min(w, round(width * fit))))
            offset = ((h - content[0]) // 2, (w - content[1]) // 2)
            return as_tensor(letterbox(image, content, offset, size, self.fill))
        resized_hw = self.cover_size(width, height, size)
        if isinstance(image, ImageFile):  # a JPEG may decode reduced, never below the resize target
            image, _ = image.decode_pixels((resized_hw[1], resized_hw[0]))
        resized = TF.resize(image, resized_hw, antialias=True)
        return as_tensor(TF.center_crop(resized, [h, w]))

    def cover_size(self, width: int, height: int, size: Size) -> list[int]:
        """``square``: the [height, width] a ``width`` x ``height`` image is resized to before the centre
        crop to ``size``: it covers (h/crop_pct, w/crop_pct), keeping its aspect. Shared with
        ``data.source.decoder=device`` (:mod:`resflex.data.device_decode`)."""
        h, w = size
        scale = max(h / height, w / width) / self.crop_pct
        return [max(h, math.ceil(height * scale - 1e-6)), max(w, math.ceil(width * scale - 1e-6))]


def resized_crop(
    image: Image.Image | ImageFile | torch.Tensor, box: tuple[int, int, int, int], size: Size
) -> Image.Image | torch.Tensor:
    """The (top, left, height, width) ``box`` of ``image`` resized to ``size`` = (h, w), in one resample.

    A file is decoded just large enough for the box at the target size; when the decode
    came out reduced, PIL's ``resize(box=...)`` crops and resamples in one go on the
    reduced pixels.
    """
    top, left, crop_h, crop_w = box
    h, w = size
    if isinstance(image, ImageFile):
        width, height = image.size
        image, scale = image.decode_pixels((math.ceil(width * w / crop_w), math.ceil(height * h / crop_h)))
        if scale != 1.0:
            scaled = (left * scale, top * scale, (left + crop_w) * scale, (top + crop_h) * scale)
            if isinstance(image, torch.Tensor):  # data.decoder=auto: PIL decoded it reduced
                return resized_box(image, scaled, size)
            return image.resize((w, h), Image.Resampling.BILINEAR, box=scaled)
    return TF.resized_crop(image, top, left, crop_h, crop_w, [h, w], antialias=True)


def resized_box(image: torch.Tensor, box: tuple[float, float, float, float], size: Size) -> torch.Tensor:
    """The (left, top, right, bottom) ``box`` of ``image`` to (h, w): PIL's ``resize(box=...)`` for
    tensors, with the box's edges on the nearest pixels (under half a pixel of the decoded image)."""
    height, width = image.shape[-2:]
    left, right = min(width - 1, round(box[0])), min(width, round(box[2]))
    top, bottom = min(height - 1, round(box[1])), min(height, round(box[3]))
    crop_h, crop_w = max(1, bottom - top), max(1, right - left)
    return TF.resized_crop(image, top, left, crop_h, crop_w, list(size), antialias=True)


def letterbox(
    image: Image.Image | ImageFile | torch.Tensor,
    content: Size,
    offset: Size,
    size: Size,
    fill: Sequence[int],
) -> Image.Image | torch.Tensor:
    """``image`` resized to ``content`` (h, w) and pasted at ``offset`` (top, left) on an (h, w) canvas."""
    if isinstance(image, ImageFile):
        image, _ = image.decode_pixels((content[1], content[0]))
    resized = TF.resize(image, list(content), antialias=True)
    if isinstance(resized, torch.Tensor):  # data.decoder=torchvision
        canvas = torch.tensor(fill, dtype=torch.uint8).view(3, 1, 1).repeat(1, *size)
        canvas[:, offset[0] : offset[0] + content[0], offset[1] : offset[1] + content[1]] = resized
        return canvas
    padded = Image.new("RGB", (size[1], size[0]), tuple(fill))
    padded.paste(resized, (offset[1], offset[0]))
    return padded
