"""data.source.decoder=device: workers read bytes and draw framings, the batch's device decodes and frames.

On the CPU (``device=cpu``) the device path gives ``decoder=torchvision``'s pixels exactly: the
same framing draws in the same order under the same (seed, epoch, index) generator, the same
libjpeg-turbo decode (``decode_jpeg``), the same torch kernels on the same pixels; EXIF
orientation is applied by :func:`orient` instead of inside ``decode_jpeg``, which moves pixels
without changing them. Measured here: mean absolute difference 0.0 levels (max 0) on every
batch, train and eval framing, square and non-square targets, odd-sized and EXIF-turned JPEGs,
grey and CMYK JPEGs and PNGs in the same batches; the tests assert exactly 0. nvJPEG on CUDA
decodes (IDCT, chroma upsampling) and resizes (float kernel, rounded) differently, so the GPU
test bounds the difference to the CPU path at 1.5 levels; it skips without a GPU.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from benchmarks.loader import photo_like
from resflex.build import build_datamodule
from resflex.data.bad_images import BadImageError, BadImagePolicy
from resflex.data.datamodule import ResflexDataModule, SizedDataset
from resflex.data.datasets import ImageFolderSource
from resflex.data.device_decode import DeviceFraming, EncodedBatch, EncodedImage, collate_encoded
from resflex.data.images import DEVICE_DECODER, ImageFile, orient
from resflex.data.resolution import FixedResolution, FixResResolution
from resflex.data.transforms import EvalTransform, TrainTransform
from resflex.errors import ConfigError, DataError
from tests.conftest import TINY, make_image_folder, train_run
from tests.data.test_loader_decoders import folder_with_a_truncated_jpeg
from tests.test_configs import compose_train

#: (name, width, height, mode, format, EXIF orientation): odd, non-square and turned files
FILES = [
    ("wide", 333, 211, "RGB", "JPEG", 1),
    ("tall", 97, 301, "RGB", "JPEG", 1),
    ("photo", 500, 375, "RGB", "JPEG", 1),
    ("grey", 150, 113, "L", "JPEG", 1),
    ("cmyk", 161, 120, "CMYK", "JPEG", 1),
    ("png", 203, 145, "RGB", "PNG", 1),
    ("turned3", 240, 151, "RGB", "JPEG", 3),
    ("turned6", 240, 151, "RGB", "JPEG", 6),
    ("turned8", 131, 220, "RGB", "JPEG", 8),
    ("turned5", 180, 99, "RGB", "JPEG", 5),
]


def _write(path: Path, width: int, height: int, mode: str, fmt: str, orientation: int, seed: int) -> None:
    image = photo_like(width, height, seed=seed).convert(mode)
    options: dict = {"quality": 90} if fmt == "JPEG" else {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    image.save(path, fmt, **options)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes, each with every kind of file in :data:`FILES`."""
    root = tmp_path_factory.mktemp("mixed")
    for c in range(2):
        (root / "train" / f"c{c}").mkdir(parents=True)
        for k, (name, width, height, mode, fmt, orientation) in enumerate(FILES):
            ext = "png" if fmt == "PNG" else "jpg"
            path = root / "train" / f"c{c}" / f"{name}.{ext}"
            _write(path, width, height, mode, fmt, orientation, seed=10 * c + k)
    return root


def _datamodule(root: Path, decoder: str, size, crop_pct: float = 1.0, **kwargs) -> ResflexDataModule:
    return ResflexDataModule(
        source=ImageFolderSource(str(root), val_fraction=0.4, decoder=decoder),
        schedule=FixedResolution(size, geometry="square"),
        batch_size=5,
        num_workers=kwargs.pop("num_workers", 0),
        augment={"scale": [0.2, 1.0], "hflip": True},
        eval_crop_pct=crop_pct,
        seed=7,
        **kwargs,
    )


def _mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


