"""The data node's arguments, checked and finished before any image is read.

:class:`~resflex.data.datamodule.ResflexDataModule` calls these first, and so do the modules that
need the data node's arguments without its images: :mod:`resflex.preflight` checks a run's keys
before the source scans a folder (:func:`check_data_arguments`), :mod:`resflex.run` finishes a
finished run's source to read its class names (:func:`finish_source`), :mod:`resflex.build` reads
config nodes as plain values (:func:`to_plain`). They live apart from the data module so that the
checks read as one list, and the module itself is about loaders.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard, cast

from resflex.data.datasets import ImageSource
from resflex.data.eval_sizes import parse_eval_sizes, resolve_eval_resolutions
from resflex.data.naflex import is_token_schedule
from resflex.data.schedule import ResolutionSchedule
from resflex.data.transforms import TrainTransform
from resflex.data.workers import AUTO
from resflex.errors import ConfigError
from resflex.types import Size
from resflex.validation import check_value

#: ``data.augment`` keys applied on the device, per batch, by the LightningModule (``model.random_erasing``
#: reads them), not by the data workers
DEVICE_AUGMENT = ("random_erasing",)


def worker_augment(augment: Mapping[str, Any] | None) -> dict[str, Any]:
    """``data.augment`` for the workers' transforms: the device keys left to the LightningModule."""
    augment = to_plain(augment) or {}
    if not isinstance(augment, dict):
        raise ConfigError(f"data.augment must be a mapping, got {augment!r}")
    return {k: v for k, v in augment.items() if k not in DEVICE_AUGMENT}


def finish_source(
    source: ImageSource | Callable[..., ImageSource], root: str | None, name: str
) -> ImageSource:
    """The source itself, or a partial (the ``data.source`` node) called with ``data.root``.

    Why the root is the data module's argument and not the source's: it is the key users set
    (``data.root=DIR``), one place for every source that reads files, while ``data.source.*``
    holds what differs between sources.
    """
    if _is_built(source):
        _refuse_root(root, name, type(source))
        return source
    factory = cast("Callable[..., ImageSource]", source)  # not built: the node's partial or class
    target = getattr(factory, "func", factory)  # a partial's class
    if "root" in inspect.signature(target).parameters:
        return factory(root=root)
    _refuse_root(root, name, target)
    return factory()


def _refuse_root(root: str | None, name: str, target: Any) -> None:
    if root is not None:
        raise ConfigError(
            f"data.root is not used by data={name or getattr(target, '__name__', target)}",
            hint="data=imagefolder data.root=DIR reads a folder",
        )


def _is_built(source: ImageSource | Callable[..., ImageSource]) -> TypeGuard[ImageSource]:
    """A source object rather than its factory: an :class:`ImageSource`, or any object with the
    ``splits`` the data module reads (a user's ``_target_`` need not subclass it)."""
    return isinstance(source, ImageSource) or hasattr(source, "splits") or not callable(source)


def check_data_arguments(
    schedule: ResolutionSchedule,
    batch_size: Any,
    num_workers: Any,
    augment: Mapping[str, Any] | None,
    eval_crop_pct: Any,
    eval_resolutions: Any,
    eval_sizes_every_epoch: Any,
    eval_batch_size: Any = None,
    prefetch_factor: Any = None,
) -> list[Size]:
    """The data module's checks that need no image; returns its evaluation sizes (main first).

    Called first by :class:`ResflexDataModule` and by :mod:`resflex.preflight` before any data is
    read, so a wrong key fails in one line before the source scans a folder. The transforms are
    built here only to check ``data.augment`` (``geometry=auto`` is checked as ``square``: the
    profile has not chosen yet, and no augment key depends on the choice).
    """
    check_value("data.batch_size", batch_size, int, lambda v: v >= 1, "a positive integer")
    if num_workers != AUTO:
        check_value("data.num_workers", num_workers, int, lambda v: v >= 0, "an integer >= 0 or auto")
    # the loader keys: checked here, as the loaders would meet them only at the first evaluation (a
    # negative batch) or not at all while data.num_workers=0 (prefetch_factor)
    if eval_batch_size is not None:
        check_value(
            "data.eval_batch_size", eval_batch_size, int, lambda v: v >= 1, "a positive integer or null"
        )
    if prefetch_factor is not None:
        check_value(
            "data.prefetch_factor", prefetch_factor, int, lambda v: v >= 1, "a positive integer or null"
        )
    if not isinstance(eval_sizes_every_epoch, bool):
        raise ConfigError(
            f"eval.sizes_every_epoch must be true or false, got {eval_sizes_every_epoch!r}",
            hint="eval.sizes_every_epoch=true",
        )
    geometry = "square" if schedule.geometry == "auto" else schedule.geometry
    worker_keys = worker_augment(augment)
    TrainTransform(**worker_keys, geometry=geometry)
    for overrides in schedule.augment_phases.values():
        TrainTransform(
            **{**worker_keys, **overrides}, geometry=geometry, config_key=schedule.augment_phases_key
        )
    check_value("data.eval_crop_pct", eval_crop_pct, float, lambda v: 0 < v <= 1, "a number in (0, 1]")
    if is_token_schedule(schedule):  # resolution=naflex: sequence lengths (eval.seq_lens), not sides
        return parse_eval_sizes(schedule.eval_size, to_plain(schedule.extra_eval_sizes()))
    extra = to_plain(resolve_eval_resolutions(eval_resolutions, schedule)) or []
    return parse_eval_sizes(schedule.eval_size, extra)


def to_plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (anything else is passed on for its owner to reject)."""
    omegaconf = sys.modules.get("omegaconf")  # not imported: then no value can be one of its nodes
    if omegaconf is not None and omegaconf.OmegaConf.is_config(value):
        return omegaconf.OmegaConf.to_container(value, resolve=True)
    return value
