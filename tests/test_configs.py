"""Every config file composes (Hydra compose API), resolves, and builds what it describes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from resflex.config import CONFIG_DIR, check_group_choices, group_options
from resflex.errors import ConfigError
from resflex.models.backbone import check_model_name
from resflex.models.pooling import PoolingHead

# groups whose files are selected on the command line as `group=option`
GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "_shared"))
OPTIONS = [(g, o) for g in GROUPS for o in group_options(g)]


def compose_train(overrides: list[str], tmp_path: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.job.num = 0  # set by Hydra's launcher in a real run
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_every_group_has_options() -> None:
    for group in (
        "backbone",
        "pooling",
        "resolution",
        "data",
        "trainer",
        "logger",
        "callbacks",
        "debug",
        "paths",
    ):
        assert group_options(group), f"configs/{group}/ is empty"


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_file_composes_and_resolves(group: str, option: str, tmp_path: Path) -> None:
    overrides = [f"{group}={option}"]
    if group == "hparams_search":
        pytest.skip("sweeper configs are composed by their own tests")
    cfg = compose_train(overrides, tmp_path)
    assert cfg.hydra.runtime.choices[group] == option
    task_cfg = cfg.copy()
    with open_dict(task_cfg):
        del task_cfg["hydra"]
    container = OmegaConf.to_container(task_cfg, resolve=True)  # every interpolation resolves
    assert container["paths"]["output_dir"] == str(tmp_path)
    check_model_name(cfg.backbone.name)
    assert isinstance(instantiate(cfg.pooling), PoolingHead)
    schedule = instantiate(cfg.resolution)
    assert len(schedule.eval_size) == 2


def test_overrides_reach_the_objects(tmp_path: Path) -> None:
    cfg = compose_train(
        ["pooling=pyramid", "pooling.levels=[1,3]", "resolution.size=[48,80]", "optimizer.lr=0.01"], tmp_path
    )
    head = instantiate(cfg.pooling)
    assert head.setup(10) == 10 + 128 * 9  # the global average + the projected 3x3 level
    assert instantiate(cfg.resolution).size_at(0, 0) == (48, 80)
    assert instantiate(cfg.optimizer).lr == 0.01


def test_debug_preset_limits_the_run(tmp_path: Path) -> None:
    cfg = compose_train(["debug=fast"], tmp_path)
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches == 4 and cfg.data.num_workers == 0


def test_unknown_group_choice_is_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        check_group_choices(["pooling=median"])
    assert (
        str(info.value)
        == "unknown pooling 'median' (pooling=median) (hint: choose one of: "
        + ", ".join(group_options("pooling"))
        + ")"
    )
    with pytest.raises(ConfigError, match="unknown backbone 'resnet_99'"):
        check_group_choices(["-m", "backbone=resnet18,resnet_99"])
    check_group_choices(["pooling=avg,max,pyramid", "backbone.name=anything", "hydra.run.dir=x", "+extra=1"])


# Config files whose values must equal the Python defaults of the class they build: one source of
# truth for "the default" (code that builds objects without Hydra, like the benchmark, gets the same).
# Variant files (optimizer/sgd, finetune/gradual, ...) differ from the defaults on purpose.
DEFAULT_FILES = [
    "resolution/fixed.yaml",
    "resolution/progressive.yaml",
    "resolution/random.yaml",
    "resolution/multigrid.yaml",
    "resolution/fixres.yaml",
    "resolution/naflex.yaml",
    "data/synthetic.yaml:source",
    "optimizer/adamw.yaml",
    "scheduler/cosine.yaml",
    "finetune/full.yaml",
    *[f"pooling/{o}.yaml" for o in group_options("pooling")],
]


@pytest.mark.parametrize("spec", DEFAULT_FILES)
def test_yaml_values_equal_the_python_defaults(spec: str, tmp_path: Path) -> None:
    """Built from the file and built from the class's defaults alone, the objects are the same."""
    file, _, node_key = spec.partition(":")
    group, option = file.removesuffix(".yaml").split("/")
    cfg = compose_train([f"{group}={option}"], tmp_path)
    node = cfg[group][node_key] if node_key else cfg[group]
    # keys that point elsewhere (seed: ${seed}) are the run's, not defaults: give both the same
    linked = {k: node[k] for k in node if not k.startswith("_") and OmegaConf.is_interpolation(node, k)}
    from_file = instantiate(node)
    from_defaults = instantiate({"_target_": node._target_, "_convert_": "all", **linked})
    assert _state(from_file) == _state(from_defaults), f"{file} disagrees with {node._target_}'s defaults"


