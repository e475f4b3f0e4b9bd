"""Fashion-MNIST source: real IDX bytes (written here, gz and raw), both folder layouts, splits, errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from resflex.data.fashion_mnist import DEBIAN_ROOT, FashionMNISTSource, read_idx
from resflex.errors import ConfigError, DataError

N_TRAIN, N_TEST = 30, 12


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format by hand (not via our reader): 0, 0, dtype 0x08 (uint8), ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_split(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Image i is filled with the value (offset + i) and has label (offset + i) % 10: checkable pairs."""
    values = np.arange(offset, offset + n)
    images = np.broadcast_to(values[:, None, None], (n, 28, 28)).astype(np.uint8).copy()
    images[:, 0, 0] = 255 - values  # not a constant image: rows/cols must come out in order
    return images, (values % 10).astype(np.uint8)


def write_fixture(folder: Path, gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"] = make_split(N_TRAIN, 0)
    arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"] = make_split(N_TEST, 100)
    for stem, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return folder


def check_item(image, label: int) -> int:
    pixels = np.asarray(image)
    assert image.mode == "RGB" and image.size == (28, 28)
    value = int(pixels[1, 1, 0])
    assert (pixels[1:, :, :] == value).all() and (pixels[..., 0] == pixels[..., 2]).all()
    assert int(pixels[0, 0, 1]) == 255 - value
    assert label == value % 10
    return value


@pytest.mark.parametrize("layout", ["debian_gz", "torchvision_raw"])
def test_reads_idx_files_with_correct_labels(tmp_path: Path, layout: str) -> None:
    if layout == "debian_gz":
        root = write_fixture(tmp_path / "fashion-mnist", gz=True)
    else:
        write_fixture(tmp_path / "tv" / "FashionMNIST" / "raw", gz=False)
        root = tmp_path / "tv"
    source = FashionMNISTSource(root=str(root), num_val=6, seed=3)
    assert len(source.classes) == 10 and source.classes[9] == "Ankle boot"
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 24, "val": 6, "test": N_TEST}
    train = {check_item(*source.splits["train"][i]) for i in range(24)}
    val = {check_item(*source.splits["val"][i]) for i in range(6)}
    test = {check_item(*source.splits["test"][i]) for i in range(N_TEST)}
    assert train | val == set(range(N_TRAIN)) and not train & val  # a holdout: disjoint, complete
    assert test == set(range(100, 100 + N_TEST))


def test_split_is_seeded_and_capped(tmp_path: Path) -> None:
    root = str(write_fixture(tmp_path, gz=True))

    def val_ids(seed: int) -> list[int]:
        src = FashionMNISTSource(root=root, num_val=5, seed=seed)
        return [int(np.asarray(src.splits["val"][i][0])[1, 1, 0]) for i in range(5)]

    assert val_ids(1) == val_ids(1)
    assert val_ids(1) != val_ids(2)
    capped = FashionMNISTSource(root=root, num_train=7, num_val=5, num_test=0)
    assert len(capped.splits["train"]) == 7 and "test" not in capped.splits
    with pytest.raises(ConfigError, match="num_val"):
        FashionMNISTSource(root=root, num_val=0)
    with pytest.raises(ConfigError, match="num_train"):
        FashionMNISTSource(root=root, num_train=-1)


def test_image_sizes_are_read_without_building_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Aspect bucketing and the data profile ask every image's size: from the array's shape, not by
    building 60,000 PIL images (which the fallback does, with a warning)."""
    from resflex.data.buckets import image_sizes

    source = FashionMNISTSource(root=str(write_fixture(tmp_path, gz=True)), num_val=6)
    train = source.splits["train"]
    monkeypatch.setattr(type(train), "__getitem__", lambda self, i: pytest.fail("decoded an image"))
    with caplog.at_level("WARNING"):
        assert image_sizes(train) == [(28, 28)] * len(train)
    assert "no cheap image_size" not in caplog.text


def test_image_size_is_width_then_height_as_the_built_image() -> None:
    """Any IDX array of (n, h, w) is read (not only 28x28): the cheap size must be PIL's (width, height)."""
    from resflex.data.fashion_mnist import ArrayImages

    images = np.zeros((2, 20, 28), np.uint8)  # 20 rows, 28 columns
    split = ArrayImages(images, np.array([3, 4], np.uint8), np.array([1, 0]))
    assert split.image_size(0) == split[0][0].size == (28, 20)


def test_read_idx_wider_types_and_bad_files(tmp_path: Path) -> None:
    ints = np.array([[1, -2], [70000, 3]], dtype=">i4")
    path = tmp_path / "ints.idx"
    path.write_bytes(bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 2, 2) + ints.tobytes())
    assert read_idx(path).tolist() == [[1, -2], [70000, 3]]
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"PNG whatever")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(bad)
    truncated = tmp_path / "short.idx"
    truncated.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(truncated)
    # a 4-byte type counts bytes, not values: 3 of the 4 int32s (12 bytes, more than 4) is truncated too
    short_ints = tmp_path / "short_ints.idx"
    short_ints.write_bytes(bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 2, 2) + ints.tobytes()[:-4])
    with pytest.raises(DataError, match="truncated"):
        read_idx(short_ints)


def test_missing_files_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        FashionMNISTSource(root=str(tmp_path / "nowhere"))
    line = info.value.one_line()
    assert "not found under" in line and "apt-get install dataset-fashion-mnist" in line
    assert "data.source.download=true" in line and "\n" not in line
    root = write_fixture(tmp_path / "partial", gz=True)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        FashionMNISTSource(root=str(root))


def test_config_builds_the_source(tmp_path: Path) -> None:
    from resflex.build import build_datamodule
    from tests.test_configs import compose_train

    root = write_fixture(tmp_path / "fm", gz=True)
    cfg = compose_train(["data=fashion_mnist", f"data.root={root}", "data.source.num_val=4"], tmp_path)
    source = build_datamodule(cfg).source  # the data module finishes the source with data.root
    assert isinstance(source, FashionMNISTSource)
    assert len(source.splits["train"]) == N_TRAIN - 4


@pytest.mark.skipif(not Path(DEBIAN_ROOT).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_debian_package_files_are_the_real_dataset() -> None:
    source = FashionMNISTSource(num_val=5000, num_test=None)
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 55000, "val": 5000, "test": 10000}
    labels = source.splits["test"].labels
    assert labels[:3].tolist() == [9, 2, 1]  # the official test set starts Ankle boot, Pullover, Trouser
    assert np.bincount(labels).tolist() == [1000] * 10