@pytest.mark.parametrize("size, crop_pct", [(48, 1.0), ([40, 72], 0.875)])
def test_the_device_path_on_cpu_gives_the_torchvision_decoders_pictures(
    mixed_folder: Path, size, crop_pct: float
) -> None:
    """Train (three epochs: new boxes and flips each) and eval loaders, batch by batch."""
    cpu, device = (_datamodule(mixed_folder, d, size, crop_pct) for d in ("torchvision", "device"))
    kinds = set()
    for epoch in range(3):
        loaders = []
        for dm in (cpu, device):
            loader = dm.train_dataloader()
            loader.batch_sampler.set_epoch(epoch)
            loaders.append(loader)
        if epoch == 0:
            loaders += [dm.val_dataloader() for dm in (cpu, device)]
        pairs = list(zip(loaders[::2], loaders[1::2], strict=True))
        for reference_loader, device_loader in pairs:
            for (reference, labels), (encoded, encoded_labels) in zip(
                reference_loader, device_loader, strict=True
            ):
                assert isinstance(encoded, EncodedBatch)
                kinds |= {"framed" if f is None else "bytes" for f in encoded.framings}
                images, decoded_labels = encoded.to("cpu").decode(encoded_labels)
                assert images.dtype == torch.uint8 and images.shape == reference.shape
                assert torch.equal(decoded_labels, labels)
                assert _mean_abs(images, reference) == 0.0, (epoch, size)
    assert kinds == {"bytes", "framed"}  # batches mixed decode_jpeg files and worker-framed ones


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_turns_as_exif_transpose(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    photo_like(37, 23, seed=orientation).save(buffer, "PNG", exif=exif.tobytes())
    with Image.open(buffer) as image:
        image.load()
        raw = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        turned = torch.from_numpy(np.array(ImageOps.exif_transpose(image))).permute(2, 0, 1)
    assert torch.equal(orient(raw, orientation), turned)


def test_the_framing_is_drawn_as_the_cpu_transform_draws_it(mixed_folder: Path) -> None:
    """Same (seed, epoch, index): the box and flip in the EncodedImage are the CPU transform's."""
    source = ImageFolderSource(str(mixed_folder), val_fraction=0.4, decoder="device")
    transform = TrainTransform(scale=(0.2, 1.0), hflip=True)
    dataset = SizedDataset(source.splits["train"], DeviceFraming(transform), seed=3)
    flips = set()
    for index in range(len(dataset)):
        encoded, _ = dataset[(index, 64, 64, None, 5)]
        if encoded.framing is None:  # framed in the worker: PNG, CMYK
            continue
        width, height = source.splits["train"][index][0].size
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(hash((3, 5, index)) & 0x7FFF_FFFF)
            assert encoded.framing.box == transform.square_box(width, height, (64, 64))
            assert encoded.framing.flip == transform.draw_flip()
        flips.add(encoded.framing.flip)
    assert flips == {True, False}


def test_a_corrupt_jpeg_goes_through_the_bad_image_policy_on_the_device(tmp_path: Path) -> None:
    """Its header reads (so the worker passes it on); the device decode fails: ``skip`` lists it and puts
    the next image of the batch, with its label, in its place; ``raise`` stops naming it."""
    root = tmp_path / "images"
    bad = folder_with_a_truncated_jpeg(root, per_class=2, size=(120, 90), keep_bytes=2000)
    log_file = tmp_path / "bad.txt"
    source = ImageFolderSource(str(root), val_fraction=0.5, decoder="device", bad_image_log=str(log_file))
    folder = source.splits["train"].dataset
    dataset = SizedDataset(folder, DeviceFraming(TrainTransform()), bad_images=source.bad_images)
    samples = [dataset[(i, 32, 32)] for i in range(len(folder))]
    position = next(i for i, (path, _) in enumerate(folder.samples) if path == str(bad))
    batch, labels = collate_encoded(samples, source.bad_images)
    images, kept = batch.decode(labels)
    assert images.shape == (4, 3, 32, 32)
    replacement = (position + 1) % 4
    assert torch.equal(images[position], images[replacement]) and kept[position] == labels[replacement]
    assert log_file.read_text().split() == [str(bad)]
    strict, labels = collate_encoded(samples, BadImagePolicy("raise"))
    with pytest.raises(BadImageError, match="1.jpg"):
        strict.decode(labels)


def _encoded(paths: list[Path], size: int = 32) -> list[tuple[EncodedImage, int]]:
    """(EncodedImage, label) samples as a worker leaves them: eval framing, label = position."""
    framing = DeviceFraming(EvalTransform())
    return [(framing(ImageFile(path, DEVICE_DECODER), (size, size)), k) for k, path in enumerate(paths)]


def test_a_batch_of_only_worker_framed_images_decodes(mixed_folder: Path) -> None:
    """PNGs and CMYK JPEGs only: no bytes for ``decode_jpeg`` (which refuses an empty list), the batch is
    the worker-framed pixels as they are; ``len`` counts samples, mixed or not (the loader benchmark's
    images/s)."""
    paths = [mixed_folder / "train" / f"c{c}" / name for c in range(2) for name in ("png.png", "cmyk.jpg")]
    samples = _encoded(paths)
    assert all(encoded.framing is None for encoded, _ in samples)
    batch, labels = collate_encoded(samples, BadImagePolicy("raise"))
    assert len(batch) == 4
    images, kept = batch.to("cpu").decode(labels)
    assert torch.equal(images, torch.stack([encoded.data for encoded, _ in samples]))
    assert kept.tolist() == [0, 1, 2, 3]
    mixed, _ = collate_encoded(_encoded([*paths[:2], mixed_folder / "train" / "c0" / "wide.jpg"]))
    assert len(mixed) == 3 and len(mixed.lengths) == 1


@pytest.fixture
def corrupt_folder(tmp_path: Path) -> tuple[list[Path], Path]:
    """Four JPEGs of two classes, ``c0/1.jpg`` cut short (its header reads), and one PNG: (the PNG and
    the good JPEGs, the cut one)."""
    root = tmp_path / "images"
    bad = folder_with_a_truncated_jpeg(root, per_class=2, size=(120, 90), keep_bytes=2000)
    png = root / "train" / "c1" / "2.png"
    photo_like(90, 120, seed=5).save(png)
    good = sorted(p for p in (root / "train").rglob("*.*") if p != bad and p != png)
    return [png, *good], bad


def test_the_bad_image_policy_survives_the_transfer_and_pinning(
    corrupt_folder: tuple[list[Path], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning pins (``pin_memory``) and moves (``to``) the batch before ``decode``: both keep the
    source's ``skip`` policy (the corrupt file is replaced and listed, not raised) and ``to`` records the
    device the JPEGs are decoded on."""
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self.clone())  # no CUDA here
    (png, *good), bad = corrupt_folder
    log_file = tmp_path / "bad.txt"
    batch, labels = collate_encoded(_encoded([png, bad, *good]), BadImagePolicy("skip", log_file))
    moved = batch.pin_memory().to("cpu")
    images, kept = moved.decode(labels)
    assert images.shape == (5, 3, 32, 32) and torch.equal(images[1], images[2])  # the next good one
    assert kept.tolist()[:3] == [0, 2, 2]
    assert log_file.read_text().split() == [str(bad)]
    assert batch.to("meta").device == torch.device("meta") and batch.to("meta").pixels.device.type == "meta"


def test_a_failed_last_image_takes_the_batchs_first_good_one(
    corrupt_folder: tuple[list[Path], Path], tmp_path: Path
) -> None:
    """The replacement wraps around: the last image's place goes to the first good image, label too."""
    (png, *good), bad = corrupt_folder
    batch, labels = collate_encoded(_encoded([*good, png, bad]), BadImagePolicy("skip"))
    images, kept = batch.decode(labels)
    assert torch.equal(images[-1], images[0]) and kept.tolist() == [0, 1, 2, 3, 0]


def test_a_corrupt_jpeg_after_a_worker_framed_image_is_named(corrupt_folder: tuple[list[Path], Path]) -> None:
    """The file named is the corrupt one even when framed images precede it in the batch (paths follow
    the JPEGs, not the samples); without a policy (``bad_images=None``) it raises."""
    (png, *good), bad = corrupt_folder
    samples = _encoded([png, good[0], bad, good[1]])
    for policy in (BadImagePolicy("raise"), None):
        batch, labels = collate_encoded(samples, policy)
        with pytest.raises(BadImageError) as error:
            batch.decode(labels)
        assert error.value.path == str(bad)


def test_a_batch_with_no_decodable_image_is_one_line(corrupt_folder: tuple[list[Path], Path]) -> None:
    """Every JPEG of the batch corrupt under ``skip``: nothing to put in their places, a DataError."""
    _, bad = corrupt_folder
    batch, labels = collate_encoded(_encoded([bad, bad]), BadImagePolicy("skip"))
    with pytest.raises(DataError, match="no image of a batch of 2 could be decoded"):
        batch.decode(labels)


def test_a_short_fit_with_the_device_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder of JPEGs and PNGs (RGB, L, RGBA, P), trained and validated through the Lightning hooks."""
    decoded = []
    decode = EncodedBatch.decode
    monkeypatch.setattr(
        EncodedBatch, "decode", lambda self, labels: decoded.append(self.device) or decode(self, labels)
    )
    data = make_image_folder(tmp_path / "images", splits=("train", "val"))
    overrides = ["data=imagefolder", f"data.root={data}", *TINY, "logger=none"]
    overrides += ["data.source.decoder=device", "resolution.geometry=square"]
    record = train_run(overrides, tmp_path / "run")
    assert record["status"] == "completed"
    assert np.isfinite(record["metrics"]["val/loss"])
    assert len(decoded) >= 3 + 2 and set(decoded) == {torch.device("cpu")}  # train and val batches


def test_batches_cross_worker_processes(mixed_folder: Path) -> None:
    """The collate function and the encoded batches pickle: a loader with a worker gives the same
    batches; a batch is two tensors whatever its size (each tensor out of a worker holds a file
    descriptor until received)."""
    inline, worker = (_datamodule(mixed_folder, "device", 32, num_workers=n) for n in (0, 1))
    for (a, la), (b, lb) in zip(inline.val_dataloader(), worker.val_dataloader(), strict=True):
        assert torch.equal(a.decode(la)[0], b.decode(lb)[0])
        assert sum(isinstance(v, torch.Tensor) for v in vars(b).values()) <= 2
        assert not any(
            isinstance(v, torch.Tensor) for f in b.framings if f is not None for v in vars(f).values()
        )


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and "(hint: " in message
    return message


@pytest.mark.parametrize("geometry", ["keep_aspect", "squash", "pad"])
def test_a_geometry_other_than_square_is_one_line(mixed_folder: Path, geometry: str) -> None:
    with pytest.raises(ConfigError) as error:
        ResflexDataModule(
            ImageFolderSource(str(mixed_folder), decoder="device"), FixedResolution(32, geometry=geometry)
        )
    message = _one_line(error)
    assert message.startswith("data.source.decoder=device frames square crops only")
    assert f"resolution.geometry is {geometry} (set by resolution.geometry)" in message
    assert "hint: resolution.geometry=square" in message


def test_auto_geometry_that_is_not_square_is_one_line(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "images")  # any aspect: auto chooses keep_aspect
    cfg = compose_train(["data=imagefolder", f"data.root={data}", "data.source.decoder=device"], tmp_path)
    with pytest.raises(ConfigError) as error:
        build_datamodule(cfg)
    assert "but resolution.geometry is keep_aspect (aspect w/h" in _one_line(error)


@pytest.mark.parametrize(
    "augment, schedule, key",
    [
        ({"auto": "trivial"}, None, "data.augment.auto"),
        ({"color_jitter": 0.4}, None, "data.augment.color_jitter"),
        ({}, {"auto": "rand"}, "resolution.final_augment.auto"),
    ],
)
def test_worker_augmentation_is_one_line(mixed_folder: Path, augment: dict, schedule, key: str) -> None:
    common = {"geometry": "square"}
    resolution = (
        FixedResolution(32, **common)
        if schedule is None
        else FixResResolution(32, 48, final_augment=schedule, **common)
    )
    with pytest.raises(ConfigError) as error:
        ResflexDataModule(ImageFolderSource(str(mixed_folder), decoder="device"), resolution, augment=augment)
    message = _one_line(error)
    assert message.startswith(f"{key} is set: it changes decoded images in the data workers")
    assert f"hint: {key}=null, or data.source.decoder=auto" in message
    fine = ResflexDataModule(
        ImageFolderSource(str(mixed_folder), decoder="device"), FixedResolution(32, **common)
    )
    assert fine.device_decode


@pytest.mark.parametrize("data", ["synthetic", "fashion_mnist"])
def test_a_source_without_image_files_is_one_line(tmp_path: Path, data: str) -> None:
    cfg = compose_train([f"data={data}", "+data.source.decoder=device"], tmp_path)
    with pytest.raises(ConfigError) as error:
        build_datamodule(cfg)
    message = _one_line(error)
    assert message.startswith(f"data.source.decoder=device decodes image files, and data={data} has none")
    assert "hint: data=imagefolder data.root=DIR" in message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs a CUDA device")
def test_nvjpeg_on_cuda_is_close_to_the_cpu_path(mixed_folder: Path) -> None:
    """Same framings; nvJPEG's decode and the CUDA resize round differently: < 1.5 levels on average."""
    for size, crop_pct in ((48, 1.0), ([40, 72], 0.875)):
        cpu, device = (_datamodule(mixed_folder, d, size, crop_pct) for d in ("torchvision", "device"))
        for reference_loader, device_loader in (
            (cpu.train_dataloader(), device.train_dataloader()),
            (cpu.val_dataloader(), device.val_dataloader()),
        ):
            for (reference, labels), (encoded, encoded_labels) in zip(
                reference_loader, device_loader, strict=True
            ):
                images, decoded_labels = encoded.to("cuda").decode(encoded_labels.cuda())
                assert images.device.type == "cuda" and images.shape == reference.shape
                assert torch.equal(decoded_labels.cpu(), labels)
                diff = _mean_abs(images.cpu(), reference)
                assert diff < 1.5, (size, diff)


def test_a_decode_error_without_a_reason_is_not_named_str() -> None:
    """``decode_jpeg_reason`` gives a str; an empty one made the message 'cannot read image x.jpg: str'."""
    assert BadImageError("x.jpg", "").message == "cannot read image x.jpg: no reason given"
    assert BadImageError("x.jpg", "bad marker\nmore").message == "cannot read image x.jpg: bad marker"
    assert BadImageError("x.jpg", OSError()).message == "cannot read image x.jpg: OSError"
