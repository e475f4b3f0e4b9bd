"""The benchmark's figures; each returns a plain dict that goes into the JSON as is.

Two sides of a ratio alternate (A B B A ...) over the repeats, so a load that
drifts during the run hits both; each side's figure is the median over repeats.
"""

from __future__ import annotations

import contextlib
import io
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from benchmarks.machine import PeakMemory
from benchmarks.runners import (
    Batch,
    Setup,
    Window,
    build_model,
    build_module,
    lightning_windows,
    make_trainer,
    plain_windows,
    random_batch,
)
from resflex.compat import compiled_graph_count
from resflex.data.workers import usable_cores

TARGETS = {
    "overhead": {"cpu": 0.95, "cuda": 0.97},
    "pipeline": {"cpu": 0.90, "cuda": 0.95},
    "mixed": {"cpu": 0.95, "cuda": 0.95},
    "study": {"cpu": 0.75, "cuda": 0.75},  # progressive time-to-target / fixed wall time: at most
}


def target(section: str, device: torch.device) -> float:
    return TARGETS[section]["cuda" if device.type == "cuda" else "cpu"]


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _alternate(
    repeats: int, first: Callable[[], list[Window]], second: Callable[[], list[Window]]
) -> tuple[list[Window], list[Window]]:
    a: list[Window] = []
    b: list[Window] = []
    for r in range(repeats):
        if r % 2 == 0:
            a += first()
            b += second()
        else:
            b += second()
            a += first()
    return a, b


def _sequence(batches: Sequence[Batch], n: int) -> list[Batch]:
    return [batches[i % len(batches)] for i in range(n)]


def _on_device(batches: Sequence[Batch], device: torch.device) -> list[Batch]:
    return [(x.to(device), y.to(device)) for x, y in batches]


def _unique_graphs() -> int:
    return compiled_graph_count()  # private torch counters: resflex.compat


def _ratio_record(name_a: str, a: list[Window], name_b: str, b: list[Window], key: str) -> dict[str, Any]:
    va = [getattr(w, key) for w in a]
    vb = [getattr(w, key) for w in b]
    ma, mb = _median(va), _median(vb)
    return {
        name_a: round(ma, 2),
        name_b: round(mb, 2),
        "ratio": round(ma / mb, 4) if mb > 0 else None,
        # best window of each side: the least disturbed by other processes on a shared machine
        "best_ratio": round(max(va) / max(vb), 4) if va and vb else None,
        "samples": {name_a: [round(v, 2) for v in va], name_b: [round(v, 2) for v in vb]},
    }


# ---- 1. framework overhead ---------------------------------------------------------------
def overhead(
    setup: Setup,
    model: torch.nn.Module,
    size: int,
    warmup: int,
    steps: int,
    repeats: int,
    windows: int = 1,
) -> dict[str, Any]:
    """resflex's Lightning step vs the plain loop, same in-memory batches on the device."""
    module = build_module(setup, model)
    distinct = _on_device(
        [random_batch(setup.batch_size, (size, size), setup.num_classes, i) for i in range(4)], setup.device
    )
    seq = _sequence(distinct, warmup + steps * windows)
    graphs = _unique_graphs()
    resflex, plain = _alternate(
        repeats,
        lambda: lightning_windows(setup, module, seq, warmup, steps, windows),
        lambda: plain_windows(setup, model, seq, warmup, steps, windows),
    )
    record = _ratio_record("resflex_images_per_sec", resflex, "plain_images_per_sec", plain, "images_per_sec")
    record.update(size=size, target=target("overhead", setup.device))
    if setup.compile:
        record["compiled_graphs"] = _unique_graphs() - graphs
    return record


# ---- 2. input pipeline ------------------------------------------------------------------
def _write_chunk(args: tuple[str, int, int, int, int, int, str]) -> None:
    from resflex.data.synthetic import SyntheticShapes

    root, start, stop, seed, min_side, max_side, fmt = args
    shapes = SyntheticShapes(stop, seed=seed, min_side=min_side, max_side=max_side)
    ext = "jpg" if fmt == "jpeg" else "png"
    for i in range(start, stop):
        image, label = shapes[i]
        folder = Path(root) / shapes.classes[label]
        kwargs = {"quality": 90} if fmt == "jpeg" else {}
        image.save(folder / f"{i:06d}.{ext}", **kwargs)


