"""Reading image files into RGB PIL images, whatever their mode.

EXIF orientation is applied; palette, grey, CMYK and RGBA images become RGB
(transparent pixels composited on black); 16-bit and 32-bit integer images are
scaled to 8 bits rather than clipped, which is what ``Image.convert`` would do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from resflex.data.bad_images import BadImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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


def load_rgb(path: str | Path) -> Image.Image:
    """Decode one file to an RGB image (fully loaded, file closed).

    Any decoding failure (empty, truncated or non-image file) is raised as
    :class:`~resflex.data.bad_images.BadImageError`, which names the file.
    """
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImageError(path, exc) from None


def header_is_readable(path: str | Path) -> BadImageError | None:
    """Cheap check when a folder is scanned: the header parses (no pixel decoding)."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - parsing the header is the point
        return None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return BadImageError(path, exc)
