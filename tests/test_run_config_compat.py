"""Run folders of every old config layout open in today's layout (:mod:`resflex.migrations`, applied once
by :func:`resflex.run.read_config`): their checkpoints evaluate, predict and export through today's
builders, and a config of today's layout passes the door untouched.

Layouts (oldest first), each with its own fixture:

- ``run_config_torch_optimizer.yaml``: hand-written from the configs of commit 8f25a6a^ — the optimizer
  a torch class as a partial, the scheduler a name without ``_target_``, flat model and data.
- ``run_config_flat_model_and_data.yaml``: the ``.hydra/config.yaml`` of a real run of the layout before
  commit 7f3742e (commit 102e0a0, the variable-size study), its data root blanked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from resflex.build import build_datamodule, build_module
from resflex.inference import load_classifier
from resflex.migrations import migrate
from resflex.model_card import build_model_card
from resflex.run import read_config
from resflex.training.lr_schedule import WarmupCosine
from tests.conftest import make_image_folder
from tests.test_configs import _state, compose_train

FIXTURES = Path(__file__).parent / "fixtures"
FLAT = FIXTURES / "run_config_flat_model_and_data.yaml"
TORCH_OPTIMIZER = FIXTURES / "run_config_torch_optimizer.yaml"


def _save_run(raw: DictConfig, run: Path) -> Path:
    """A run folder holding ``raw`` as Hydra saved it (``.hydra/config.yaml``)."""
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(raw, run / ".hydra" / "config.yaml")
    return run / ".hydra" / "config.yaml"


def _flat_run(root: Path, run: Path) -> Path:
    raw = OmegaConf.load(FLAT)
    assert isinstance(raw, DictConfig) and "_target_" not in raw.model and "_target_" not in raw.data
    raw.data.root = str(root)
    raw.backbone.name = "test_resnet"
    raw.data.num_workers = 0
    return _save_run(raw, run)


def _with_checkpoint(cfg: DictConfig, run: Path, num_classes: int) -> torch.nn.Module:
    """A checkpoint of the module ``cfg`` builds, in ``run/checkpoints/last.ckpt``; the module."""
    module = build_module(cfg, num_classes)
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               run / "checkpoints" / "last.ckpt")  # fmt: skip
    return module.eval()


def _same_outputs(loaded: torch.nn.Module, module: torch.nn.Module) -> bool:
    """The loaded classifier and the module that wrote the checkpoint agree on the same uint8 pixels."""
    x = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8)
    with torch.no_grad():
        return torch.allclose(loaded(x), module.model(module.normalize(x)), atol=1e-5)


def test_a_flat_model_and_data_config_builds_the_same_objects_as_today(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images", per_class=4, splits=("train", "val"))
    old = read_config(_flat_run(root, tmp_path / "old"))
    assert "_target_" in old.model and "_target_" in old.data and migrate(old) == []  # migrated once
    new = compose_train(  # seed 0, as the old run
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
    assert old_data.source.decoder == new_data.source.decoder  # ${data.decoder} moved into the source
    old_module, new_module = build_module(old, 3), build_module(new, 3)
    assert old_module.state_dict().keys() == new_module.state_dict().keys()  # old checkpoints load
    assert old_module.hparams == new_module.hparams


def test_an_old_flat_run_folder_still_loads_for_prediction(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images", per_class=4, splits=("train", "val"))
    run = tmp_path / "run"
    module = _with_checkpoint(read_config(_flat_run(root, run)), run, 3)
    loaded = load_classifier(run)
    assert loaded.classes == ["cats", "dogs", "owls"]  # from data.root, once data.source.root
    assert _same_outputs(loaded, module)


def test_a_torch_optimizer_config_is_migrated_to_the_factory_and_loads(tmp_path: Path) -> None:
    run = tmp_path / "run"
    raw = OmegaConf.load(TORCH_OPTIMIZER)
    assert isinstance(raw, DictConfig)
    cfg = read_config(_save_run(raw, run))
    datamodule = build_datamodule(cfg)
    assert (datamodule.batch_size, datamodule.eval_batch_size, datamodule.seed) == (8, 16, 3)
    assert datamodule.num_classes == 10 and datamodule.eval_sizes == [(32, 32)]
    module = _with_checkpoint(cfg, run, datamodule.num_classes)
    factory = module.optimizer_factory
    assert (factory.name, factory.lr, factory.weight_decay) == ("sgd", 0.1, 0.0001)
    assert factory.options == {"momentum": 0.9}  # nesterov dropped: timm's sgd is Nesterov momentum
    schedule = module.lr_schedule
    assert isinstance(schedule, WarmupCosine)  # the run's warm-up and floor, not the defaults
    assert (schedule.warmup_epochs, schedule.min_lr_ratio) == (2.0, 0.05)
    assert module.label_smoothing == 0.05 and module.model.dropout.p == 0.1
    assert not module.hparams["ema"] and module.hparams["mixup"] == 0.0  # switches that came later: off
    loaded = load_classifier(run)
    assert loaded.eval_size == (32, 32) and loaded.num_classes == 10
    assert _same_outputs(loaded, module)
    card = build_model_card(run)
    assert "optimizer sgd lr=0.1" in card and "then cosine" in card and "dropout 0.1" in card


@pytest.mark.parametrize(
    "overrides", [[], ["data=imagefolder", "data.root=/nowhere", "model.ema=true", "optimizer=sgd"]]
)
def test_a_config_of_todays_layout_passes_the_door_untouched(tmp_path: Path, overrides: list[str]) -> None:
    cfg = compose_train(overrides, tmp_path)
    saved = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    before = OmegaConf.to_container(saved, resolve=False)
    OmegaConf.set_struct(saved, False)
    assert migrate(saved) == []
    assert OmegaConf.to_container(saved, resolve=False) == before


def test_migrate_rewrites_each_node_of_the_flat_layout_exactly() -> None:
    """Layout 2 by hand, the parts the real fixture does not have: a source with a root of its own and
    ``${data.download}``-style references, loader keys, a model without the later switches."""
    old = OmegaConf.create(
        {
            "seed": 1,
            "model": {"dropout": 0.2, "label_smoothing": 0.0, "channels_last": False},
            "backbone": {"name": "test_resnet"},
            "pooling": {"_target_": "resflex.models.pooling.AvgPool"},
            "optimizer": {"_target_": "resflex.training.optim.OptimizerFactory", "name": "adamw", "lr": 0.01},
            "scheduler": {"_target_": "resflex.training.lr_schedule.WarmupCosine"},
            "data": {
                "name": "fashion_mnist",
                "root": "/ignored",
                "download": True,
                "batch_size": 16,
                "num_workers": 0,
                "source": {
                    "_target_": "resflex.data.fashion_mnist.FashionMNISTSource",
                    "root": "/datasets/fmnist",
                    "download": "${data.download}",
                    "seed": "${seed}",
                },
                "eval_crop_pct": 0.9,
                "loader": {"eval_batch_size": 64, "pin_memory": False, "prefetch_factor": 4},
            },
        }
    )
    OmegaConf.set_struct(old, False)
    assert migrate(old) == ["data: flat keys, data.loader.*, a whole source", "model: flat keys, no _target_"]
    assert OmegaConf.to_container(old.data) == {
        "_target_": "resflex.data.datamodule.ResflexDataModule",
        "name": "fashion_mnist",
        "batch_size": 16,
        "num_workers": 0,
        "eval_crop_pct": 0.9,
        "root": "/datasets/fmnist",  # the source's own root: what the run read
        "source": {
            "_target_": "resflex.data.fashion_mnist.FashionMNISTSource",
            "download": True,
            "seed": "${seed}",
            "_partial_": True,
        },
        "eval_batch_size": 64,
        "pin_memory": False,
        "prefetch_factor": 4,
        "schedule": "${resolution}",
        "eval_resolutions": "${oc.select:eval.resolutions,null}",
        "seed": "${seed}",
    }
    assert OmegaConf.to_container(old.model) == {
        "_target_": "resflex.training.module.ClassificationModule",
        "net": {
            "_target_": "resflex.models.classifier.ImageClassifier",
            "backbone": "${backbone}",
            "pooling": "${pooling}",
            "num_classes": "???",
            "dropout": 0.2,
        },
        "optimizer": "${optimizer}",
        "lr_schedule": "${scheduler}",
        "finetune": None,  # a run from before fine-tuning strategies: full
        "label_smoothing": 0.0,
        "channels_last": False,
        "random_erasing": "${oc.select:data.augment.random_erasing,0.0}",
        "seed": "${oc.select:seed,0}",
    }
    assert migrate(old) == []


def test_migrate_rewrites_a_torch_optimizer_and_a_named_scheduler_exactly() -> None:
    old = OmegaConf.create(
        {
            "optimizer": {
                "_target_": "torch.optim.AdamW",
                "_partial_": True,
                "lr": 0.002,
                "weight_decay": 0.05,
                "scale_lr_with_world_size": False,
            },
            "scheduler": {"name": "cosine", "warmup_epochs": 3.0, "min_lr_ratio": 0.01},
        }
    )
    OmegaConf.set_struct(old, False)
    assert len(migrate(old)) == 2
    assert OmegaConf.to_container(old) == {
        "optimizer": {
            "_target_": "resflex.training.optim.OptimizerFactory",
            "name": "adamw",
            "lr": 0.002,
            "weight_decay": 0.05,
            "scale_lr_with_world_size": False,
        },
        "scheduler": {
            "_target_": "resflex.training.lr_schedule.WarmupCosine",
            "warmup_epochs": 3.0,
            "min_lr_ratio": 0.01,
        },
    }
