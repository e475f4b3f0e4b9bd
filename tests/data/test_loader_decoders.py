"""data.source.decoder=pil|torchvision|simplejpeg|auto: the same picture and framing whatever decodes, bad
files still go through the bad-image policy, and the value is checked in one line (CPU only).

With the same seed the transforms draw the same boxes from the header, and both decoders run
libjpeg-turbo the same way (identical pixels), so ``torchvision`` differs from a full PIL decode
only by the resampling kernel (torch vs PIL bilinear with antialiasing). Measured here on a
photo-like 500x375 JPEG, every geometry, train and eval, 64-224 px: mean absolute difference
<= 0.01 level against the in-memory (full decode) PIL path; the bound asserted is 2 levels.
Against ``pil`` as it runs, differences also come from PIL's reduced decode where the size
allows it (which ``torchvision`` never does), hence the comparison with the full decode.
``auto`` decodes reduced as ``pil`` does, with its crop's edges on the decoded grid (within
half a decoded pixel): <= 1.2 levels from ``pil`` on a smooth picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.loader import photo_like
from resflex.build import build_datamodule
from resflex.data.bad_images import BadImageError, BadImagePolicy
from resflex.data.datamodule import SizedDataset
from resflex.data.datasets import ImageFolderSource
from resflex.data.images import DECODERS, ImageFile, check_decoder, simplejpeg_module
from resflex.data.transforms import FRAMINGS, EvalTransform, TrainTransform
from resflex.errors import ConfigError, DataError
from tests.conftest import load_rgb
from tests.data.test_reduced_decode import _smooth_picture

SIZES = [(224, 224), (128, 128), (96, 160), (64, 64)]
#: the decoders this environment has (simplejpeg is an optional extra)
AVAILABLE = [d for d in DECODERS if d != "simplejpeg" or simplejpeg_module() is not None]


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    photo_like(500, 375, seed=3).save(path, quality=90)
    return path


def _framed(transform, path: Path, decoder: str, size: tuple[int, int], seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return transform(ImageFile(path, decoder), size)


def _mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


def _transform(split: str, geometry: str) -> TrainTransform | EvalTransform:
    return TrainTransform(geometry=geometry) if split == "train" else EvalTransform(geometry=geometry)


@pytest.mark.parametrize("geometry", FRAMINGS)
@pytest.mark.parametrize("split", ["train", "eval"])
def test_decode_jpeg_gives_the_full_pil_decode_picture_and_every_decoder_the_shape(
    photo: Path, geometry: str, split: str
) -> None:
    transform = _transform(split, geometry)
    for size in SIZES:
        for seed in range(3):
            out = {d: _framed(transform, photo, d, size, seed) for d in AVAILABLE}
            for decoder, pixels in out.items():
                assert pixels.shape == (3, *size) and pixels.dtype == torch.uint8, (decoder, size)
            torch.manual_seed(seed)
            full = transform(load_rgb(photo), size)  # PIL: whole file decoded, PIL resampling
            diff = _mean_abs(out["torchvision"], full)
            assert diff < 2, (geometry, split, size, seed, diff)


@pytest.mark.parametrize("geometry", FRAMINGS)
@pytest.mark.parametrize("split", ["train", "eval"])
def test_auto_frames_as_pil_does(tmp_path: Path, geometry: str, split: str) -> None:
    path = tmp_path / "smooth.jpg"
    _smooth_picture(500, 375).save(path, quality=90)
    transform = _transform(split, geometry)
    for size in SIZES:
        for seed in range(3):
            auto = _framed(transform, path, "auto", size, seed)
            pil = _framed(transform, path, "pil", size, seed)
            assert auto.shape == pil.shape and _mean_abs(auto, pil) < 2, (size, seed)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_by_decode_jpeg(tmp_path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "turned.jpg"
    photo_like(320, 200, seed=1).save(path, quality=92, exif=exif.tobytes())
    file = ImageFile(path, "torchvision")
    pixels, scale = file.decode_pixels()
    reference, _ = ImageFile(path, "pil").decode()
    assert scale == 1.0 and tuple(pixels.shape[1:]) == (reference.height, reference.width)
    assert (reference.width, reference.height) == file.size
    assert _mean_abs(pixels, torch.from_numpy(np.array(reference)).permute(2, 0, 1)) == 0.0


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_jpegs_decode_as_pil_does(tmp_path: Path, mode: str) -> None:
    """Grey: decode_jpeg converts to RGB as PIL does; CMYK: not decode_jpeg's job, PIL decodes it."""
    path = tmp_path / f"{mode}.jpg"
    photo_like(160, 120, seed=2).convert(mode).save(path, quality=90)
    reference, _ = ImageFile(path, "pil").decode()
    for decoder in ("torchvision", "auto"):
        pixels, _ = ImageFile(path, decoder).decode_pixels()
        assert isinstance(pixels, torch.Tensor) and pixels.shape == (3, 120, 160)
        assert _mean_abs(pixels, torch.from_numpy(np.array(reference)).permute(2, 0, 1)) == 0.0


