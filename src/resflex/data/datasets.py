"""Dataset sources: each yields train/val(/test) splits of ``(image, label)`` at native size.

The image is an RGB PIL image for in-memory sources (synthetic, Fashion-MNIST) and an
:class:`~resflex.data.images.ImageFile` for folders (header read; the transform
decodes it, at reduced scale when the target size allows).

A *source* knows its class names and its splits; the data module wraps each
split so that images are resized to the size the batch sampler chose. Folder
scanning reuses torchvision's ``DatasetFolder`` (class discovery, extensions);
what is added here is the one-line errors and the seeded train/val split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image
from torch.utils.data import Subset
from torchvision.datasets import DatasetFolder

from resflex.data.bad_images import BadImagePolicy, check_policy
from resflex.data.images import (
    DEFAULT_DECODER,
    IMAGE_EXTENSIONS,
    ImageFile,
    check_decoder,
    header_is_readable,
    open_image,
    simplejpeg_module,
)
from resflex.data.synthetic import SyntheticShapes
from resflex.errors import ConfigError, DataError
from resflex.validation import check_value

log = logging.getLogger(__name__)


class Split(Protocol):
    """A split of an :class:`ImageSource`: a map-style dataset, ``len(split)`` items, ``split[i]`` ->
    ``(image, label)``. What torch's ``Dataset`` does not say: it declares no ``__len__`` (an
    iterable dataset has none), and every resflex split has one."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> tuple[Image.Image | ImageFile, int]: ...


class ImageSource:
    """What the data module needs from a dataset: class names and named splits."""

    classes: Sequence[str]
    splits: dict[str, Split]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class SyntheticSource(ImageSource):
    """The embedded procedural shapes dataset (see :mod:`resflex.data.synthetic`).

    The defaults are those of ``configs/data/synthetic.yaml`` (a test keeps them equal), so
    code that builds "the default data" without Hydra (the benchmark) gets the same images.
    """

    def __init__(
        self,
        num_train: int = 3000,
        num_val: int = 500,
        num_test: int = 500,
        seed: int = 0,
        min_side: int = 40,
        max_side: int = 112,
        object_scale: Sequence[float] = (0.35, 0.9),
        distractors: int = 1,
        noise: float = 10.0,
    ) -> None:
        count, positive = (
            (int, lambda v: v >= 0, "an integer >= 0"),
            (int, lambda v: v >= 1, "a positive integer"),
        )
        for key, value, rule in (
            ("num_train", num_train, positive),
            ("num_val", num_val, positive),
            ("num_test", num_test, count),
            ("seed", seed, count),
            ("min_side", min_side, positive),
            ("max_side", max_side, positive),
            ("distractors", distractors, count),
        ):
            check_value(f"data.source.{key}", value, *rule)
        check_value("data.source.noise", noise, float, lambda v: v >= 0, "a number >= 0 (pixel noise std)")
        if max_side < min_side:
            raise ConfigError(
                f"data.source.max_side={max_side} is below data.source.min_side={min_side}",
                hint="data.source.max_side >= data.source.min_side",
            )
        shapes = partial(
            SyntheticShapes,
            min_side=min_side,
            max_side=max_side,
            object_scale=object_scale,
            distractors=distractors,
            noise=noise,
        )
        # distinct seeds per split: the splits share no image
        self.splits = {
            "train": shapes(num_train, seed=seed * 3 + 0),
            "val": shapes(num_val, seed=seed * 3 + 1),
        }
        if num_test > 0:
            self.splits["test"] = shapes(num_test, seed=seed * 3 + 2)
        self.classes = SyntheticShapes.classes


def warn_files_left_out(path: Path, folder: DatasetFolder, key: str) -> None:
    """Warn about files in the class folders that the scan left out for their extension: a readable
    ``.jfif`` or ``.pbm`` was not trained on, and nothing said so (``predict.py`` counts them)."""
    listed = {Path(p) for p, _ in folder.samples}
    left_out = sorted(
        f
        for name in folder.classes
        for f in (path / name).rglob("*")
        if f.is_file() and not f.name.startswith(".") and f not in listed
    )
    if left_out:
        examples = ", ".join(f.name for f in left_out[:3])
        log.warning(
            "%s: %d file(s) in the class folders of %s left out, not named as images (%s%s); image files "
            "end in %s",
            key,
            len(left_out),
            path,
            examples,
            ", ..." if len(left_out) > 3 else "",
            ", ".join(IMAGE_EXTENSIONS),
        )


