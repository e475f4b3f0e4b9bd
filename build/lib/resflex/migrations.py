"""Old run-config layouts, rewritten to today's layout once, when a run folder is opened.

Why here and not in the builders: a run folder keeps the ``.hydra/config.yaml`` of the
resflex that trained it, and its checkpoint must still evaluate, predict and export after
the config layout moves on. If the builders knew every old layout, each one would carry
its own copy of the model's defaults and every reader would grow fallbacks. Instead
:func:`resflex.run.read_config` calls :func:`migrate` once, at the door, and everything
after it (``build.build_datamodule``/``build_module``, the model card, the class names)
sees today's layout only.

Each :class:`Migration` names the layout it rewrites, says how to recognise it and
rewrites it in place; keys the old layout did not have are left out, so the constructors'
own defaults apply (what those runs trained with: the switches did not exist then). The
layouts, oldest first:

1. ``optimizer`` a torch class as a partial (``_target_: torch.optim.AdamW``) and
   ``scheduler`` without a ``_target_`` (``name: cosine``): runs before commit 8f25a6a.
2. flat ``model.*`` keys and a ``data`` node without a ``_target_`` (``data.loader.*``, a
   whole ``data.source``, ``data.decoder``/``on_bad_image``/``download`` beside it): runs
   before commit 7f3742e.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("resflex")

OPTIMIZER_FACTORY = "resflex.training.optim.OptimizerFactory"
WARMUP_COSINE = "resflex.training.lr_schedule.WarmupCosine"
DATA_MODULE = "resflex.data.datamodule.ResflexDataModule"
CLASSIFICATION_MODULE = "resflex.training.module.ClassificationModule"
IMAGE_CLASSIFIER = "resflex.models.classifier.ImageClassifier"

#: the flat ``model.*`` keys of layout 2, each an argument of ``ClassificationModule`` today
#: (``dropout`` went to ``model.net``)
FLAT_MODEL_KEYS = (
    "label_smoothing",
    "channels_last",
    "compile",
    "compile_mode",
    "compile_dynamic",
    "mixup",
    "cutmix",
    "mix_prob",
    "mix_switch_prob",
    "ema",
    "ema_decay",
    "ema_warmup",
)
#: the ``data.*`` keys of layout 2 that are ``ResflexDataModule`` arguments as they are
DATA_KEYS = ("name", "batch_size", "num_workers", "augment", "eval_crop_pct")
#: ``data.loader.*`` of layout 2, flattened into the data node today
LOADER_KEYS = ("eval_batch_size", "pin_memory", "persistent_workers", "prefetch_factor")


@dataclass(frozen=True)
class Migration:
    """One old layout: ``applies(cfg)`` recognises it, ``rewrite(cfg)`` turns it into today's (in place)."""

    name: str
    applies: Callable[[DictConfig], bool]
    rewrite: Callable[[DictConfig], None]


def _target(node: Any) -> str:
    return str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""


# ---- layout 1: a torch optimizer partial, a scheduler without _target_ ----------------------------


def _torch_optimizer(cfg: DictConfig) -> bool:
    return _target(cfg.get("optimizer")).startswith("torch.optim.")


def _to_optimizer_factory(cfg: DictConfig) -> None:
    """``torch.optim.SGD`` partial -> the factory with the timm name of that class (``sgd``); ``nesterov``
    is dropped (timm's ``sgd`` is Nesterov momentum)."""
    old = OmegaConf.to_container(cfg.optimizer, resolve=False)
    assert isinstance(old, dict)
    name = str(old["_target_"]).rsplit(".", 1)[-1].lower()
    kept = {k: v for k, v in old.items() if not str(k).startswith("_") and k != "nesterov"}
    cfg.optimizer = {"_target_": OPTIMIZER_FACTORY, "name": name, **kept}


def _named_scheduler(cfg: DictConfig) -> bool:
    scheduler = cfg.get("scheduler")
    return isinstance(scheduler, DictConfig) and "_target_" not in scheduler