def write_image_folder(root: Path, num_train: int, size: int, fmt: str = "jpeg", seed: int = 0) -> Path:
    """``root/train/<class>/*.jpg`` (+ a small ``val/``): the synthetic shapes at native sides in
    [size, 2*size] (an ImageNet-like ratio of stored to trained size), written in parallel."""
    from resflex.data.synthetic import SyntheticShapes

    for split in ("train", "val"):
        for name in SyntheticShapes.classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
    jobs = []
    workers = max(1, min(16, usable_cores()))
    chunk = max(1, math.ceil(num_train / workers))
    for start in range(0, num_train, chunk):
        jobs.append((str(root / "train"), start, min(num_train, start + chunk), seed, size, 2 * size, fmt))
    jobs.append((str(root / "val"), 0, len(SyntheticShapes.classes), seed + 1, size, 2 * size, fmt))
    if workers > 1 and len(jobs) > 2:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_chunk, jobs))
    else:
        for job in jobs:
            _write_chunk(job)
    return root


def pipeline(
    setup: Setup,
    model: torch.nn.Module,
    size: int,
    workers: int,
    warmup: int,
    steps: int,
    repeats: int,
    fmt: str = "jpeg",
    windows: int = 1,
) -> dict[str, Any]:
    """Full pipeline from image files (ImageFolderSource + ResflexDataModule with workers: decode,
    resize, collate, pinned transfer) vs the same batches pre-loaded on the device; both through
    resflex's Lightning step."""
    from resflex.data.datamodule import ResflexDataModule
    from resflex.data.datasets import ImageFolderSource
    from resflex.data.resolution import FixedResolution

    module = build_module(setup, model)
    total = warmup + steps * windows
    num_train = (total + 1) * setup.batch_size
    with tempfile.TemporaryDirectory(prefix="resflex-bench-") as tmp:
        started = time.perf_counter()
        root = write_image_folder(Path(tmp) / "images", num_train, size, fmt)
        write_s = time.perf_counter() - started
        datamodule = ResflexDataModule(
            source=ImageFolderSource(str(root)),
            schedule=FixedResolution(size, geometry="square"),
            batch_size=setup.batch_size,
            num_workers=workers,
            pin_memory=True,
            persistent_workers=True,
            prefetch_factor=2 if workers > 0 else None,
            augment={"scale": [0.35, 1.0], "ratio": [0.75, 1.3333], "hflip": True},
        )
        loader = datamodule.train_dataloader()
        batches = []
        for batch in loader:
            batches.append(batch)
            if len(batches) == total:
                break
        compute_batches = _on_device(batches, setup.device)
        full, compute = _alternate(
            repeats,
            lambda: lightning_windows(setup, module, datamodule, warmup, steps, windows),
            lambda: lightning_windows(setup, module, compute_batches, warmup, steps, windows),
        )
    record = _ratio_record(
        "full_images_per_sec", full, "compute_only_images_per_sec", compute, "images_per_sec"
    )
    record.update(
        size=size,
        workers=workers,
        format=fmt,
        images=num_train,
        image_sides=[size, 2 * size],
        write_seconds=round(write_s, 2),
        target=target("pipeline", setup.device),
    )
    return record


# ---- 3. mixed resolution ------------------------------------------------------------------
def equal_pixel_side(sizes: Sequence[int], multiple: int) -> int:
    """The square side (a multiple of ``multiple``) closest to the mean pixel count of ``sizes``."""
    mean = sum(s * s for s in sizes) / len(sizes)
    return max(multiple, round(math.sqrt(mean) / multiple) * multiple)


