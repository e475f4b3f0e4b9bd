"""After fit: BatchNorm statistics re-estimated at every evaluation size, stored in the checkpoints.

Why (measured in ``experiments/robustness/``): a CNN's BatchNorm running statistics
describe the sizes it was trained at; at another size it normalises deep features
with the wrong numbers, which is a large part of why a model trained at 64 px
collapses at 32 or 128 px. Re-estimating the statistics at each evaluation size from
a few hundred unlabelled *training* images (weights untouched) recovers much of that
(FixRes, Touvron et al. 2019; the calibration of RS-Nets, Wang et al. 2020).

``eval.bn_calibration=true`` (the default) does it once, after fit, for the best and
the last checkpoint (a fixed schedule's one training size keeps the statistics it was
trained with): each file gets a table of per-size statistics beside its weights
(:data:`~resflex.models.bn_calibration.BN_STATS_KEY`); its weights and their BatchNorm
buffers stay as trained. The test, ``scripts/eval.py``, ``load_classifier`` and
``predict`` then normalise each input with the statistics of the nearest calibrated
size (:class:`~resflex.models.bn_calibration.TrackedSizeStats`), and so does an export
(:mod:`resflex.models.bn_export`: the table in the graph, the row chosen by the input's size).
Cost: ``eval.bn_calibration_batches`` forward passes per evaluation size and checkpoint, no
backward pass.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device

from resflex.data.naflex import is_token_schedule
from resflex.models.bn_calibration import BN_STATS_KEY, calibrate_sizes, has_batchnorm, read_stats, side_of
from resflex.models.checkpoint import safe_load
from resflex.types import as_size
from resflex.validation import check_value

log = logging.getLogger("resflex")


def normalised_batches(module: Any, loader: Any, device: torch.device) -> Iterator[torch.Tensor]:
    """``loader``'s images as the network sees them (moved, decoded, normalised by the module)."""
    for batch in loader:
        images, _ = module.on_after_batch_transfer(move_data_to_device(batch, device), 0)
        yield images


def interleaved(iterables: Sequence[Any]) -> Iterator[Any]:
    """One item of each iterable in turn, until all are spent."""
    iterators = [iter(it) for it in iterables]
    while iterators:
        for it in list(iterators):
            try:
                yield next(it)
            except StopIteration:
                iterators.remove(it)


def sizes_by_key(sizes: Sequence[Any]) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """The evaluation sizes grouped by the key of their statistics (:func:`side_of`), each group under
    its first size. Why: the table holds one set per key, so sizes of equal area (24x40 and 40x24,
    both 31) get one set estimated on all of them: calibrated one after the other, the last would
    replace the others' and serve sizes it was not estimated at."""
    groups: dict[int, list[tuple[int, int]]] = {}
    for size in sizes:
        groups.setdefault(side_of(as_size(size)), []).append(as_size(size))
    shared = [group for group in groups.values() if len(group) > 1]
    for group in shared:
        names = " and ".join(f"{h}x{w}" if h != w else str(h) for h, w in group)
        log.info(
            "BatchNorm statistics: %s share one set (the table is keyed by the side of the square of "
            "equal area, %d px), estimated on all of them",
            names,
            side_of(group[0]),
        )
    return {group[0]: group for group in groups.values()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """True when two state dicts hold equal tensors (the best checkpoint is often the last epoch's)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def calibrate_checkpoint(
    path: Path,
    module: Any,
    datamodule: Any,
    sizes: Sequence[tuple[int, int]],
    batches: int,
    reuse: tuple[dict[str, torch.Tensor], dict] | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Re-estimate ``path``'s BatchNorm statistics at each of ``sizes``; write them into the file.

    The table is keyed by side (:func:`~resflex.models.bn_calibration.side_of`); the weights and
    their own BatchNorm buffers (the statistics as trained) are left as they are. Written atomically.
    ``reuse``: a (state dict, table) already computed; used when this file's weights are equal.
    Returns this file's (original state dict, table).
    """
    checkpoint = safe_load(path, what="checkpoint")
    original = {k: v.clone() for k, v in checkpoint["state_dict"].items()}
    if reuse is not None and same_weights(original, reuse[0]):
        table = reuse[1]
    else:
        module.load_state_dict(checkpoint["state_dict"])
        # a schedule's one training size keeps the statistics it was trained with (they are that size's)
        trained = [as_size(s) for s in datamodule.schedule.train_sizes()]
        groups = sizes_by_key(sizes)
        kept = {key: read_stats(module.model) for key, group in groups.items() if trained == group}

        def batches_at(key: tuple[int, int]) -> Iterator[torch.Tensor]:
            loaders = [datamodule.calibration_loader(size) for size in groups[key]]
            return normalised_batches(module, interleaved(loaders), module.device)

        table = calibrate_sizes(module.model, [k for k in groups if k not in kept], batches_at, batches)
        table = {key: kept.get(key) or table[key] for key in groups}
    checkpoint[BN_STATS_KEY] = {
        str(side_of(size)): {k: v.detach().cpu() for k, v in stats.items()} for size, stats in table.items()
    }
    tmp = path.with_suffix(path.suffix + ".calibrating")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
    return original, table


def calibrate_run_checkpoints(trainer: pl.Trainer, module: Any, datamodule: Any, batches: int) -> list[Path]:
    """Calibrate the run's best and last checkpoints at every evaluation size (rank 0 writes; all wait).

    Leaves ``module`` with the last checkpoint's weights and calibrated statistics, as after fit.
    """
    check_value("eval.bn_calibration_batches", batches, int, lambda v: v >= 1, "a positive integer")
    sizes = list(datamodule.eval_sizes)
    if not has_batchnorm(module.model) or (len(sizes) == 1 and datamodule.schedule.train_sizes() == sizes):
        return []  # no BatchNorm, or one size trained and evaluated: its statistics are already the ones
    paths = []
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
    last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    for candidate in (Path(best) if best else None, last):
        if candidate is not None and candidate.is_file() and candidate not in paths:
            paths.append(candidate)
    if not paths:
        return []
    started = time.perf_counter()
    if trainer.is_global_zero:
        done = None
        for path in sorted(paths, key=lambda p: p == last):  # the last one last: the module keeps its weights
            done = calibrate_checkpoint(path, module, datamodule, sizes, batches, reuse=done)
        if done is not None:
            module.load_state_dict(done[0])  # the last weights, as after fit (with their own statistics)
    trainer.strategy.barrier("bn_calibration")
    # the record's measured_on: numbers from here on are calibrated (trainer.callbacks: set by
    # Lightning's callback connector; the Trainer class does not declare it)
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if hasattr(callback, "note_calibrated"):
            callback.note_calibrated([p.name for p in paths])
    names = ", ".join(f"{h}x{w}" if h != w else str(h) for h, w in sizes)
    unit = "tokens" if is_token_schedule(datamodule.schedule) else "px"  # NaFlex: sequence lengths
    log.info(
        "BatchNorm statistics calibrated at %s %s (%d batches of training images each) in %s: %.0f s",
        names,
        unit,
        batches,
        ", ".join(p.name for p in paths),
        time.perf_counter() - started,
    )
    return paths