def _scan_folder(
    path: Path, key: str, policy: BadImagePolicy | None = None, decoder: str = "pil"
) -> DatasetFolder:
    """Index ``path/<class>/*`` and drop files whose header does not parse (``skip``) or stop (``raise``).

    A class folder with no image file, or left with no readable image, is an error here, before any
    training: named, with what an image file is.
    """
    try:
        loader = partial(open_image, decoder=decoder)
        # allow_empty: a class folder with no image file is reported below by its name, not as
        # torchvision's "Found no valid file for the classes ..." under "no images found"
        folder = DatasetFolder(str(path), loader=loader, extensions=IMAGE_EXTENSIONS, allow_empty=True)
    except FileNotFoundError as exc:
        raise DataError(
            f"{key}: no images found under {path} ({str(exc).splitlines()[0]})",
            hint="expected <root>/train/<class_name>/<image files>",
        ) from None
    with_files = {folder.classes[target] for _, target in folder.samples}
    no_files = sorted(set(folder.classes) - with_files)
    if no_files:
        raise DataError(
            f"{key}: class folder(s) with no image file under {path}: {', '.join(no_files[:5])} "
            f"(image files end in {', '.join(IMAGE_EXTENSIONS)})",
            hint="add images or remove the folder: each folder under it is a class",
        )
    warn_files_left_out(path, folder, key)
    policy = policy or BadImagePolicy("skip")
    kept = []
    for sample in folder.samples:
        error = header_is_readable(sample[0])
        if error is None:
            kept.append(sample)
        else:
            policy.handle(error)
    empty = sorted(set(folder.classes) - {folder.classes[target] for _, target in kept})
    if empty:
        raise DataError(
            f"{key}: class folder(s) with no readable image under {path}: {', '.join(empty[:5])}",
            hint="add images, remove the folder, or fix the files listed above",
        )
    folder.samples = kept
    folder.targets = [target for _, target in kept]
    return folder


class ImageFolderSource(ImageSource):
    """``root/train/<class>/*``, optional ``root/val/`` and ``root/test/``.

    Without ``val/``, a seeded ``val_fraction`` of ``train/`` becomes validation.
    Class names come from ``train/``; ``val/`` and ``test/`` must use the same ones.
    ``decoder``: ``data.source.decoder``, who decodes JPEGs (:mod:`resflex.data.images`).
    """

    @classmethod
    def check_source(cls, root: str | None, args: Mapping[str, Any]) -> None:
        """The source's keys and root before any work (:mod:`resflex.preflight`): the decoder, the
        bad-image policy and the folder (no image listed or read)."""
        check_decoder(args.get("decoder", DEFAULT_DECODER))
        check_policy(args.get("on_bad_image", "skip"))
        cls.check_root(root)

    @staticmethod
    def check_root(root: str | None) -> Path:
        """``data.root`` as a folder with ``train/`` inside, or a one-line :class:`DataError`.

        Looks at the folder only (no image is listed or read): :mod:`resflex.preflight` calls it
        before any work, the constructor before it scans.
        """
        if not root:
            raise DataError(
                "data.root is not set", hint="pass data.root=/path/to/folder (with train/<class>/ inside)"
            )
        base = Path(root).expanduser()
        if base.exists() and not base.is_dir():
            raise DataError(
                f"data.root is a file, not a folder: {base}", hint="expected <root>/train/<class>/<images>"
            )
        if not base.is_dir():
            raise DataError(
                f"data.root does not exist: {base}", hint="check the path; expected <root>/train/<class>/"
            )
        if not any(base.iterdir()):
            raise DataError(f"data.root is empty: {base}", hint="expected <root>/train/<class>/<images>")
        if not (base / "train").is_dir():
            raise DataError(
                f"data.root has no train/ folder: {base}", hint="expected <root>/train/<class>/<images>"
            )
        return base

    def __init__(
        self,
        root: str | None,
        val_fraction: float = 0.1,
        seed: int = 0,
        on_bad_image: str = "skip",
        bad_image_log: str | None = None,
        decoder: str = DEFAULT_DECODER,
    ) -> None:
        self.decoder = check_decoder(decoder)
        if self.decoder == "auto" and simplejpeg_module() is None:
            log.info(
                "JPEGs are decoded by PIL / decode_jpeg: install simplejpeg (pip install 'resflex[jpeg]') "
                "for the same pixels in less CPU time (experiments/performance/README.md, Loader)"
            )
        self.bad_images = BadImagePolicy(on_bad_image, bad_image_log)
        base = self.check_root(root)
        train_dir = base / "train"
        train = _scan_folder(train_dir, "data.root", self.bad_images, decoder)
        self.classes = list(train.classes)
        self.splits: dict[str, Split] = {}
        val_dir = base / "val"
        if val_dir.is_dir():
            val = _scan_folder(val_dir, "data.root (val/)", self.bad_images, decoder)
            self._check_same_classes(val, "val")
            self.splits = {"train": train, "val": val}
        else:
            if not 0 < val_fraction < 1:
                raise DataError(
                    "data.source.val_fraction must be in (0, 1) when there is no val/ folder, "
                    f"got {val_fraction}",
                    hint=f"data.source.val_fraction=0.1, or add {base / 'val'}/<class>/<images>",
                )
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
            n_val = max(1, round(len(train) * val_fraction))
            if n_val >= len(train):
                raise DataError(f"too few images in {train_dir} to split off a validation set ({len(train)})")
            self.splits = {"train": Subset(train, order[n_val:]), "val": Subset(train, order[:n_val])}
        test_dir = base / "test"
        if test_dir.is_dir():
            test = _scan_folder(test_dir, "data.root (test/)", self.bad_images, decoder)
            self._check_same_classes(test, "test")
            self.splits["test"] = test

    def _check_same_classes(self, split: DatasetFolder, name: str) -> None:
        if list(split.classes) != list(self.classes):
            only_here = sorted(set(split.classes) - set(self.classes))
            only_train = sorted(set(self.classes) - set(split.classes))
            differences = [
                f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''} only in {where}/"
                for names, where in ((only_here, name), (only_train, "train"))
                if names
            ]
            raise DataError(
                f"{name}/ has different class folders than train/: {'; '.join(differences)}",
                hint="use the same class folder names in every split",
            )
