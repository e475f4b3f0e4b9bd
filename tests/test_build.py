"""resflex.build: from a composed config to the run's objects, and the one-line refusals on the way."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from resflex.build import build_callbacks, build_module, build_trainer, check_sizes_fit_backbone
from resflex.data.resolution import FixedResolution
from resflex.errors import ConfigError, DataError
from resflex.training.finetune import Finetuning
from resflex.training.safety import AtomicCheckpointIO
from resflex.training.scale_consistency import ScaleConsistency
from tests.conftest import TINY, TINY_SYNTHETIC
from tests.test_configs import compose_train


def test_a_one_class_folder_names_the_train_folder_it_counted(tmp_path: Path) -> None:
    """The classes are the folders under ``<root>/train``: the message names that folder."""
    cfg = compose_train(["data=imagefolder", f"data.root={tmp_path / 'pets'}"], tmp_path / "run")
    with pytest.raises(DataError) as info:
        build_module(cfg, num_classes=1)
    assert f"the data has 1 class under {tmp_path / 'pets'}/train:" in info.value.one_line()


def test_a_mistyped_trainer_argument_is_one_config_error_line(tmp_path: Path) -> None:
    """Lightning refuses an unknown keyword with a TypeError deep in Hydra: the user reads one line."""
    cfg = compose_train([*TINY, *TINY_SYNTHETIC, "logger=none"], tmp_path)
    OmegaConf.update(cfg, "trainer.max_epoch", 1, force_add=True)
    with pytest.raises(ConfigError) as info:
        build_trainer(cfg)
    line = info.value.one_line()
    assert line.startswith("trainer: ") and "max_epoch" in line and "pytorch_lightning.Trainer" in line


def test_a_gpu_asked_for_on_a_machine_without_one_is_one_line_with_the_switch_that_runs_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning says "No supported gpu backend found!", which names no way out; the hint names one."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_train(
        [*(a for a in TINY if "accelerator" not in a), *TINY_SYNTHETIC, "trainer=gpu"], tmp_path
    )
    with pytest.raises(ConfigError) as info:
        build_trainer(cfg)
    assert info.value.one_line() == (
        "trainer.accelerator=gpu: torch sees no CUDA GPU on this machine (hint: trainer=cpu (or "
        "trainer.accelerator=auto: a GPU where there is one))"
    )


def test_the_users_own_trainer_plugins_are_kept(tmp_path: Path) -> None:
    """``trainer.plugins`` given: resflex's atomic checkpoint IO does not replace what the user chose."""
    cfg = compose_train([*TINY, *TINY_SYNTHETIC, "logger=none"], tmp_path)
    plugin = {"_target_": "lightning_fabric.plugins.io.torch_io.TorchCheckpointIO"}
    OmegaConf.update(cfg, "trainer.plugins", [plugin], force_add=True)
    assert type(build_trainer(cfg).strategy.checkpoint_io).__name__ == "TorchCheckpointIO"
    OmegaConf.update(cfg, "trainer.plugins", None)
    assert isinstance(build_trainer(cfg).strategy.checkpoint_io, AtomicCheckpointIO)


def test_the_finetune_node_is_the_fine_tuning_callback(tmp_path: Path) -> None:
    """``finetune=linear_probe`` must freeze the backbone: its node, not the default ``full``, is built."""
    cfg = compose_train([*TINY, *TINY_SYNTHETIC, "finetune=linear_probe"], tmp_path)
    finetuning = [c for c in build_callbacks(cfg, with_loggers=False) if isinstance(c, Finetuning)]
    assert len(finetuning) == 1 and finetuning[0].spec.name == "linear_probe"


class StrideBackbone:
    """A backbone whose sizes must be multiples of 32 (a CNN's total stride)."""

    def check_input_size(self, size: tuple[int, int], key: str, largest_side: int | None = None) -> None:
        if size[0] % 32 or size[1] % 32:
            raise ConfigError(f"{key}: {size[0]}x{size[1]} is not a multiple of 32")


