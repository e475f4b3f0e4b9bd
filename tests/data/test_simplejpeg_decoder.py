"""data.source.decoder=simplejpeg (and ``auto`` when simplejpeg is installed): PIL's pixels exactly, at the
scale PIL's draft would pick, for every EXIF orientation; grey JPEGs as PIL converts them, CMYK left to
PIL; bad files through the bad-image policy; a missing package refused in one line (CPU only).

Why exact equality is the right bar: simplejpeg and Pillow run libjpeg-turbo with the same DCT and
upsampling settings, so a decode at the same scale is the same array, not merely a close one; the
transforms then see what ``pil`` would have decoded, and only the resampling kernel (torch) differs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resflex.data.images as images
from benchmarks.loader import photo_like
from resflex.data.bad_images import BadImageError
from resflex.data.images import ImageFile, check_decoder, orient, reduction
from resflex.data.transforms import FRAMINGS, EvalTransform, TrainTransform
from resflex.errors import ConfigError
from tests.data.test_loader_decoders import folder_with_a_truncated_jpeg
from tests.data.test_reduced_decode import _smooth_picture

pytest.importorskip("simplejpeg")

# requests (width, height, oriented) for a 333x251 picture: full size, 1/2, 1/4, 1/8 and between
REQUESTS = [None, (333, 251), (160, 120), (166, 125), (80, 60), (41, 31), (20, 10), (100, 30)]


def _jpeg(path: Path, size: tuple[int, int], orientation: int = 1, mode: str = "RGB", **save) -> Path:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    photo_like(*size, seed=orientation).convert(mode).save(path, quality=90, exif=exif.tobytes(), **save)
    return path


def _pil_pixels(path: Path, min_size) -> tuple[torch.Tensor, float]:  # type: ignore[no-untyped-def]
    image, scale = ImageFile(path, "pil").decode(min_size)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1), scale


@pytest.mark.parametrize("orientation", range(1, 9))
def test_simplejpeg_gives_pils_pixels_at_pils_scale_in_every_orientation(
    tmp_path: Path, orientation: int
) -> None:
    path = _jpeg(tmp_path / "photo.jpg", (333, 251) if orientation < 5 else (251, 333), orientation)
    for request in REQUESTS:
        for decoder in ("simplejpeg", "auto"):
            file = ImageFile(path, decoder)
            assert file.size == (333, 251)
            pixels, scale = file.decode_pixels(request)
            expected, expected_scale = _pil_pixels(path, request)
            assert scale == expected_scale, (request, decoder)
            assert pixels.dtype == torch.uint8 and pixels.shape == expected.shape, (request, decoder)
            assert torch.equal(pixels, expected), (request, decoder)
    assert _pil_pixels(path, (80, 60))[1] == 1 / 4  # the requests above do reach the reduced scales


@pytest.mark.parametrize("subsampling", [0, 1, 2])
def test_odd_and_tiny_jpegs_match_pil_at_every_reduction(tmp_path: Path, subsampling: int) -> None:
    for width, height in [(5, 3), (17, 9), (501, 377), (1000, 10)]:
        path = tmp_path / f"{width}x{height}.jpg"
        photo_like(width, height, seed=width).save(path, quality=90, subsampling=subsampling)
        for k in (1, 2, 4, 8):
            request = (max(1, width // (2 * k)), max(1, height // (2 * k)))
            pixels, scale = ImageFile(path, "simplejpeg").decode_pixels(request)
            expected, expected_scale = _pil_pixels(path, request)
            assert scale == expected_scale and torch.equal(pixels, expected), (width, height, k)


@pytest.mark.parametrize("progressive", [True, False])
def test_progressive_and_optimised_jpegs_match_pil(tmp_path: Path, progressive: bool) -> None:
    path = tmp_path / "encoded.jpg"
    photo_like(333, 251, seed=5).save(path, quality=90, progressive=progressive, optimize=True)
    for request in REQUESTS:
        pixels, scale = ImageFile(path, "simplejpeg").decode_pixels(request)
        expected, expected_scale = _pil_pixels(path, request)
        assert scale == expected_scale and torch.equal(pixels, expected), request


def test_reduction_is_pils_draft_rule() -> None:
    assert reduction((500, 375), (250, 188)) == 1  # floor division, as PIL: 375 // 188 = 1
    assert reduction((500, 375), (250, 187)) == 2
    assert reduction((500, 375), (62, 46)) == 8
    assert reduction((500, 375), (1, 1)) == 8
    assert reduction((500, 375), (130, 40)) == 2  # the tighter side decides


def test_orient_turns_a_tensor_as_exif_transpose_turns_an_image() -> None:
    from PIL import ImageOps

    picture = photo_like(7, 4, seed=0)
    tensor = torch.from_numpy(np.array(picture)).permute(2, 0, 1)
    for orientation in range(1, 9):
        exif = picture.getexif()
        exif[0x0112] = orientation
        tagged = picture.copy()
        tagged.info["exif"] = exif.tobytes()
        expected = np.array(ImageOps.exif_transpose(tagged))
        assert np.array_equal(orient(tensor, orientation).permute(1, 2, 0).numpy(), expected), orientation


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_is_converted_as_pil_does_and_cmyk_is_left_to_pil(tmp_path: Path, mode: str) -> None:
    path = _jpeg(tmp_path / f"{mode}.jpg", (160, 120), mode=mode)
    for request in (None, (40, 30)):
        pixels, scale = ImageFile(path, "simplejpeg").decode_pixels(request)
        expected, expected_scale = _pil_pixels(path, request)
        assert scale == expected_scale and torch.equal(pixels, expected), request


@pytest.mark.parametrize("geometry", FRAMINGS)
def test_framed_pictures_match_pil_within_the_resampling_kernel(tmp_path: Path, geometry: str) -> None:
    """A smooth picture: the crop's edges snap to the reduced grid (within half a decoded pixel, as
    ``auto`` without simplejpeg does), which on fine texture alone would move pixels by a few levels."""
    path = tmp_path / "smooth.jpg"
    _smooth_picture(500, 375).save(path, quality=90)
    for transform in (TrainTransform(geometry=geometry), EvalTransform(geometry=geometry)):
        for size in [(224, 224), (128, 128), (96, 160), (48, 48)]:
            torch.manual_seed(1)
            fast = transform(ImageFile(path, "simplejpeg"), size)
            torch.manual_seed(1)
            pil = images.as_tensor(transform(ImageFile(path, "pil"), size))
            assert fast.shape == pil.shape == (3, *size)
            assert (fast.float() - pil.float()).abs().mean() < 2, (geometry, size)


def test_auto_uses_simplejpeg_when_installed_and_decodes_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _jpeg(tmp_path / "photo.jpg", (500, 375))
    calls: list[dict] = []
    real = images.simplejpeg_module()

    class Spy:
        @staticmethod
        def decode_jpeg(data: bytes, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(kwargs)
            return real.decode_jpeg(data, **kwargs)

    monkeypatch.setattr(images, "simplejpeg_module", lambda: Spy)
    reduced, scale = ImageFile(path, "auto").decode_pixels((120, 90))
    assert scale == 1 / 4 and calls == [
        {"colorspace": "RGB", "min_width": 125, "min_height": 94, "min_factor": 4}
    ]
    monkeypatch.setattr(images, "simplejpeg_module", lambda: None)
    fallback, fallback_scale = ImageFile(path, "auto").decode_pixels((120, 90))
    assert len(calls) == 1 and fallback_scale == 1 / 4 and torch.equal(fallback, reduced)


def test_a_missing_simplejpeg_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_decoder("simplejpeg") == "simplejpeg"
    monkeypatch.setattr(images, "simplejpeg_module", lambda: None)
    with pytest.raises(ConfigError) as error:
        check_decoder("simplejpeg")
    message = str(error.value)
    assert "\n" not in message and "not installed" in message and "pip install 'resflex[jpeg]'" in message


def test_a_jpeg_only_simplejpeg_refuses_is_decoded_by_the_fallback(tmp_path: Path) -> None:
    """Junk bytes before a marker: libjpeg warns, PIL and decode_jpeg decode, simplejpeg raises. Such
    files (frequent in scraped datasets) must decode as they did before simplejpeg, not become bad."""
    from resflex.data.images import simplejpeg_module

    clean = tmp_path / "clean.jpg"
    photo_like(200, 150, seed=6).save(clean, quality=90)
    data = clean.read_bytes()
    start_of_scan = data.find(b"\xff\xda")
    path = tmp_path / "junk.jpg"
    path.write_bytes(data[:start_of_scan] + b"\x00\x01\x02" + data[start_of_scan:])
    with pytest.raises(ValueError, match="extraneous bytes"):
        simplejpeg_module().decode_jpeg(path.read_bytes())
    for decoder in ("simplejpeg", "auto"):
        for request in (None, (100, 75), (50, 37)):
            pixels, scale = ImageFile(path, decoder).decode_pixels(request)
            expected, expected_scale = _pil_pixels(path, request)
            assert scale == expected_scale and torch.equal(pixels, expected), (decoder, request)


def test_a_truncated_jpeg_is_a_bad_image(tmp_path: Path) -> None:
    bad = folder_with_a_truncated_jpeg(tmp_path / "images", per_class=2, size=(500, 375), keep_bytes=3000)
    for request in (None, (100, 80)):
        with pytest.raises(BadImageError, match="1.jpg"):
            ImageFile(bad, "simplejpeg").decode_pixels(request)


def test_an_auto_run_without_simplejpeg_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import resflex.data.datasets as datasets
    from resflex.data.datasets import ImageFolderSource

    (tmp_path / "train" / "a").mkdir(parents=True)
    for i in range(2):
        photo_like(64, 48, seed=i).save(tmp_path / "train" / "a" / f"{i}.jpg")
    hint = "pip install 'resflex[jpeg]'"
    with caplog.at_level("INFO", logger="resflex"):
        ImageFolderSource(str(tmp_path), val_fraction=0.5)
    assert hint not in caplog.text  # installed here: nothing to say
    monkeypatch.setattr(datasets, "simplejpeg_module", lambda: None)
    with caplog.at_level("INFO", logger="resflex"):
        ImageFolderSource(str(tmp_path), val_fraction=0.5, decoder="pil")
        assert hint not in caplog.text  # the user chose a decoder
        ImageFolderSource(str(tmp_path), val_fraction=0.5)
    assert hint in caplog.text