def _state(obj: object, depth: int = 0) -> object:
    """Comparable content of an object: modules by their repr, containers and attributes recursively."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return repr(obj)
    if hasattr(obj, "tolist"):  # numpy arrays, tensors
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: _state(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_state(v, depth + 1) for v in obj]
    if hasattr(obj, "__dict__") and depth < 4 and not isinstance(obj, type):
        return {k: _state(v, depth + 1) for k, v in vars(obj).items()}
    return obj


def test_model_yaml_is_the_module_signature(tmp_path: Path) -> None:
    """configs/model/classifier.yaml: every key is one argument of ClassificationModule (net: of
    ImageClassifier), and each plain value equals that argument's default."""
    import inspect

    from resflex.models.classifier import ImageClassifier
    from resflex.training.module import ClassificationModule

    node = compose_train([], tmp_path).model
    for cls, keys in ((ClassificationModule, node), (ImageClassifier, node.net)):
        params = inspect.signature(cls.__init__).parameters
        for key in keys:
            if key.startswith("_"):
                continue
            assert key in params, f"model yaml key {key!r} is not an argument of {cls.__name__}"
            if OmegaConf.is_interpolation(keys, key) or OmegaConf.is_missing(keys, key):
                continue  # another group's node, the run's seed, or the data's class count
            default = params[key].default
            if default is not inspect.Parameter.empty:
                assert keys[key] == default, (
                    f"{cls.__name__}({key}=...): yaml {keys[key]!r}, code {default!r}"
                )


def test_data_yaml_is_the_data_module_signature(tmp_path: Path) -> None:
    """configs/data/*.yaml: every key is one argument of ResflexDataModule; the data module finishes a
    partial source with data.root, and a source that reads no files refuses one in a line."""
    import inspect

    from resflex.build import build_datamodule
    from resflex.data.datamodule import ResflexDataModule

    params = inspect.signature(ResflexDataModule.__init__).parameters
    for option in group_options("data"):
        node = compose_train([f"data={option}"], tmp_path).data
        assert node._target_.endswith("ResflexDataModule")
        unknown = [k for k in node if not k.startswith("_") and k not in params]
        assert not unknown, f"data/{option}.yaml keys that are not arguments: {unknown}"
    cfg = compose_train(["backbone.name=test_resnet", "data.root=/somewhere"], tmp_path)
    with pytest.raises(ConfigError, match="^data.root is not used by data=synthetic"):
        build_datamodule(cfg)


def test_shared_data_keys_are_the_data_module_defaults() -> None:
    """configs/_shared/data.yaml: what every data group shares, each plain value the ResflexDataModule
    default (augment: keys of TrainTransform, or applied on the device), every group built on it."""
    import inspect

    from resflex.data.arguments import DEVICE_AUGMENT
    from resflex.data.datamodule import ResflexDataModule
    from resflex.data.transforms import TrainTransform

    shared = OmegaConf.load(CONFIG_DIR / "_shared" / "data.yaml")
    params = inspect.signature(ResflexDataModule.__init__).parameters
    for key in shared:
        if key.startswith("_") or key == "augment" or OmegaConf.is_interpolation(shared, key):
            continue
        assert shared[key] == params[key].default, f"_shared/data.yaml {key}: {shared[key]!r}, code default"
    transform_keys = set(inspect.signature(TrainTransform.__init__).parameters) | set(DEVICE_AUGMENT)
    assert set(shared.augment) <= transform_keys, set(shared.augment) - transform_keys
    for option in group_options("data"):
        text = (CONFIG_DIR / "data" / f"{option}.yaml").read_text()
        assert "/_shared/data@_here_" in text, f"data/{option}.yaml does not build on _shared/data.yaml"