def mixed(
    setup: Setup,
    model: torch.nn.Module,
    sizes: Sequence[int],
    multiple: int,
    warmup: int,
    steps: int,
    repeats: int,
    seed: int = 0,
    windows: int = 1,
) -> dict[str, Any]:
    """A random multi-scale schedule (resflex's RandomResolution) vs one fixed size with the same
    mean pixels; compared in pixels/s (= images/s at equal pixels). Warm-up visits every size."""
    from resflex.data.resolution import RandomResolution

    module = build_module(setup, model)
    schedule = RandomResolution(sizes=list(sizes), seed=seed, geometry="square")
    fixed_side = equal_pixel_side(sizes, multiple)
    by_size = {
        s: _on_device([random_batch(setup.batch_size, (s, s), setup.num_classes, k)], setup.device)[0]
        for k, s in enumerate(sorted({*sizes, fixed_side}))
    }
    warm = [*sizes, *(schedule.size_at(0, 10_000 + i)[0] for i in range(warmup))]
    drawn = [schedule.size_at(0, i)[0] for i in range(steps * windows)]
    mixed_seq = [by_size[s] for s in [*warm, *drawn]]
    fixed_seq = [by_size[fixed_side]] * (len(warm) + steps * windows)
    graphs = _unique_graphs()
    mix, fix = _alternate(
        repeats,
        lambda: lightning_windows(setup, module, mixed_seq, len(warm), steps, windows),
        lambda: lightning_windows(setup, module, fixed_seq, len(warm), steps, windows),
    )
    record = _ratio_record("mixed_pixels_per_sec", mix, "fixed_pixels_per_sec", fix, "pixels_per_sec")
    record.update(
        sizes=list(sizes),
        fixed_size=fixed_side,
        mean_pixels_mixed=round(sum(s * s for s in drawn) / len(drawn), 1),
        pixels_fixed=fixed_side * fixed_side,
        mixed_images_per_sec=round(_median([w.images_per_sec for w in mix]), 2),
        fixed_images_per_sec=round(_median([w.images_per_sec for w in fix]), 2),
        target=target("mixed", setup.device),
    )
    if setup.compile:
        record["compiled_graphs"] = _unique_graphs() - graphs
    return record


# ---- 4. memory ------------------------------------------------------------------------------
def memory(setup: Setup, model: torch.nn.Module, sizes: Sequence[int], steps: int = 2) -> dict[str, Any]:
    """Peak memory of training steps (the plain loop: model, optimizer state, activations) per size,
    smallest size first (see :class:`PeakMemory`)."""
    meter = PeakMemory(setup.device)
    per_size: dict[str, dict[str, float]] = {}
    for s in sorted(set(sizes)):
        batch = _on_device([random_batch(setup.batch_size, (s, s), setup.num_classes, s)], setup.device)[0]
        plain_windows(setup, model, [batch], 1, 1)  # optimizer state exists, this size is warm
        meter.reset()
        plain_windows(setup, model, [batch] * steps, 0, steps)
        peak = meter.peak_mb()
        per_size[str(s)] = {"peak_mb": round(peak, 1), "above_start_mb": round(peak - meter.baseline_mb, 1)}
        del batch
    return {
        "kind": meter.kind,
        "resettable": meter.resettable,
        "batch_size": setup.batch_size,
        "per_size": per_size,
    }


