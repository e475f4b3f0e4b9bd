"""Reading image files into RGB PIL images, whatever their mode.

EXIF orientation is applied; palette, grey, CMYK and RGBA images become RGB
(transparent pixels composited on black); 16-bit and 32-bit integer images are
scaled to 8 bits rather than clipped, which is what ``Image.convert`` would do.

Image folders hand the transforms an :class:`ImageFile` (header read, pixels
not yet): the transform knows the crop and the target size, so it can ask for a
reduced decode. A JPEG is then decoded at 1/2, 1/4 or 1/8 of its size straight
from its DCT coefficients (PIL's ``draft``; ``torchvision.io.decode_jpeg`` has no
reduced-size decode), which is what keeps small training sizes from large photos
cheap.

``data.source.decoder`` chooses who decodes a JPEG and who resamples (:meth:`ImageFile.decode_pixels`):

- ``pil``: PIL decodes (reduced when the request allows) and the transforms resample
  with PIL.
- ``torchvision``: ``torchvision.io.decode_jpeg`` (libjpeg-turbo, full size, EXIF
  orientation applied) into a uint8 (3, H, W) tensor whose memory is HWC, the layout
  torch's vectorised uint8 antialiased resize wants; the transforms resample with torch.
  Other formats, and JPEGs that are neither RGB nor grey (CMYK), are decoded by PIL and
  resampled by torch.
- ``simplejpeg`` (the optional extra ``resflex[jpeg]``, which ``make`` installs):
  `simplejpeg <https://gitlab.com/jfolz/simplejpeg>`_ decodes a JPEG, reduced by PIL's rule
  (1/2, 1/4, 1/8 when the request allows), straight into a numpy array that becomes the tensor
  without a copy. The pixels are PIL's at every scale (the same libjpeg-turbo with the same DCT
  and upsampling); the decode is 10-20 % faster than PIL's (whose decode loop adds overhead)
  and the PIL -> tensor copy is gone: ~0.2 ms less per image at 128 px from 500x375 photos,
  ``auto`` 1.57-1.61x timm's loader per core instead of ~1.3x (experiments/performance/README.md,
  "Loader"). EXIF orientation is applied to the tensor. Other files as ``torchvision``; a JPEG
  simplejpeg refuses (it makes some libjpeg warnings errors) is decoded by PIL.
- ``auto``: ``simplejpeg`` when it is installed; otherwise as
  ``torchvision``, except that a JPEG PIL can decode at 1/2 scale or less for the request is
  decoded so by PIL (then resampled by torch). :data:`AUTO_RULE` says why.
- ``device`` (``resolution.geometry=square`` only): the workers only read a JPEG's bytes
  (:meth:`ImageFile.read_jpeg`) and draw its framing; the batch is decoded by
  ``decode_jpeg(list, device=...)`` (nvJPEG on a GPU) and cropped, resized and flipped on the
  batch's device (:mod:`resflex.data.device_decode`), which takes the decode and the resampling
  off the CPU cores. Other files (and CMYK JPEGs) are framed in the worker as ``torchvision``
  does. Anything else that decodes such an :class:`ImageFile` in-process (prediction) gets
  ``torchvision``'s decode.

All three decoders run libjpeg-turbo the same way (identical pixels at full size; ``simplejpeg``
also at every reduced scale), and the
transforms draw their boxes from the header, so the framing is the same whatever the
decoder; only the resampling kernel differs (PIL vs torch bilinear with antialiasing,
< 0.2 level on average; ``tests/data/test_loader_decoders.py``). ``device`` on the CPU gives
``torchvision``'s pixels exactly (``tests/data/test_device_decode.py``).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from types import ModuleType
from typing import TypeGuard

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2.functional import pil_to_tensor

from resflex.data.bad_images import BadImageError
from resflex.errors import ConfigError
from resflex.types import Size

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


#: EXIF orientations that swap width and height (transpose, rotate 90/270, transverse)
SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
#: ``data.source.decoder`` values, and the default (``configs/data/imagefolder.yaml``, also for runs saved
#: before the key existed)
DECODERS = ("pil", "torchvision", "simplejpeg", "auto", "device")
DEFAULT_DECODER = "auto"
#: the decoder that leaves JPEG decoding to the batch's device (:mod:`resflex.data.device_decode`)
DEVICE_DECODER = "device"
#: Why ``auto`` is what it is, measured by ``scripts/benchmark.py --sections loader`` (photo-sized
#: JPEGs, one core; experiments/performance/README.md, "Loader"): simplejpeg gives PIL's pixels,
#: reduced as PIL would, faster than PIL or decode_jpeg; without it, decode_jpeg and PIL decode at
#: about the same speed, PIL's reduced (DCT-domain) decode is the only way to skip decoding work,
#: and torch resamples uint8 several times faster than PIL.
AUTO_RULE = (
    "JPEGs: simplejpeg (reduced as PIL would) when installed, else PIL where it decodes at <= 1/2 scale "
    "and decode_jpeg otherwise; resampling: torch"
)
#: the optional decoder behind ``data.source.decoder=simplejpeg`` (and ``auto`` when installed)
SIMPLEJPEG = "simplejpeg"
# torchvision 0.29 deprecates its image decoders for TorchCodec's (a warning per call); decode_jpeg is
# chosen on purpose (data.source.decoder), and the warning would repeat for every image
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
#: JPEG modes ``decode_jpeg(mode=RGB)`` converts as PIL does; others (CMYK) go through PIL
_TORCHVISION_MODES = ("RGB", "L")


def check_decoder(decoder: str) -> str:
    if decoder not in DECODERS:
        raise ConfigError(
            f"data.source.decoder must be one of {', '.join(DECODERS)}, got {decoder!r}",
            hint="data.source.decoder=auto",
        )
    if decoder == SIMPLEJPEG and simplejpeg_module() is None:
        raise ConfigError(
            "data.source.decoder=simplejpeg needs the simplejpeg package, which is not installed",
            hint="pip install 'resflex[jpeg]' (or simplejpeg), or data.source.decoder=auto",
        )
    return decoder


@functools.cache
def simplejpeg_module() -> ModuleType | None:
    """The optional ``simplejpeg`` module (``resflex[jpeg]``), or None when it is not installed."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def reduction(size: Size, min_size: Size) -> int:
    """PIL's ``draft`` rule for JPEGs: the largest of 1, 2, 4, 8 that divides ``size`` (width, height)
    into whole multiples of ``min_size`` in both sides, so a reduced decode never falls below it."""
    fits = min(size[0] // max(1, min_size[0]), size[1] // max(1, min_size[1]))
    return next(k for k in (8, 4, 2, 1) if fits >= k)


def orient(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """A (C, H, W) tensor turned by its EXIF ``orientation`` (1-8) as ``ImageOps.exif_transpose`` turns a
    PIL image, on the tensor's device (1 and unknown values leave it as it is): simplejpeg's decodes and
    ``data.source.decoder=device``'s batches. Written here because torchvision applies EXIF orientation
    only inside its own decoders, and simplejpeg not at all."""
    if orientation == 2:
        return pixels.flip(-1)
    if orientation == 3:
        return pixels.flip(-2, -1)
    if orientation == 4:
        return pixels.flip(-2)
    if orientation == 5:
        return pixels.transpose(-2, -1)
    if orientation == 6:
        return pixels.rot90(-1, (-2, -1))
    if orientation == 7:
        return pixels.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return pixels.rot90(1, (-2, -1))
    return pixels


def as_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """A framed image as the uint8 (3, h, w) tensor the loader collates (tensors pass through)."""
    return image if isinstance(image, torch.Tensor) else pil_to_tensor(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image).astype(np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        scaled = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode == "F":
        array = np.asarray(image)
        scaled = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block just means "no rotation"
        return 1


class ImageFile:
    """An image file whose header is read and whose pixels are not (the file stays open until
    :meth:`decode` or :meth:`decode_pixels`, one of which can be called once). ``size`` is
    (width, height) as decoded, after EXIF orientation. ``decoder``: see the module docstring."""

    def __init__(self, path: str | Path, decoder: str = "pil") -> None:
        self.path = str(path)
        self.decoder = decoder if decoder in DECODERS else check_decoder(decoder)
        try:
            self._image = Image.open(path)
            width, height = self._image.size
            self._orientation = exif_orientation(self._image)
            self._swapped = self._orientation in SWAPPING_ORIENTATIONS
        except _DECODE_ERRORS as exc:
            raise BadImageError(path, exc) from None
        self.size = (height, width) if self._swapped else (width, height)

    @property
    def orientation(self) -> int:
        """The EXIF orientation from the header (1: none), which :attr:`size` already accounts for."""
        return self._orientation

    def read_jpeg(self) -> torch.Tensor | None:
        """The file's bytes as a 1-D uint8 tensor when ``decode_jpeg`` can decode it (a JPEG in RGB or
        grey), read instead of decoded (``data.source.decoder=device``); None for anything else,
        whose pixels :meth:`decode_pixels` still gives (the file stays open then)."""
        if not self._is_rgb_or_grey_jpeg():
            return None
        self._image.close()
        try:
            with open(self.path, "rb") as f:
                return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
        except OSError as exc:
            raise BadImageError(self.path, exc) from None

    def _is_rgb_or_grey_jpeg(self) -> bool:
        """What ``decode_jpeg`` and simplejpeg convert to RGB as PIL does (CMYK is left to PIL)."""
        return self._image.format == "JPEG" and self._image.mode in _TORCHVISION_MODES

    def _reducible(self, min_size: tuple[int, int] | None) -> TypeGuard[tuple[int, int]]:
        """A JPEG at least twice ``min_size`` (width, height) in both sides: PIL can decode it reduced."""
        if min_size is None or self._image.format != "JPEG":
            return False
        return self.size[0] >= 2 * min_size[0] and self.size[1] >= 2 * min_size[1]

    def decode(self, min_size: tuple[int, int] | None = None) -> tuple[Image.Image, float]:
        """The RGB, oriented image and its scale relative to :attr:`size` (1, 1/2, 1/4 or 1/8).

        With ``min_size`` (width, height), a JPEG may be decoded reduced, but never
        below ``min_size`` in either dimension; other formats always decode in full.
        """
        image: Image.Image = self._image  # exif_transpose gives a plain Image, no longer the file's
        scale = 1.0
        try:
            if self._reducible(min_size):
                width, height = min_size
                width, height = (height, width) if self._swapped else (width, height)
                drafted = image.draft(None, (max(1, width), max(1, height)))
                if drafted is not None:
                    scale = drafted[1][2] / (self.size[1] if self._swapped else self.size[0])
            image.load()
            if self._orientation != 1:  # exif_transpose copies the pixels even when nothing turns
                image = ImageOps.exif_transpose(image)
            rgb = to_rgb(image)
        except _DECODE_ERRORS as exc:
            self._image.close()
            raise BadImageError(self.path, exc) from None
        if rgb is self._image and self._image.fp is not None:  # a format that keeps its file open
            rgb = rgb.copy()
        if rgb is not self._image:
            self._image.close()
        return rgb, scale

    def decode_pixels(self, min_size: Size | None = None) -> tuple[Image.Image | torch.Tensor, float]:
        """:meth:`decode` through the chosen decoder: ``pil``, a PIL image (as :meth:`decode`);
        ``torchvision``, ``simplejpeg``, ``auto`` and ``device`` (in-process, as ``torchvision``), a
        uint8 (3, H, W) tensor and its scale (see the module docstring), which tells the transforms to
        resample with torch."""
        if self.decoder == "pil":
            return self.decode(min_size)
        if self.decoder in (SIMPLEJPEG, "auto") and self._is_rgb_or_grey_jpeg():
            module = simplejpeg_module()
            if module is not None:
                decoded = self._decode_simplejpeg(module, min_size)
                if decoded is None:  # a file simplejpeg refuses: PIL decides (the same pixels)
                    image, scale = self.decode(min_size)
                    return pil_to_tensor(image), scale
                return decoded
        data = None if self.decoder == "auto" and self._reducible(min_size) else self.read_jpeg()
        if data is None:  # not for decode_jpeg, or auto's reduced decode
            image, scale = self.decode(min_size)
            return pil_to_tensor(image), scale
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=True), 1.0
        except RuntimeError as exc:
            raise BadImageError(self.path, decode_jpeg_reason(exc)) from None

    def _decode_simplejpeg(
        self, module: ModuleType, min_size: Size | None
    ) -> tuple[torch.Tensor, float] | None:
        """``simplejpeg``: the JPEG decoded at PIL's reduction for ``min_size`` (PIL's pixels), oriented;
        None when simplejpeg refuses the file (the caller falls back to PIL).

        Why a fallback rather than a bad image: simplejpeg turns some of libjpeg's warnings into
        errors (e.g. "extraneous bytes before marker", common in scraped datasets), which PIL
        decodes silently (``decode_jpeg`` too, printing the warning); PIL then decides, so a file
        is bad exactly when it was before.
        """
        raw_size = self._image.size  # as stored, before EXIF orientation
        k = 1
        if self._reducible(min_size):
            width, height = min_size
            k = reduction(raw_size, (height, width) if self._swapped else (width, height))
        try:
            with open(self.path, "rb") as f:
                data = f.read()
            pixels = module.decode_jpeg(
                data,
                colorspace="RGB",
                min_width=-(-raw_size[0] // k),
                min_height=-(-raw_size[1] // k),
                min_factor=k,
            )
        except (OSError, ValueError):
            return None  # the header PIL read is still open for its decode
        self._image.close()
        tensor = orient(torch.from_numpy(pixels).permute(2, 0, 1), self._orientation)
        return tensor, 1.0 / k  # as PIL's draft reports it (the decoded size is rounded up)


def decode_jpeg_reason(error: BaseException) -> str:
    """The reason in a ``decode_jpeg`` error (torchvision writes "decode_jpeg, <file>:<line>, <reason>")."""
    return str(error).split(", ", 2)[-1]


def open_image(path: str | Path, decoder: str = "pil") -> ImageFile:
    """The image-folder loader: header now, pixels when the transform asks (:class:`ImageFile`)."""
    return ImageFile(path, decoder)


def header_is_readable(path: str | Path) -> BadImageError | None:
    """Cheap check when a folder is scanned: the header parses (no pixel decoding)."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - parsing the header is the point
        return None
    except _DECODE_ERRORS as exc:
        return BadImageError(path, exc)
