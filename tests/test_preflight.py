"""Sizes the backbone cannot take are refused before any data is read (resflex.preflight.check_before_work),
each error naming the key to change: the training size, the main evaluation size under
``eval.resolutions=auto`` (the run drops the other auto sizes itself), every size asked for by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from resflex.errors import ConfigError
from resflex.preflight import check_before_work
from tests.conftest import TINY, TINY_SYNTHETIC
from tests.test_configs import compose_train


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["resolution.size=8"], "resolution.size=8x8 is too small for test_resnet"),
        (["resolution.size=32", "resolution.eval_size=8"], "eval.resolutions=8x8 is too small"),  # auto
        (["resolution.size=32", "eval.resolutions=[32,8]"], "eval.resolutions=8x8 is too small"),
    ],
)
def test_a_size_the_backbone_cannot_take_is_a_one_line_error_naming_its_key(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    cfg = compose_train([*TINY, *TINY_SYNTHETIC, *overrides], tmp_path)
    with pytest.raises(ConfigError, match=message) as info:
        check_before_work(cfg)
    assert "\n" not in info.value.one_line() and "each side must be at least 16" in str(info.value)


def test_auto_evaluation_sizes_are_checked_by_their_main_size_only(tmp_path: Path) -> None:
    """``auto`` adds sizes around the main one; those the backbone cannot take are the run's to drop."""
    cfg = compose_train([*TINY, *TINY_SYNTHETIC, "resolution.size=16", "eval.resolutions=auto"], tmp_path)
    assert check_before_work(cfg) is None  # nothing to resume: a fresh run


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.source.on_bad_image=ignore"],
            "data.source.on_bad_image must be one of skip, raise, got 'ignore'",
        ),
        (["data.source.decoder=foo"], "data.source.decoder must be one of pil, torchvision"),
    ],
)
def test_an_image_folders_own_keys_are_refused_before_its_images_are_listed(
    overrides: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """These used to be refused by the source as it scanned, after the run had started its folder,
    logger and model card: a card pointing at a checkpoint that was never written."""
    from resflex.data import datasets
    from tests.conftest import make_image_folder

    root = make_image_folder(tmp_path / "images", splits=("train", "val"))

    def listed(*args: object, **kwargs: object) -> None:
        raise AssertionError("the folder was scanned")

    monkeypatch.setattr(datasets, "_scan_folder", listed)
    cfg = compose_train([*TINY, "data=imagefolder", f"data.root={root}", *overrides], tmp_path / "run")
    with pytest.raises(ConfigError, match=message):
        check_before_work(cfg)


def test_fashion_mnist_files_missing_are_refused_before_work_unless_they_will_be_downloaded(
    tmp_path: Path,
) -> None:
    from resflex.errors import DataError

    missing = compose_train([*TINY, "data=fashion_mnist", f"data.root={tmp_path / 'none'}"], tmp_path / "run")
    with pytest.raises(
        DataError, match=r"Fashion-MNIST files not found under .*none \(hint: apt-get install"
    ):
        check_before_work(missing)
    download = compose_train(
        [*TINY, "data=fashion_mnist", f"data.root={tmp_path / 'none'}", "data.source.download=true"],
        tmp_path / "r2",
    )
    assert check_before_work(download) is None  # the run downloads them (online), or says why it could not


def test_init_head_with_init_from_passes_the_check_before_work(tmp_path: Path) -> None:
    """The check builds the model without the source's tensors (init_from left out): init_head=true
    beside it was then "init_head without init_from", and every init_head run was refused."""
    from tests.conftest import train_run

    source = tmp_path / "source"
    overrides = [*TINY, *TINY_SYNTHETIC, "test_after_fit=false", "eval.resolutions=[32]"]
    train_run(overrides, source, hydra_files=True)
    cfg = compose_train(
        [*TINY, *TINY_SYNTHETIC, f"backbone.init_from={source}", "backbone.init_head=true"], tmp_path / "run"
    )
    assert check_before_work(cfg) is None
    assert str(cfg.backbone.init_from).startswith(str(source / "checkpoints"))
