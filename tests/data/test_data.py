"""Data: the embedded synthetic set, image folders of any mode/size, transforms and loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resflex.data.datamodule import ResflexDataModule, SizedDataset
from resflex.data.datasets import ImageFolderSource, SyntheticSource
from resflex.data.resolution import FixedResolution, RandomResolution
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
        (lambda p: (p / "train" / "cats").mkdir(parents=True), "no image file under .*train: cats"),
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


def test_a_refused_size_names_the_value_given_and_a_list_keys_hint_is_a_list() -> None:
    """``resolution.size=true`` was reported as ``got None``; a bad entry of ``resolution.sizes`` was told
    ``e.g. resolution.sizes=64``, a value that key refuses in turn."""
    from resflex.data.sizes import parse_size_list

    with pytest.raises(ConfigError, match=r"got True \(hint"):
        parse_size(True)
    with pytest.raises(ConfigError) as info:
        RandomResolution(sizes=[32, -1])
    assert info.value.one_line() == (
        "each entry of resolution.sizes must be positive integers, got -1 "
        "(hint: e.g. resolution.sizes=[32,64])"
    )
    assert parse_size_list([48, [32, 64]], "k") == [(48, 48), (32, 64)] and parse_size_list(40, "k") == [
        (40, 40)
    ]
    assert parse_size_list(None, "k") == []


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


def test_synthetic_test_split_is_its_own_images_and_num_test_zero_has_none() -> None:
    """Each split draws from its own seed: a test split equal to validation would grade the model twice
    on the images it was selected on. ``num_test=0`` leaves the test split out."""
    source = SyntheticSource(num_train=4, num_val=6, num_test=6)
    val, test = source.splits["val"], source.splits["test"]
    assert all(not np.array_equal(np.asarray(val[i][0]), np.asarray(test[i][0])) for i in range(6))
    assert [val.image_size(i) for i in range(6)] != [test.image_size(i) for i in range(6)]
    assert set(SyntheticSource(num_train=4, num_val=2, num_test=0).splits) == {"train", "val"}


def test_a_folder_of_one_image_cannot_split_off_a_validation_set(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "root", classes=("cats",), per_class=1)
    with pytest.raises(DataError, match="too few images in .* to split off a validation set"):
        ImageFolderSource(str(root), val_fraction=0.5)


def test_an_unreadable_file_is_left_out_of_its_split(tmp_path: Path) -> None:
    """``on_bad_image=skip`` (the default): a file whose header does not parse is not a sample."""
    root = make_image_folder(tmp_path / "root", splits=("train", "val"))
    (root / "train" / "cats" / "broken.png").write_bytes(b"not a png")
    source = ImageFolderSource(str(root))
    assert len(source.splits["train"]) == 18
    assert not any(path.endswith("broken.png") for path, _ in source.splits["train"].samples)


class _Solid:
    """A split of solid-colour images; an index in ``bad`` is an unreadable file."""

    def __init__(self, colours: list[tuple[int, int, int]], bad: tuple[int, ...] = ()) -> None:
        self.colours, self.bad = colours, bad

    def __len__(self) -> int:
        return len(self.colours)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        if index in self.bad:
            from resflex.data.bad_images import BadImageError

            raise BadImageError(f"img{index}.jpg", "truncated")
        return Image.new("RGB", (6, 4), self.colours[index]), 0


def test_pad_fill_is_the_mean_rgb_of_the_readable_images_in_channel_order() -> None:
    """The ``pad`` canvas is filled with the data's mean colour, red first; an unreadable image among
    those sampled is passed over, not the end of the sample."""
    from resflex.data.sized_dataset import mean_color

    colours = [(200, 100, 10), (0, 0, 0), (100, 50, 30)]
    assert mean_color(_Solid(colours), [0, 2]) == (150, 75, 20)
    assert mean_color(_Solid(colours, bad=(1,)), [1, 0, 2]) == (150, 75, 20)
    assert mean_color(_Solid(colours, bad=(0, 1, 2)), [0, 1, 2]) == (124, 116, 104)  # DEFAULT_FILL


def test_data_arguments_that_need_no_image_are_checked_before_any_is_read() -> None:
    """What preflight runs before a folder is scanned: a bad key fails there in one line, not in the
    data module after the scan (the FixRes phase's augment overrides included)."""
    from resflex.data.arguments import check_data_arguments
    from resflex.data.resolution import FixResResolution

    def check(schedule=None, augment=None, eval_crop_pct=1.0, every_epoch=True) -> object:
        schedule = schedule or FixedResolution(32)
        return check_data_arguments(schedule, 8, 0, augment, eval_crop_pct, None, every_epoch)

    assert check() == [(32, 32)]
    assert check(eval_crop_pct=1) == [(32, 32)]
    bad_phase = FixResResolution(24, 32, final_epochs=1, final_augment={"scale": [0.9, 0.2]}).bind(3)
    with pytest.raises(ConfigError, match="scale must satisfy"):
        check(bad_phase)
    with pytest.raises(ConfigError, match="data.eval_crop_pct=0 is invalid"):
        check(eval_crop_pct=0)
    with pytest.raises(ConfigError, match="eval.sizes_every_epoch must be true or false, got 'yes'"):
        check(every_epoch="yes")
    # the device's augment keys are the LightningModule's: the workers' transform never sees them
    assert check(augment={"random_erasing": 0.25, "hflip": False}) == [(32, 32)]


def test_sized_dataset_frames_a_phase_request_with_that_phase_transform() -> None:
    """A request that names a phase (FixRes' final epochs) gets that phase's framing, not the default."""
    base = SyntheticShapes(3)
    ds = SizedDataset(base, EvalTransform(crop_pct=0.5), {"fixres": EvalTransform(crop_pct=1.0)})
    phase = ds[(1, 16, 16, "fixres", None)][0]
    assert torch.equal(phase, EvalTransform(crop_pct=1.0)(base[1][0], (16, 16)))
    assert not torch.equal(phase, ds[(1, 16, 16)][0])


def test_sized_dataset_augmentation_is_a_function_of_seed_epoch_and_index() -> None:
    """The same (seed, epoch, index) draws the same crop (a resumed run sees the same batches); the
    next epoch draws another."""
    base = SyntheticShapes(3)
    ds = SizedDataset(base, TrainTransform(), seed=1)
    first = ds[(2, 24, 24, None, 0)][0]
    assert torch.equal(first, SizedDataset(base, TrainTransform(), seed=1)[(2, 24, 24, None, 0)][0])
    assert not torch.equal(first, ds[(2, 24, 24, None, 1)][0])
    assert not torch.equal(first, SizedDataset(base, TrainTransform(), seed=2)[(2, 24, 24, None, 0)][0])


def test_an_unreadable_image_is_replaced_by_the_next_one_with_skip_and_stops_with_raise() -> None:
    from resflex.data.bad_images import BadImageError, BadImagePolicy

    base = _Solid([(10, 10, 10), (0, 0, 0), (200, 30, 60)], bad=(1,))
    image, _ = SizedDataset(base, EvalTransform(), bad_images=BadImagePolicy("skip"))[(1, 4, 6)]
    assert image[:, 0, 0].tolist() == [200, 30, 60]
    with pytest.raises(BadImageError, match="img1.jpg"):
        SizedDataset(base, EvalTransform(), bad_images=BadImagePolicy("raise"))[(1, 4, 6)]


def test_files_the_scan_leaves_out_for_their_extension_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A readable .jfif or .pbm in a class folder was not trained on, and nothing said so."""
    import logging

    from tests.conftest import make_image_folder

    root = make_image_folder(tmp_path / "images", splits=("train", "val"))
    Image.new("RGB", (20, 20)).save(root / "train" / "owls" / "photo.jfif", format="JPEG")
    Image.new("1", (20, 20)).save(root / "train" / "owls" / "scan.pbm")
    (root / "train" / "owls" / ".DS_Store").write_bytes(b"")  # hidden: not the user's images
    with caplog.at_level(logging.WARNING, logger="resflex"):
        source = ImageFolderSource(str(root))
    assert len(source.splits["train"]) == 18
    assert "2 file(s) in the class folders of" in caplog.text and "photo.jfif, scan.pbm" in caplog.text
    assert ".DS_Store" not in caplog.text