# ---- 5. time-to-accuracy ----------------------------------------------------------------------
class _AccuracyClock(pl.Callback):
    """Training time (validation excluded) and val/acc at the end of each epoch."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.train_seconds = 0.0
        self._start = 0.0
        self.points: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.train_seconds += time.perf_counter() - self._start

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        acc = trainer.callback_metrics.get("val/acc")
        self.points.append(
            {"epoch": trainer.current_epoch, "train_seconds": round(self.train_seconds, 2),
             "val_acc": round(float(acc), 4) if acc is not None else float("nan")}
        )  # fmt: skip
        self._start = time.perf_counter()


def _study_run(setup: Setup, schedule: Any, epochs: int, workers: int, seed: int) -> list[dict[str, float]]:
    from resflex.data.datamodule import ResflexDataModule
    from resflex.data.datasets import SyntheticSource

    pl.seed_everything(seed, workers=True)
    datamodule = ResflexDataModule(
        source=SyntheticSource(num_test=0),
        schedule=schedule,
        batch_size=setup.batch_size,
        num_workers=workers,
        augment={"scale": [0.5, 1.0], "ratio": [0.75, 1.3333], "hflip": True},
        seed=seed,
    )
    module = build_module(setup, build_model(setup))
    clock = _AccuracyClock(setup.device)
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = make_trainer(setup, -1, [clock], log_dir, max_epochs=epochs, limit_val_batches=None)
        with contextlib.redirect_stdout(io.StringIO()):  # the fine-tuning callback's parameter counts
            trainer.fit(module, datamodule=datamodule)
    return clock.points


def parse_progressive(spec: str) -> dict[str, Any]:
    """``"start_size=32,start_epoch=8,end_epoch=13"`` -> ProgressiveResolution keyword arguments."""
    kwargs: dict[str, Any] = {}
    for part in filter(None, spec.replace(" ", "").split(",")):
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise SystemExit(f"error: --study-progressive expects KEY=VALUE pairs, got {part!r}")
        special = {"none": None, "null": None, "true": True, "false": False}
        kwargs[key] = special[value.lower()] if value.lower() in special else int(value)
    return kwargs


def _describe(kwargs: dict[str, Any], size: int, epochs: int) -> str:
    from resflex.data.resolution import ProgressiveResolution

    schedule = ProgressiveResolution(
        **{"end_size": size, "multiple": 16, "eval_size": size, "geometry": "square", **kwargs}
    )
    schedule.bind(epochs)
    return " ".join(str(schedule.size_at(e, 0)[0]) for e in range(epochs))


def study(
    setup: Setup,
    size: int,
    epochs: int,
    workers: int,
    seed: int = 0,
    target_acc: float | None = None,
    variants: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Progressive schedules vs fixed (size) on the default synthetic data, same epochs and steps.

    ``variants`` are ``ProgressiveResolution`` keyword arguments (``end_size`` defaults to
    ``size``, validation is at ``size`` throughout); the default is one ramp from 3/4 of the side.
    The target is the fixed run's final val/acc (or ``target_acc``); each variant's ratio is
    its training time until it first reaches the target over the fixed run's total training
    time (validation excluded from both). The headline ``ratio`` is the first variant's.
    """
    from resflex.data.resolution import FixedResolution, ProgressiveResolution

    if not variants:  # 3/4 of the side (FFCV ramps 160 -> 192): half the side was measured to lose
        variants = [{"start_size": max(16, round(size * 0.75 / 16) * 16)}]
    fixed_points = _study_run(setup, FixedResolution(size, geometry="square"), epochs, workers, seed)
    goal = target_acc if target_acc is not None else fixed_points[-1]["val_acc"]
    fixed_time = fixed_points[-1]["train_seconds"]
    results = []
    for kwargs in variants:
        full = {"end_size": size, "multiple": 16, "eval_size": size, "geometry": "square", **kwargs}
        points = _study_run(setup, ProgressiveResolution(**full), epochs, workers, seed)
        reached = next((p for p in points if p["val_acc"] >= goal), None)
        ratio = reached["train_seconds"] / fixed_time if reached and fixed_time > 0 else None
        results.append(
            {
                "schedule": kwargs,
                "sizes_per_epoch": _describe(kwargs, size, epochs),
                "seconds_to_target": reached["train_seconds"] if reached else None,
                "epoch_reached": reached["epoch"] if reached else None,
                "final_val_acc": points[-1]["val_acc"],
                "best_val_acc": max(p["val_acc"] for p in points),
                "seconds": points[-1]["train_seconds"],  # its whole run, target reached or not
                "ratio": round(ratio, 4) if ratio is not None else None,
                "curve": points,
            }
        )
    head = results[0]
    return {
        "epochs": epochs,
        "fixed_size": size,
        "progressive": head["sizes_per_epoch"],
        "target_val_acc": goal,
        "fixed_seconds": fixed_time,
        "fixed_final_val_acc": fixed_points[-1]["val_acc"],
        "fixed_best_val_acc": max(p["val_acc"] for p in fixed_points),
        "progressive_seconds_to_target": head["seconds_to_target"],
        "progressive_final_val_acc": head["final_val_acc"],
        "progressive_seconds": head["seconds"],
        "ratio": head["ratio"],
        "target": target("study", setup.device),
        "fixed_curve": fixed_points,
        "progressive_curve": head["curve"],
        "variants": results,
    }


def default_workers(device: torch.device) -> int:
    cores = usable_cores()
    return min(12, max(1, cores - 2)) if device.type == "cuda" else min(2, cores)
