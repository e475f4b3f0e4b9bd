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
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from resflex.data.bad_images import BadImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


#: EXIF orientations that swap width and height (transpose, rotate 90/270, transverse)
SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


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
    :meth:`decode`, which can be called once). ``size`` is (width, height) as decoded, after
    EXIF orientation."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self._image = Image.open(path)
            width, height = self._image.size
            self._swapped = exif_orientation(self._image) in SWAPPING_ORIENTATIONS
        except _DECODE_ERRORS as exc:
            raise BadImageError(path, exc) from None
        self.size = (height, width) if self._swapped else (width, height)

    def decode(self, min_size: tuple[int, int] | None = None) -> tuple[Image.Image, float]:
        """The RGB, oriented image and its scale relative to :attr:`size` (1, 1/2, 1/4 or 1/8).

        With ``min_size`` (width, height), a JPEG may be decoded reduced, but never
        below ``min_size`` in either dimension; other formats always decode in full.
        """
        image, scale = self._image, 1.0
        try:
            width, height = self.size if min_size is None else min_size
            if image.format == "JPEG" and self.size[0] >= 2 * width and self.size[1] >= 2 * height:
                width, height = (height, width) if self._swapped else (width, height)
                drafted = image.draft(None, (max(1, width), max(1, height)))
                if drafted is not None:
                    scale = drafted[1][2] / (self.size[1] if self._swapped else self.size[0])
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image), scale
        except _DECODE_ERRORS as exc:
            raise BadImageError(self.path, exc) from None
        finally:
            self._image.close()


def open_image(path: str | Path) -> ImageFile:
    """The image-folder loader: header now, pixels when the transform asks (:class:`ImageFile`)."""
    return ImageFile(path)


def header_is_readable(path: str | Path) -> BadImageError | None:
    """Cheap check when a folder is scanned: the header parses (no pixel decoding)."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - parsing the header is the point
        return None
    except _DECODE_ERRORS as exc:
        return BadImageError(path, exc)
