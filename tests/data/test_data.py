"""Data: the embedded synthetic set, image folders of any mode/size, transforms and loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resflex.data.datamodule import ResflexDataModule, SizedDataset
from resflex.data.datasets import ImageFolderSource, SyntheticSource
from resflex.data.resolution import FixedResolution
from resflex.data.sampler import ResolutionBatchSampler
from resflex.data.sizes import parse_size
from resflex.data.synthetic import SyntheticShapes
from resflex.data.transforms import EvalTransform, TrainTransform
from resflex.errors import ConfigError, DataError
from tests.conftest import load_rgb, make_image_folder


def test_synthetic_is_deterministic_and_varied() -> None:
    a, b = SyntheticShapes(40, seed=3), SyntheticShapes(40, seed=3)
    img_a, label_a = a[5]
    img_b, label_b = b[5]
    assert label_a == label_b and np.array_equal(np.asarray(img_a), np.asarray(img_b))
    sizes = {a[i][0].size for i in range(40)}
    aspects = [w / h for w, h in sizes]
    assert len(sizes) > 30, "image sizes should vary"
    assert min(aspects) < 0.8 and max(aspects) > 1.25, "aspect ratios should vary"
    assert all(a[i][0].mode == "RGB" for i in range(5))
    other = SyntheticShapes(40, seed=4)[5][0]
    assert other.size != img_a.size or not np.array_equal(np.asarray(other), np.asarray(img_a))


def test_synthetic_classes_are_balanced_and_splits_differ() -> None:
    source = SyntheticSource(num_train=100, num_val=30, num_test=20)
    labels = [source.splits["train"][i][1] for i in range(100)]
    assert np.bincount(labels).tolist() == [10] * 10
    assert set(source.splits) == {"train", "val", "test"}
    train0 = np.asarray(source.splits["train"][0][0])
    val0 = np.asarray(source.splits["val"][0][0])
    assert train0.shape != val0.shape or not np.array_equal(train0, val0)


@pytest.mark.parametrize("size", [(32, 32), (24, 56), (57, 13), (1, 1)])
def test_transforms_give_exact_uint8_size(size: tuple[int, int]) -> None:
    image = Image.new("RGB", (91, 37), (10, 20, 30))
    for transform in (TrainTransform(), EvalTransform(), EvalTransform(crop_pct=0.875)):
        out = transform(image, size)
        assert out.dtype == torch.uint8 and out.shape == (3, *size)


@pytest.mark.parametrize("size", [(64, 64), (33, 33)])
def test_train_transform_equals_the_composed_v2_reference(size: tuple[int, int]) -> None:
    """The hand-called functional path draws and resamples exactly like v2.Compose would (square
    targets; non-square ones take the ratio range relative to w/h: tests/data/test_geometry.py)."""
    from torchvision.transforms import v2

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (83, 121, 3), dtype=np.uint8))
    reference = v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.35, 1.0), ratio=(0.75, 1.3333), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
        ]
    )
    ours = TrainTransform(scale=(0.35, 1.0), ratio=(0.75, 1.3333))
    no_flip = TrainTransform(scale=(0.35, 1.0), ratio=(0.75, 1.3333), hflip=False)
    flips = 0
    for seed in range(12):
        torch.manual_seed(seed)
        expected = reference(image)
        torch.manual_seed(seed)
        got = ours(image, size)
        assert torch.equal(got, expected), f"seed {seed}"
        torch.manual_seed(seed)
        flips += not torch.equal(no_flip(image, size), got)
    assert 0 < flips < 12  # the flip really happens, and not always


def test_eval_transform_keeps_the_centre() -> None:
    pixels = np.zeros((40, 100, 3), np.uint8)
    pixels[:, 30:70] = 255  # a white vertical band in the middle
    out = EvalTransform()(Image.fromarray(pixels), (20, 20))
    assert out.float().mean() > 250  # the centre crop lies inside the band


def test_image_modes_become_rgb(tmp_path: Path) -> None:
    for mode, value in [("L", 128), ("RGBA", (1, 2, 3, 255)), ("P", 5), ("CMYK", (0, 0, 0, 0))]:
        path = tmp_path / f"x_{mode}.png" if mode != "CMYK" else tmp_path / "x.jpg"
        Image.new(mode, (5, 4), value).save(path)
        image = load_rgb(path)
        assert image.mode == "RGB" and image.size == (5, 4)
    sixteen = Image.fromarray(np.full((4, 5), 65535, dtype=np.uint16))
    sixteen.save(tmp_path / "deep.png")
    assert np.asarray(load_rgb(tmp_path / "deep.png")).min() == 255  # scaled, not clipped at 255 of 65535


@pytest.mark.parametrize(
    ("image", "rgb"),
    [
        (Image.new("L", (5, 4), 128), (128, 128, 128)),
        (Image.new("RGBA", (5, 4), (1, 2, 3, 255)), (1, 2, 3)),
        # transparent pixels on black (the module's rule): alpha 128 of 255 keeps ~half of each channel
        (Image.new("RGBA", (5, 4), (200, 100, 50, 128)), (100, 50, 25)),
        (Image.new("RGBA", (5, 4), (200, 100, 50, 0)), (0, 0, 0)),
        # 16 bit: 32768 / 65535 * 255 = 127.5019, rounded (not truncated) to 128
        (Image.fromarray(np.full((4, 5), 32768, dtype=np.uint16)), (128, 128, 128)),
        # 32-bit integers holding 8-bit values (max <= 255) stay on the 0..255 scale
        (Image.fromarray(np.full((4, 5), 200, dtype=np.int32)), (200, 200, 200)),
    ],
    ids=["L", "RGBA-opaque", "RGBA-half", "RGBA-clear", "I16", "I32-8bit"],
)
def test_image_modes_become_these_rgb_values(image: Image.Image, rgb: tuple[int, int, int]) -> None:
    from resflex.data.images import to_rgb

    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (5, 4)
    assert (np.asarray(out) == np.array(rgb, np.uint8)).all()


def test_image_folder_with_val_and_test(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", splits=("train", "val", "test"))
    source = ImageFolderSource(str(root))
    assert source.classes == ["cats", "dogs", "owls"]
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 18, "val": 18, "test": 18}
    file, label = source.splits["val"][7]
    image, scale = file.decode()
    assert image.mode == "RGB" and label == 1 and scale == 1.0 and image.size == file.size


def test_image_folder_without_val_splits_train_by_seed(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", per_class=10)
    first = ImageFolderSource(str(root), val_fraction=0.2, seed=1)
    again = ImageFolderSource(str(root), val_fraction=0.2, seed=1)
    other = ImageFolderSource(str(root), val_fraction=0.2, seed=2)
    assert len(first.splits["val"]) == 6 and len(first.splits["train"]) == 24
    assert first.splits["val"].indices == again.splits["val"].indices
    assert first.splits["val"].indices != other.splits["val"].indices
    assert not set(first.splits["val"].indices) & set(first.splits["train"].indices)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "is empty"),
        (lambda p: (p / "other").mkdir(parents=True), "no train/ folder"),
        (lambda p: (p / "train").mkdir(parents=True) or (p / "train" / "x.txt").write_text("x"), "no images"),
        (lambda p: (p / "train" / "cats").mkdir(parents=True), "no images"),
        (lambda p: p.write_text("x"), "is a file, not a folder"),
    ],
)
def test_image_folder_errors_are_one_line(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "root"
    setup(root)
    with pytest.raises(DataError, match=message) as info:
        ImageFolderSource(str(root))
    assert "\n" not in str(info.value) and "hint:" in str(info.value)


def test_unset_root_is_explained() -> None:
    with pytest.raises(DataError, match="data.root is not set"):
        ImageFolderSource(None)


@pytest.mark.parametrize("bad", [0, -3, [0, 4], "big", [1, 2, 3], True])
def test_bad_sizes_are_rejected(bad: object) -> None:
    with pytest.raises(ConfigError, match="resolution.size"):
        parse_size(bad)  # type: ignore[arg-type]


def test_sampler_covers_every_sample_once_per_epoch_and_reshuffles() -> None:
    sampler = ResolutionBatchSampler(
        50, 8, FixedResolution(32), shuffle=True, training=True, drop_last=False, seed=0
    )
    epoch0 = [item[0] for batch in sampler for item in batch]
    sampler.set_epoch(1)
    epoch1 = [item[0] for batch in sampler for item in batch]
    assert sorted(epoch0) == sorted(epoch1) == list(range(50))
    assert epoch0 != epoch1
    assert all(item[1:3] == (32, 32) and item[4] == 1 for batch in sampler for item in batch)


def test_datamodule_batches_are_uint8_at_the_scheduled_size() -> None:
    dm = ResflexDataModule(
        SyntheticSource(40, 20, 0), FixedResolution([24, 40], geometry="square"), batch_size=8, num_workers=0
    )
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 24, 40)
    assert labels.dtype == torch.int64 and labels.shape == (8,)
    val = list(dm.val_dataloader())
    assert sum(len(b[1]) for b in val) == 20  # evaluation keeps every sample
    assert not dm.has_split("test")


def test_sized_dataset_uses_the_requested_size() -> None:
    ds = SizedDataset(SyntheticShapes(4), EvalTransform())
    assert ds[(2, 17, 29)][0].shape == (3, 17, 29)


def test_datamodule_rejects_bad_loader_settings() -> None:
    with pytest.raises(ConfigError, match="data.batch_size"):
        ResflexDataModule(SyntheticSource(10, 10, 0), FixedResolution(32), batch_size=0)


def test_a_run_trains_on_an_image_folder_of_mixed_images(tmp_path: Path) -> None:
    """A whole run (in-process ``train``) on PNG/JPEG files in L, RGB, RGBA and P modes, without a val/."""
    import json

    from resflex.train import train
    from tests.conftest import TINY
    from tests.test_configs import compose_train

    root = make_image_folder(tmp_path / "images", per_class=8)  # no val/: seeded split
    run_dir = tmp_path / "run"
    record = train(compose_train(["data=imagefolder", f"data.root={root}", *TINY, "logger=none"], run_dir))
    assert record["status"] == "completed" and record["data_profile"]["images"] < 24  # val/ split off
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["metrics"]["val/acc"] == pytest.approx(record["metrics"]["val/acc"])
    assert "val/acc_top5" not in written["metrics"]  # only 3 classes


@pytest.mark.parametrize("fraction", [0, 1.0, -0.5])
def test_a_bad_val_fraction_names_its_key_with_a_hint(tmp_path: Path, fraction: float) -> None:
    root = make_image_folder(tmp_path / "root", per_class=3)
    with pytest.raises(DataError, match="data.source.val_fraction must be in") as info:
        ImageFolderSource(str(root), val_fraction=fraction)
    assert "hint: data.source.val_fraction=0.1" in str(info.value)


def test_a_folder_of_one_class_is_refused_in_one_line_before_training(tmp_path: Path) -> None:
    """torchmetrics refused it from inside the module (num_classes=1), naming neither the folder nor why."""
    from resflex.build import build_datamodule, build_module
    from tests.test_configs import compose_train

    root = make_image_folder(tmp_path / "root", classes=("cats",), per_class=3)
    cfg = compose_train(["data=imagefolder", f"data.root={root}"], tmp_path / "run")
    datamodule = build_datamodule(cfg)
    with pytest.raises(DataError, match="the data has 1 class under .*: a classifier needs at least") as info:
        build_module(cfg, num_classes=datamodule.num_classes)
    assert "\n" not in str(info.value)


def test_a_source_that_does_not_subclass_image_source_is_used_as_built() -> None:
    """A user's ``data.source._target_`` returns any object with classes and splits: the data module
    uses it as it is, neither calling it nor asking its signature for a root."""
    from resflex.data.arguments import finish_source

    class DuckSource:
        classes = ("a", "b")
        splits = {"train": [(Image.new("RGB", (8, 8)), 0)]}

        def __call__(self) -> None:
            raise AssertionError("a built source is not called")

    duck = DuckSource()
    assert finish_source(duck, None, "mine") is duck  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="data.root is not used by data=mine"):
        finish_source(duck, "/some/dir", "mine")  # type: ignore[arg-type]
