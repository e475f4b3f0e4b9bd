"""Fashion-MNIST from its IDX files: 28×28 grey images of 10 clothing classes.

Two layouts are found under ``data.root``, gzipped or not:

* the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/*-ubyte.gz``),
* torchvision's download (``<root>/FashionMNIST/raw/*-ubyte[.gz]``); with
  ``download=True`` a missing copy is fetched through torchvision.

The IDX parser is ours (numpy, ~20 lines) because torchvision's reader does not
open ``.gz`` files, which is how both the Debian package and the upstream
project ship them. Images stay one uint8 array in memory (47 MB for train) and
become RGB PIL images per item, as every :class:`ImageSource` returns.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
from PIL import Image
from torch.utils.data import Dataset

from resflex.data.datasets import ImageSource, Split
from resflex.errors import ConfigError, DataError

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = tuple(stem for pair in FILES.values() for stem in pair)
HOW_TO_GET = (
    "apt-get install dataset-fashion-mnist (files land in /usr/share/datasets/fashion-mnist), "
    "or data.root=data/fashion_mnist data.source.download=true when online"
)
_IDX_DTYPES: dict[int, npt.DTypeLike] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (``.gz`` or raw): magic ``00 00 <dtype> <ndim>``, big-endian dims, then data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}", hint=HOW_TO_GET) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"not an IDX file: {path}", hint=HOW_TO_GET)
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(shape)) if shape else 0
    if len(data) - header < count * dtype.itemsize:
        raise DataError(f"IDX file is truncated: {path} (expected shape {shape})", hint=HOW_TO_GET)
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)


def missing_files(base: Path, missing: Sequence[str]) -> NoReturn:
    """The one-line refusal for Fashion-MNIST files not under ``base``."""
    what = "files" if len(missing) == len(ALL_FILES) else ", ".join(m + "[.gz]" for m in missing)
    raise DataError(f"Fashion-MNIST {what} not found under {base}", hint=HOW_TO_GET)


def find_idx_file(root: Path, stem: str) -> Path | None:
    """The first of ``stem`` / ``stem.gz`` in the Debian, torchvision or plain layouts under ``root``."""
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _download(root: Path) -> None:
    from torchvision.datasets import FashionMNIST

    try:
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataError(
            f"could not download Fashion-MNIST into {root}: {type(exc).__name__}: {exc}",
            hint="apt-get install dataset-fashion-mnist, then data.root=" + DEBIAN_ROOT,
        ) from None


class ArrayImages(Dataset):
    """``(N, H, W)`` uint8 images + labels -> ``(RGB PIL image, int label)``; ``indices`` selects a subset."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, indices: Sequence[int] | np.ndarray | None = None
    ) -> None:
        self.images = images
        self.labels = labels
        self.indices = np.arange(len(labels)) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        i = int(self.indices[index])
        return Image.fromarray(self.images[i], mode="L").convert("RGB"), int(self.labels[i])

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) without building the image: what aspect bucketing and the data profile read."""
        return int(self.images.shape[2]), int(self.images.shape[1])


def _limit(value: int | None, available: int, key: str) -> int:
    if value is None:
        return available
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{key} must be a non-negative integer or null, got {value!r}")
    return min(value, available)


class FashionMNISTSource(ImageSource):
    """Train/val = a seeded holdout of the official 60k train set; test = the official 10k test set.

    ``num_val`` images of the training set are held out for validation (the
    same ones for a given ``seed``); ``num_train`` / ``num_test`` cap the other
    splits for quick runs (``null`` = all, ``num_test=0`` = no test split).
    """

    @staticmethod
    def check_source(root: str | None, args: Mapping[str, Any]) -> None:
        """Before any work (:mod:`resflex.preflight`): the four files are under ``data.root``, unless
        ``download`` will fetch them. Looks for the files only; nothing is read."""
        if not root:
            raise DataError("data.root is not set", hint=HOW_TO_GET)
        base = Path(root).expanduser()
        missing = [stem for stem in ALL_FILES if find_idx_file(base, stem) is None]
        if missing and not args.get("download", False):
            missing_files(base, missing)

    def __init__(
        self,
        root: str | None = DEBIAN_ROOT,
        download: bool = False,
        num_train: int | None = None,
        num_val: int = 5000,
        num_test: int | None = None,
        seed: int = 0,
    ) -> None:
        if not root:
            raise DataError("data.root is not set", hint=HOW_TO_GET)
        base = Path(root).expanduser()
        paths = {stem: find_idx_file(base, stem) for pair in FILES.values() for stem in pair}
        if any(p is None for p in paths.values()) and download:
            _download(base)
            paths = {stem: find_idx_file(base, stem) for stem in paths}
        missing = [stem for stem, p in paths.items() if p is None]
        if missing:
            missing_files(base, missing)
        arrays = {stem: read_idx(p) for stem, p in paths.items() if p is not None}
        train_images, train_labels = (arrays[s] for s in FILES["train"])
        test_images, test_labels = (arrays[s] for s in FILES["test"])
        for images, labels, split in (
            (train_images, train_labels, "train"),
            (test_images, test_labels, "test"),
        ):
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(
                    f"Fashion-MNIST {split} files disagree: images {images.shape}, labels {labels.shape}",
                    hint=HOW_TO_GET,
                )
        n_val = _limit(num_val, len(train_labels) - 1, "data.source.num_val")
        if n_val < 1:
            raise ConfigError("data.source.num_val must be >= 1: validation picks the best checkpoint")
        order = np.random.default_rng(seed).permutation(len(train_labels))
        val_idx, train_idx = np.sort(order[:n_val]), order[n_val:]
        train_idx = np.sort(train_idx[: _limit(num_train, len(train_idx), "data.source.num_train")])
        self.classes = list(CLASSES)
        self.splits: dict[str, Split] = {
            "train": ArrayImages(train_images, train_labels, train_idx),
            "val": ArrayImages(train_images, train_labels, val_idx),
        }
        n_test = _limit(num_test, len(test_labels), "data.source.num_test")
        if n_test > 0:
            test_idx = np.sort(np.random.default_rng(seed + 1).permutation(len(test_labels))[:n_test])
            self.splits["test"] = ArrayImages(test_images, test_labels, test_idx)