def sizes_of(eval_sizes: list[tuple[int, int]], auto: bool) -> SimpleNamespace:
    schedule = SimpleNamespace(train_sizes=lambda: [(64, 64)], geometry="square")
    return SimpleNamespace(schedule=schedule, eval_sizes=eval_sizes, eval_sizes_auto=auto)


def test_auto_eval_sizes_that_do_not_fit_are_dropped_and_named_ones_refused() -> None:
    """``eval.resolutions=auto`` picked them, an unfit one is skipped; a size the user named is refused."""
    auto = sizes_of([(64, 64), (48, 48), (96, 96)], auto=True)
    check_sizes_fit_backbone(auto, StrideBackbone())  # type: ignore[arg-type]
    assert auto.eval_sizes == [(64, 64), (96, 96)]
    named = sizes_of([(64, 64), (48, 48)], auto=False)
    with pytest.raises(ConfigError, match="eval.resolutions: 48x48"):
        check_sizes_fit_backbone(named, StrideBackbone())  # type: ignore[arg-type]


def keep_aspect_data(eval_sizes: list[tuple[int, int]], auto: bool, multiple: int = 8) -> SimpleNamespace:
    schedule = FixedResolution(64, geometry="keep_aspect", aspect_ratios=[1.0, 1.5], multiple=multiple)
    return SimpleNamespace(schedule=schedule, eval_sizes=eval_sizes, eval_sizes_auto=auto)


def test_every_bucket_shape_is_checked_before_the_first_step() -> None:
    """Under keep_aspect a 64 px batch of aspect 1.5 is 64x96: a backbone that takes 64x64 and not 64x96
    fails at that bucket's first batch, so the bucket is checked and named. Rounded to 32 it is 64x96 too;
    a 1.25 bucket (64x80 at multiple 8) is refused, and with multiple=32 it becomes 64x96 and fits."""
    data = keep_aspect_data([(64, 64)], auto=False)
    data.schedule.aspect_ratios = (1.0, 1.25)
    with pytest.raises(
        ConfigError, match=r"64x80 is not a multiple of 32, in the keep_aspect bucket of aspect 1.25"
    ) as info:
        check_sizes_fit_backbone(data, StrideBackbone())  # type: ignore[arg-type]
    # the square size itself fits: one shape for every image is the way out (found by a ViT audit)
    assert info.value.hint == "resolution.geometry=square (every image at 64x64, no buckets)"
    data = keep_aspect_data([(64, 64)], auto=False, multiple=32)
    data.schedule.aspect_ratios = (1.0, 1.25)
    check_sizes_fit_backbone(data, StrideBackbone())  # type: ignore[arg-type]


def test_an_auto_eval_size_whose_bucket_does_not_fit_is_dropped() -> None:
    """96 px fits as a square, but its 1.5 bucket is 96x144 (144 = 4.5 x 32): auto drops the size."""
    data = keep_aspect_data([(64, 64), (96, 96), (128, 128)], auto=True)
    check_sizes_fit_backbone(data, StrideBackbone())  # type: ignore[arg-type]
    assert data.eval_sizes == [(64, 64), (128, 128)]


def test_every_scale_consistency_view_is_checked_before_the_first_step() -> None:
    """The 0.75x view of a 64x64 batch is 48x48: refused naming the view, with the switch that turns it
    off; the 1.5x view (96x96) fits."""
    data = sizes_of([(64, 64)], auto=False)
    views = ScaleConsistency(0.5, [0.75], prob=1.0, seed=0)
    with pytest.raises(
        ConfigError, match=r"48x48 is not a multiple of 32, in the 0.75x view of the 64x64 batch"
    ) as info:
        check_sizes_fit_backbone(data, StrideBackbone(), views)  # type: ignore[arg-type]
    assert info.value.hint == "model.scale_consistency=0"
    check_sizes_fit_backbone(data, StrideBackbone(), ScaleConsistency(0.5, [1.5], prob=1.0, seed=0))  # type: ignore[arg-type]
