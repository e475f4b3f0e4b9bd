"""Run folders written before the ``data`` and ``model`` nodes had a ``_target_`` (flat ``model.*`` keys,
``data.loader.*``, a whole ``data.source``) still rebuild: their checkpoints evaluate, predict and export.

The fixture is the ``.hydra/config.yaml`` of a real run of that layout (commit 102e0a0, the variable-size
study), its data root blanked.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from resflex.build import build_datamodule, build_module
from resflex.inference import load_classifier
from tests.conftest import make_image_folder
from tests.test_configs import _state, compose_train

FIXTURE = Path(__file__).parent / "fixtures" / "run_config_flat_model_and_data.yaml"


def _old_run_config(root: Path, out: Path) -> DictConfig:
    cfg = OmegaConf.load(FIXTURE)
    assert isinstance(cfg, DictConfig) and "_target_" not in cfg.model and "_target_" not in cfg.data
    cfg.data.root = str(root)
    cfg.paths.output_dir = str(out)
    cfg.backbone.name = "test_resnet"
    cfg.data.num_workers = 0
    return cfg


def test_an_old_run_config_builds_the_same_objects_as_today(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images", per_class=4, splits=("train", "val"))
    old = _old_run_config(root, tmp_path / "old")
    new = compose_train(
        [
            "data=imagefolder",
            f"data.root={root}",
            "backbone.name=test_resnet",
            "data.num_workers=0",
            "seed=0",
        ],
        tmp_path / "new",
    )
    for key in ("resolution", "optimizer", "scheduler", "pooling"):
        new[key] = old[key]  # the same choices as the old run
    old_data, new_data = build_datamodule(old), build_datamodule(new)
    assert old_data.classes == new_data.classes and old_data.eval_sizes == new_data.eval_sizes
    assert (old_data.batch_size, old_data.eval_batch_size) == (new_data.batch_size, new_data.eval_batch_size)
    assert _state(old_data.train_transform) == _state(new_data.train_transform)
    old_module, new_module = build_module(old, 3), build_module(new, 3)
    assert old_module.state_dict().keys() == new_module.state_dict().keys()  # old checkpoints load
    assert old_module.hparams == new_module.hparams


def test_an_old_run_folder_still_loads_for_prediction(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images", per_class=4, splits=("train", "val"))
    run = tmp_path / "run"
    old = _old_run_config(root, run)
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(old, run / ".hydra" / "config.yaml")
    module = build_module(old, 3)
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               run / "checkpoints" / "last.ckpt")  # fmt: skip
    loaded = load_classifier(run)
    assert loaded.classes == ["cats", "dogs", "owls"]
    x = torch.rand(2, 3, 40, 56)
    module.eval()
    with torch.no_grad():
        assert torch.allclose(
            loaded(x), module.model(module.normalize((x * 255).round().to(torch.uint8))), atol=1e-4
        )
