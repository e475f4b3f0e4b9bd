"""Image folders decode JPEGs at reduced scale when the crop allows it (PIL draft).

Reference: the same crop drawn (same seed) on the fully decoded image
(``load_rgb``), the in-memory path. Reduced decoding must give the same picture
(small per-pixel differences from the DCT-domain downscale), and must never
trigger where it cannot help (small files, PNG): there the result is identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resflex.data.bad_images import BadImageError
from resflex.data.images import ImageFile
from resflex.data.transforms import EvalTransform, TrainTransform
from tests.conftest import load_rgb


def _smooth_picture(width: int, height: int) -> Image.Image:
    """Large, smooth structures (what survives a downscale) with a clear orientation."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 255 * x / width
    green = 255 * y / height
    blue = 127 + 120 * np.sin(x / width * 6) * np.cos(y / height * 4)
    return Image.fromarray(np.stack([red, green, blue], -1).astype(np.uint8))


def _save(path: Path, image: Image.Image, orientation: int = 1) -> Path:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif.tobytes())
    return path


SCALES: list[float] = []


class SpyFile(ImageFile):
    """Records the decode scale, so a test knows the reduced path really ran."""

    def decode(self, min_size=None):  # type: ignore[no-untyped-def]
        image, scale = super().decode(min_size)
        SCALES.append(scale)
        return image, scale


def _both(transform, path: Path, size: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    reduced = transform(SpyFile(path), size)
    torch.manual_seed(seed)
    full = transform(load_rgb(path), size)
    return reduced, full


def test_draft_never_goes_below_the_requested_size(tmp_path: Path) -> None:
    """PIL picks the largest of 1/8, 1/4, 1/2 that keeps both sides >= the request."""
    path = _save(tmp_path / "big.jpg", _smooth_picture(640, 480))
    for request, expected in [((64, 64), 1 / 4), ((100, 50), 1 / 4), ((200, 100), 1 / 2), ((400, 300), 1.0)]:
        image, scale = ImageFile(path).decode(request)
        assert scale == expected, request
        assert image.size[0] >= request[0] and image.size[1] >= request[1]


@pytest.mark.parametrize("orientation", [1, 6, 3])
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_train_crop_of_a_reduced_decode_matches_the_full_decode(
    tmp_path: Path, orientation: int, size: tuple[int, int]
) -> None:
    path = _save(tmp_path / "big.jpg", _smooth_picture(800, 600), orientation)
    transform = TrainTransform(scale=(0.35, 1.0))
    assert ImageFile(path).size == load_rgb(path).size  # EXIF orientation applied to the header size
    SCALES.clear()
    for seed in range(6):
        reduced, full = _both(transform, path, size, seed)
        assert reduced.shape == full.shape == (3, *size) and reduced.dtype == torch.uint8
        diff = (reduced.float() - full.float()).abs()
        assert diff.mean() < 3 and diff.max() < 40, (seed, diff.mean().item(), diff.max().item())
    assert min(SCALES) <= 0.25  # 600 px decoded at most 150 px for a >= 35 % crop to 64-80 px


def test_eval_resize_of_a_reduced_decode_matches_the_full_decode(tmp_path: Path) -> None:
    path = _save(tmp_path / "big.jpg", _smooth_picture(900, 500), orientation=8)
    SCALES.clear()
    for crop_pct in (1.0, 0.875):
        reduced, full = _both(EvalTransform(crop_pct=crop_pct), path, (56, 56), 0)
        diff = (reduced.float() - full.float()).abs()
        assert diff.mean() < 3 and diff.max() < 40
    assert SCALES == [0.125, 0.25]  # the 500 px short side needs 56 px, then 56 / 0.875 = 64 px


@pytest.mark.parametrize("name", ["small.jpg", "big.png"])
def test_no_reduction_possible_gives_exactly_the_in_memory_result(tmp_path: Path, name: str) -> None:
    side = 90 if name.endswith(".jpg") else 600
    path = tmp_path / name
    _smooth_picture(side, side * 3 // 4).save(path)
    _, scale = ImageFile(path).decode((16, 16))
    assert scale == (1.0 if name.endswith(".png") else 1 / 4)  # PNG never reduces
    for seed in range(4):
        # a 64 px crop of a 90 px JPEG needs the full decode: identical to the in-memory path
        reduced, full = _both(TrainTransform(), path, (64, 64), seed)
        assert torch.equal(reduced, full)


def test_a_truncated_jpeg_fails_at_decode_with_the_file_named(tmp_path: Path) -> None:
    path = _save(tmp_path / "big.jpg", _smooth_picture(640, 480))
    path.write_bytes(path.read_bytes()[:2000])
    file = ImageFile(path)  # the header is fine
    with pytest.raises(BadImageError, match="big.jpg"):
        TrainTransform()(file, (64, 64))