def test_trainer_yaml_states_only_what_resflex_changes() -> None:
    """configs/trainer/default.yaml: each key differs from Lightning's default (trainer/lightning is
    Lightning's signature); the group is a _target_ node like every other."""
    import inspect

    import pytorch_lightning as pl

    params = inspect.signature(pl.Trainer.__init__).parameters
    own = OmegaConf.load(CONFIG_DIR / "trainer" / "default.yaml")
    assert list(own.defaults) == ["lightning", "_self_"]
    for key in own:
        if key == "defaults":
            continue
        assert key in params, f"trainer/default.yaml {key!r} is not a pytorch_lightning.Trainer argument"
        if not OmegaConf.is_interpolation(own, key):  # default_root_dir: the run folder
            assert own[key] != params[key].default, f"trainer/default.yaml restates Lightning's {key}"


def test_the_default_trainer_is_the_one_before_the_reorganisation(tmp_path: Path) -> None:
    """The trainer built from the composed default config has the settings the full trainer yaml gave
    (issue 29: only the layout of the configs changed)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from resflex.build import build_trainer

    cfg = compose_train([f"paths.output_dir={tmp_path}"], tmp_path)
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    trainer = build_trainer(cfg)
    expected = {
        "max_epochs": 6,
        "min_epochs": None,
        "max_steps": -1,
        "log_every_n_steps": 10,
        "num_sanity_val_steps": 2,
        "check_val_every_n_epoch": 1,
        "accumulate_grad_batches": 1,
        "num_devices": 1,
        "num_nodes": 1,
        "precision": "32-true",  # precision=auto on a machine without a GPU
        "default_root_dir": str(tmp_path),
        "fast_dev_run": False,
        "overfit_batches": 0.0,
        "gradient_clip_val": None,
    }
    assert {key: getattr(trainer, key) for key in expected} == expected
    assert trainer.progress_bar_callback is not None and trainer.checkpoint_callback is not None
    # Lightning's module table is off (issue 27: resflex logs the parameter count once itself)
    assert not any("ModelSummary" in type(c).__name__ for c in trainer.callbacks)
    assert len([c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]) == 2
    assert type(trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"
    # set to false, not inherited (null) from an earlier job of a sweep
    assert cfg.trainer.deterministic is False and cfg.trainer.benchmark is False


def readme_config_groups() -> dict[str, tuple[set[str], set[str]]]:
    """The README's "Config groups" table: group -> (its options, the bold one)."""
    import re

    readme = (CONFIG_DIR.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Config groups", 1)[1].split("\n## ", 1)[0]
    table: dict[str, tuple[set[str], set[str]]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            options = set(re.findall(r"`([\w]+)`", cells[1]))
            table[cells[0].strip("`")] = (options, set(re.findall(r"\*\*`(\w+)`\*\*", cells[1])))
    return table


def test_the_readme_lists_every_group_with_its_options_and_default() -> None:
    """A config file added or removed, or a default changed, shows in the README's table of groups."""
    table = readme_config_groups()
    assert set(table) == set(GROUPS)
    listed = OmegaConf.load(CONFIG_DIR / "train.yaml").defaults
    chosen = [item for item in listed if isinstance(item, DictConfig)]
    defaults = {key: value for item in chosen for key, value in item.items()}
    for group, (options, bold) in table.items():
        assert options == set(group_options(group)), group
        assert bold == ({defaults[group]} if defaults.get(group) else set()), group


def test_every_option_file_starts_by_saying_what_it_does() -> None:
    """The README: every choice is a file whose first lines say what it does (trainer/cpu and gpu
    started with their defaults list)."""
    files = sorted(p for p in CONFIG_DIR.glob("*/**/*.yaml"))
    assert len(files) > 40
    silent = [str(p.relative_to(CONFIG_DIR)) for p in files if not p.read_text().startswith("#")]
    assert not silent, silent