def _to_warmup_cosine(cfg: DictConfig) -> None:
    """``name: cosine`` (the only schedule then) with its warm-up and floor -> ``WarmupCosine``."""
    old = OmegaConf.to_container(cfg.scheduler, resolve=False)
    assert isinstance(old, dict)
    if str(old.pop("name", "cosine")) != "cosine":
        log.warning("scheduler.name=%s of an old run config is read as cosine", cfg.scheduler.name)
    kept = {k: v for k, v in old.items() if not str(k).startswith("_")}
    cfg.scheduler = {"_target_": WARMUP_COSINE, **kept}


# ---- layout 2: flat model and data nodes ---------------------------------------------------------


def _flat_data(cfg: DictConfig) -> bool:
    return isinstance(cfg.get("data"), DictConfig) and "_target_" not in cfg.data


_DATA_REF = re.compile(r"^\$\{data\.(\w+)\}$")


def _to_data_module(cfg: DictConfig) -> None:
    """The data node as the ``ResflexDataModule`` it was built into: the source a partial finished with
    ``data.root``, the loader keys flat, ``${data.decoder}``-style references into the source."""
    old = OmegaConf.to_container(cfg.data, resolve=False)
    assert isinstance(old, dict)
    source = dict(old.get("source") or {})
    for key, value in list(source.items()):  # data.decoder, data.on_bad_image, data.download: the source's
        match = _DATA_REF.match(str(value))
        if match and match.group(1) != "root":
            source[key] = old.get(match.group(1))
    root = source.pop("root", None)  # the source got its root from ${data.root} (or a path of its own)
    if root is not None and _DATA_REF.match(str(root)):
        root = old.get("root")
    data: dict[str, Any] = {"_target_": DATA_MODULE, **{k: old[k] for k in DATA_KEYS if k in old}}
    data["root"] = root
    data["source"] = {**source, "_partial_": True}
    loader = old.get("loader") or {}
    data.update({k: loader[k] for k in LOADER_KEYS if k in loader})
    data["schedule"] = "${resolution}"
    data["eval_resolutions"] = "${oc.select:eval.resolutions,null}"
    data["seed"] = "${seed}"
    cfg.data = data


def _flat_model(cfg: DictConfig) -> bool:
    return isinstance(cfg.get("model"), DictConfig) and "_target_" not in cfg.model


def _to_classification_module(cfg: DictConfig) -> None:
    """The flat ``model.*`` keys as the ``ClassificationModule`` node, nesting backbone and pooling in
    ``net`` and pointing at the optimizer, scheduler and finetune groups, as ``configs/model/`` does."""
    old = OmegaConf.to_container(cfg.model, resolve=False)
    assert isinstance(old, dict)
    net: dict[str, Any] = {
        "_target_": IMAGE_CLASSIFIER,
        "backbone": "${backbone}",
        "pooling": "${pooling}",
        "num_classes": "???",
    }
    if "dropout" in old:
        net["dropout"] = old["dropout"]
    model: dict[str, Any] = {"_target_": CLASSIFICATION_MODULE, "net": net, "optimizer": "${optimizer}"}
    model["lr_schedule"] = "${scheduler}" if cfg.get("scheduler") is not None else None
    model["finetune"] = "${finetune}" if cfg.get("finetune") is not None else None
    model.update({k: old[k] for k in FLAT_MODEL_KEYS if k in old})
    model["random_erasing"] = "${oc.select:data.augment.random_erasing,0.0}"
    model["seed"] = "${oc.select:seed,0}"
    cfg.model = model


#: every known old layout, oldest first (a run of layout 1 is also of layout 2)
MIGRATIONS = (
    Migration("optimizer: a torch.optim class as a partial", _torch_optimizer, _to_optimizer_factory),
    Migration("scheduler: a name without _target_", _named_scheduler, _to_warmup_cosine),
    Migration("data: flat keys, data.loader.*, a whole source", _flat_data, _to_data_module),
    Migration("model: flat keys, no _target_", _flat_model, _to_classification_module),
)


def migrate(cfg: DictConfig) -> list[str]:
    """Rewrite ``cfg`` (a run's saved config, struct off) to today's layout in place; returns the names
    of the migrations applied (``[]`` for a config of today's layout)."""
    applied = []
    for migration in MIGRATIONS:
        if migration.applies(cfg):
            migration.rewrite(cfg)
            applied.append(migration.name)
    if applied:
        log.debug("run config migrated from an old layout: %s", "; ".join(applied))
    return applied
