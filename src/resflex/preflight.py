"""Every config key and path checked before any data is read: :func:`check_before_work`.

The objects of a run validate their own arguments when they are built, but a run
builds its data module before its model (the model needs the class count), and the
data module's source scans and profiles the images (seconds on a real folder, a dozen
console lines) first; a typo in ``pooling.levels`` or ``ckpt_path`` would fail only
after that. So :func:`resflex.train.train` first builds, or checks, each part the way
the run will, without touching the data:

- the plain keys no class owns (:func:`resflex.validation.validate_config`);
- ``ckpt_path``, resolved once (the run resumes from what this returns);
- the data node: the source's keys and root (``check_source``: a folder's decoder, bad-image
  policy and folder, no image listed; Fashion-MNIST's four files, none read), the
  resolution schedule, and the data module's other arguments
  (:func:`resflex.data.arguments.check_data_arguments`);
- the model node (backbone, pooling, optimizer, LR schedule, fine-tuning, the module's
  keys), built on the ``meta`` device: no memory, no random draw, no weights read
  (``backbone.weights`` / ``init_from`` must exist; they are loaded once, by the run);
- the training and evaluation sizes against that backbone (with ``eval.resolutions=auto``
  the main size only: the run drops the other sizes the backbone cannot take), and the largest
  batch of each against the memory of the device (:mod:`resflex.models.batch_memory`).

The trainer's keys are Lightning's to check: :func:`resflex.train.train` builds the
trainer before the data module.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from resflex.build import build_node, check_source_decoder
from resflex.data.arguments import check_data_arguments
from resflex.data.datamodule import ResflexDataModule
from resflex.data.eval_sizes import is_auto
from resflex.data.naflex import is_token_schedule
from resflex.models.batch_memory import check_batch_fits, device_memory, element_bytes
from resflex.models.checkpoint import existing_file, resflex_checkpoint
from resflex.models.naflex import check_naflex_config
from resflex.run_folder import resolve_checkpoint_path, resolve_resume_checkpoint
from resflex.runtime import resolve_precision
from resflex.types import Size
from resflex.validation import validate_config


def check_before_work(cfg: DictConfig) -> str | None:
    """Raise the first one-line :class:`~resflex.errors.ResflexError` of ``cfg``; return the resolved
    ``ckpt_path`` (None: start from scratch)."""
    validate_config(cfg)
    check_naflex_config(cfg)  # resolution=naflex with its backbone, patch size, budget
    init_from = OmegaConf.select(cfg, "backbone.init_from")
    if init_from:  # a run folder stands for its best checkpoint (else last.ckpt): the file, from here on
        cfg.backbone.init_from = str(resolve_checkpoint_path(init_from, "backbone.init_from"))
    ckpt_path = resolve_resume_checkpoint(cfg.get("ckpt_path"), cfg.paths.output_dir)
    schedule, eval_sizes = check_data_node(cfg.data)
    module = meta_model(cfg.model)
    backbone = module.model.backbone
    largest = max(max(size) for size in [*schedule.train_sizes(), *eval_sizes])
    for size in schedule.train_sizes():
        backbone.check_input_size(size, "resolution.size", largest)
    # eval.resolutions=auto drops the sizes the backbone cannot take (the run says which); the main
    # size and sizes asked for by name must fit
    for size in eval_sizes[:1] if is_auto(OmegaConf.select(cfg, "eval.resolutions")) else eval_sizes:
        backbone.check_input_size(size, "eval.resolutions", largest)
    if not is_token_schedule(schedule):
        check_batches_fit(cfg, module.model, schedule.train_sizes(), eval_sizes)
    return ckpt_path


def check_batches_fit(cfg: DictConfig, model: Any, train_sizes: list[Size], eval_sizes: list[Size]) -> None:
    """The largest training batch and the largest evaluation batch against the memory the run computes in
    (:mod:`resflex.models.batch_memory`: a lower bound, so only a batch that cannot fit is refused)."""
    memory = device_memory(str(OmegaConf.select(cfg, "trainer.accelerator", default="auto")))
    precision = OmegaConf.select(cfg, "trainer.precision", default="auto")
    bytes_each = element_bytes(resolve_precision(precision, key="trainer.precision"))
    batch = int(cfg.data.batch_size)
    eval_batch = int(OmegaConf.select(cfg, "data.eval_batch_size", default=None) or batch)
    for sizes, key, count, count_key, training in (
        (train_sizes, "resolution.size", batch, "data.batch_size", True),
        (eval_sizes, "eval.resolutions", eval_batch, "data.eval_batch_size", False),
    ):
        if sizes:
            size = max(sizes, key=lambda s: s[0] * s[1])
            check_batch_fits(model, size, count, key, count_key, memory, bytes_each, training)


def check_data_node(data: DictConfig) -> tuple[Any, list[tuple[int, int]]]:
    """The ``data`` node's keys, without building its source: returns the schedule and the eval sizes."""
    check_source_decoder(data)
    source = data.get("source")
    if isinstance(source, DictConfig) and "_target_" in source:
        check_source = getattr(get_class(str(source["_target_"])), "check_source", None)
        if check_source is not None:  # a source that reads files: its keys, and its root's folder or files
            args = OmegaConf.to_container(source, resolve=True)
            assert isinstance(args, dict)
            check_source(OmegaConf.select(data, "root"), args)
    schedule = build_node(data.schedule)
    defaults = inspect.signature(ResflexDataModule.__init__).parameters
    args = OmegaConf.to_container(data, resolve=True)
    assert isinstance(args, dict)

    def arg(key: str) -> Any:
        return args.get(key, defaults[key].default)

    eval_sizes = check_data_arguments(
        schedule,
        arg("batch_size"),
        arg("num_workers"),
        arg("augment"),
        arg("eval_crop_pct"),
        arg("eval_resolutions"),
        arg("eval_sizes_every_epoch"),
        eval_batch_size=arg("eval_batch_size"),
        prefetch_factor=arg("prefetch_factor"),
    )
    return schedule, eval_sizes


def meta_model(model: DictConfig) -> Any:
    """The ``model`` node built on the ``meta`` device (shapes only), with no pretrained weights.

    Every constructor runs, so each key is checked by its owner; the weights files only have to
    exist (both set at once is the backbone's error, raised before it would read either).
    """
    backbone = model.net.backbone
    fill: dict[str, Any] = {"net.num_classes": 2, "net.backbone.pretrained": False}
    weights, init_from = backbone.get("weights"), backbone.get("init_from")
    if not (weights and init_from):
        for key, value in (("weights", weights), ("init_from", init_from)):
            if value and key == "init_from":  # a resflex checkpoint (a run folder became its file above)
                resflex_checkpoint(value, "backbone.init_from")
            elif value:
                existing_file(value, f"backbone.{key}")
            fill[f"net.backbone.{key}"] = None
        if "init_head" in backbone:  # it reads init_from's run, left out here
            fill["net.backbone.init_head"] = False
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build_node(model, **fill)