def test_other_formats_are_decoded_by_pil(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    photo_like(200, 150, seed=4).save(path)
    torch.manual_seed(0)
    tv = TrainTransform()(ImageFile(path, "torchvision"), (64, 64))
    torch.manual_seed(0)
    pil = TrainTransform()(ImageFile(path, "pil"), (64, 64))
    assert tv.shape == pil.shape == (3, 64, 64) and _mean_abs(tv, pil) < 2


def folder_with_a_truncated_jpeg(root: Path, per_class: int, size: tuple[int, int], keep_bytes: int) -> Path:
    """``root/train/c0, c1`` of photo-like JPEGs (``size``: width, height), and ``c0/1.jpg`` cut to its first
    ``keep_bytes``: its header reads, its pixels do not. Returns that file."""
    for k in range(2):
        (root / "train" / f"c{k}").mkdir(parents=True)
        for i in range(per_class):
            photo_like(*size, seed=10 * k + i).save(root / "train" / f"c{k}" / f"{i}.jpg", quality=90)
    bad = root / "train" / "c0" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:keep_bytes])
    return bad


@pytest.mark.parametrize("decoder", ["torchvision", "auto"])
def test_a_truncated_jpeg_goes_through_the_bad_image_policy(tmp_path: Path, decoder: str) -> None:
    """decode_jpeg's RuntimeError becomes the BadImageError that names the file; skip replaces it in
    its batch and lists it, raise stops."""
    root = tmp_path / "images"
    bad = folder_with_a_truncated_jpeg(root, per_class=3, size=(500, 375), keep_bytes=3000)
    with pytest.raises(BadImageError, match="1.jpg"):
        TrainTransform()(ImageFile(bad, decoder), (224, 224))  # a full decode: decode_jpeg's
    log_file = tmp_path / "bad.txt"
    source = ImageFolderSource(str(root), val_fraction=0.3, decoder=decoder, bad_image_log=str(log_file))
    train = source.splits["train"].dataset
    index = next(i for i, (path, _) in enumerate(train.samples) if path == str(bad))
    dataset = SizedDataset(train, EvalTransform(), bad_images=source.bad_images)
    image, _ = dataset[(index, 224, 224)]
    assert image.shape == (3, 224, 224)
    assert log_file.read_text().split() == [str(bad)]
    strict = SizedDataset(train, EvalTransform(), bad_images=BadImagePolicy("raise"))
    with pytest.raises(DataError, match="1.jpg"):
        strict[(index, 224, 224)]


def test_the_decoder_value_is_checked_in_one_line(tmp_path: Path) -> None:
    assert [check_decoder(d) for d in AVAILABLE] == AVAILABLE
    with pytest.raises(ConfigError) as error:
        check_decoder("nvjpeg")
    message = str(error.value)
    expected = "data.source.decoder must be one of pil, torchvision, simplejpeg, auto, device, got 'nvjpeg'"
    assert message.startswith(expected)
    assert "\n" not in message and "hint: data.source.decoder=auto" in message
    (tmp_path / "train" / "a").mkdir(parents=True)
    for i in range(2):
        photo_like(64, 48, seed=i).save(tmp_path / "train" / "a" / f"{i}.jpg")
    with pytest.raises(ConfigError, match="data.source.decoder"):
        ImageFolderSource(str(tmp_path), decoder="PIL")
    source = ImageFolderSource(str(tmp_path), val_fraction=0.5, decoder="torchvision")
    image, _ = source.splits["train"].dataset[0]
    assert isinstance(image, ImageFile) and image.decoder == "torchvision"


def test_the_config_passes_data_decoder_to_the_source(tmp_path: Path) -> None:

    from tests.test_configs import compose_train

    (tmp_path / "images" / "train" / "a").mkdir(parents=True)
    for i in range(2):
        photo_like(64, 48, seed=i).save(tmp_path / "images" / "train" / "a" / f"{i}.jpg")
    root = f"data.root={tmp_path / 'images'}"
    cfg = compose_train(["data=imagefolder", root], tmp_path)
    assert cfg.data.source.decoder == "auto" and build_datamodule(cfg).source.decoder == "auto"
    cfg = compose_train(["data=imagefolder", root, "data.source.decoder=pil"], tmp_path)
    assert build_datamodule(cfg).source.decoder == "pil"
    cfg = compose_train(["data=imagefolder", root, "data.source.decoder=fast"], tmp_path)
    with pytest.raises(ConfigError, match="^data.source.decoder must be one of"):
        build_datamodule(cfg)
