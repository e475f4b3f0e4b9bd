"""Evaluate a checkpoint at several resolutions: ``python scripts/eval.py ckpt_path=PATH [data=...]
eval.resolutions=[48,64,96]``.

The checkpoint's own run folder says what to build: :func:`resflex.run.open_run`
reads the checkpoint (``weights_only``) and its run's config (today's layout), which
gives the backbone, pooling head, model options, resolution geometry, seed and —
unless ``data=`` is given — the data. The same builders as training
(:func:`resflex.build.build_datamodule`, :func:`resflex.build.build_module`) make the
loaders and the model, so preprocessing is identical.

The evaluation loop itself is a plain ``inference_mode`` loop rather than
``Trainer.validate``: it needs nothing from Lightning but the module, counts
exactly (micro accuracy and mean loss over every image, the same quantities
as ``val/acc``/``val/loss``) and measures images/s per size.

A NaFlex run is evaluated at sequence lengths instead (``eval.seq_lens=[64,32,128]``: tokens per
image, each image at its own aspect; the first takes ``val/acc``). Both print and record the
robustness summary over what was evaluated (worst, mean, the range that holds up), as training
logs it (:func:`resflex.training.robustness.summarize_sizes`): the range's × are of the run's own
eval size, training's 1× (a NaFlex run's: of the first length evaluated).

A ``keep_aspect`` run frames each image at its aspect bucket's shape for a size: the table says
``48 (buckets)`` when those shapes are not all 48x48, and a non-square ``eval.resolutions``
entry is refused in one line, as ``predict.size`` refuses it (of ``[h, w]`` only one side would
be used).

Outputs go to this command's own Hydra run folder (``logs/eval/runs/<time>/``,
or ``hydra.run.dir=...``), never into the training run: ``eval.json``,
``eval.csv``, TensorBoard events (``<split>/acc@<size>``, and training's
``eval/<split>_acc_vs_size`` / ``_loss_vs_size`` stepped by the size, so the chart overlays the
training runs') and
``.hydra/`` with the exact command. The table is also printed.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from lightning_fabric.utilities.apply_func import move_data_to_device
from omegaconf import DictConfig

from resflex.build import build_datamodule
from resflex.config import CONFIG_DIR, prepare_cli
from resflex.data.arguments import to_plain
from resflex.data.eval_sizes import is_auto
from resflex.data.sizes import check_bucketed_size, parse_size_list
from resflex.errors import ConfigError, interruption_as_one_line, user_errors_as_one_line
from resflex.models.batch_memory import check_batch_fits, device_memory, element_bytes
from resflex.models.bn_calibration import has_batchnorm, side_of
from resflex.models.input_shapes import forget_real_twins
from resflex.preflight import meta_model
from resflex.run import Run, open_run
from resflex.runtime import (
    autocast_for,
    check_precision,
    quiet_library_noise,
    resolve_device,
    resolve_precision,
    retain_freed_host_memory,
    size_tag,
)
from resflex.training.out_of_memory import evaluation_hint, out_of_memory_as_one_line
from resflex.training.robustness import range_phrase, summarize_sizes
from resflex.types import Size, as_size
from resflex.validation import check_value

log = logging.getLogger("resflex")

COLUMNS = ("resolution", "height", "width", "seq_len", "acc", "acc_top5", "loss", "images", "images_per_sec")


def compose_eval_config(cfg: DictConfig, run: Run) -> DictConfig:
    """The training run's config (:func:`resflex.run.open_run`), with this command's data, resolutions
    (sequence lengths for a NaFlex run), batch size and workers applied; files the data writes
    (``bad_images.txt``) go to this command's folder, never into the training run."""
    merged = copy.deepcopy(run.config)
    if "paths" in merged:
        merged.paths.output_dir = str(cfg.paths.output_dir)
    if cfg.get("data") is not None:
        merged.data = cfg.data
    sizes = list(cfg.eval.resolutions or [])
    seq_lens = eval_seq_lens(cfg, run)
    if seq_lens:  # the first length takes the main loader (val/acc), the rest one loader each
        merged.resolution.max_seq_len = seq_lens[0]
        merged.resolution.eval_seq_lens = seq_lens[1:]
    elif sizes:  # the first size takes the main loader (val/acc), the rest one loader each
        merged.resolution.eval_size = sizes[0]
        merged.eval = {"resolutions": sizes[1:]}
    # else: the sizes the training run evaluated at (its eval size and eval.resolutions / eval.seq_lens)
    if cfg.eval.get("batch_size") is not None:
        check_value("eval.batch_size", cfg.eval.batch_size, int, lambda v: v >= 1, "a whole number >= 1")
        merged.data.batch_size = int(cfg.eval.batch_size)
        if "eval_batch_size" in merged.data:
            merged.data.eval_batch_size = int(cfg.eval.batch_size)
    if cfg.eval.get("num_workers") is not None:
        check_value("eval.num_workers", cfg.eval.num_workers, int, lambda v: v >= 0, "a whole number >= 0")
        merged.data.num_workers = int(cfg.eval.num_workers)
    return merged


#: the splits scripts/eval.py evaluates (the data module's evaluation loaders)
EVAL_SPLITS = ("val", "test")


def requested_sizes(cfg: DictConfig) -> list[Size]:
    """``eval.resolutions`` as sizes: a list, or one size alone. ``auto`` is a training run's choice:
    here the run's own sizes are what an empty list gives."""
    value = to_plain(cfg.eval.resolutions)
    if is_auto(value):
        raise ConfigError(
            "eval.resolutions=auto is for training runs",
            hint="leave eval.resolutions empty to evaluate at the sizes the run evaluated at (auto's, when "
            "it used auto), or list sizes: eval.resolutions=[32,64]",
        )
    return parse_size_list(value, "eval.resolutions")


def eval_seq_lens(cfg: DictConfig, run: Run) -> list[int]:
    """``eval.seq_lens`` checked against the run: sequence lengths (whole tokens >= 1) for a NaFlex run;
    for a run that takes images it must stay empty, and a NaFlex run takes no ``eval.resolutions``."""
    from resflex.naflex_framing import parse_seq_len

    values = list(cfg.eval.get("seq_lens") or [])
    if run.is_naflex and cfg.eval.resolutions:
        raise ConfigError(
            f"eval.resolutions={list(cfg.eval.resolutions)} sizes images, and this NaFlex run is evaluated "
            "at sequence lengths (tokens per image, each image at its own aspect)",
            hint="eval.seq_lens=[32,64,96] (the first one is val/acc's)",
        )
    if values and not run.is_naflex:
        main = run.main_size()
        side = max(main) if main else 64
        raise ConfigError(
            f"eval.seq_lens={values} is for NaFlex runs (resolution=naflex); this run is evaluated at "
            "image sizes",
            hint=f"eval.resolutions=[{side // 2},{side},{side * 2}] (½×, 1×, 2× its {side} px)",
        )
    hint = "eval.seq_lens=[32,64,96] (whole tokens per image)"
    return [parse_seq_len(v, None, "eval.seq_lens", hint) for v in values]


def bucket_shapes(datamodule: Any, split: str, size: tuple[int, int]) -> list[tuple[int, int]] | None:
    """The (h, w) shapes a ``keep_aspect`` evaluation at ``size`` runs ``split``'s images at (one per
    aspect bucket present); None for another geometry (every image at ``size``)."""
    buckets = datamodule.buckets(split)  # the same assignment the loaders' sampler uses
    if buckets is None:
        return None
    schedule = datamodule.schedule
    return sorted({tuple(schedule.shape_for(size, schedule.aspect_ratios[b])) for b in set(buckets)})


@torch.inference_mode()
def evaluate_loader(
    module: Any, loader: Any, device: torch.device, precision: Any, limit_batches: int | None = None
) -> dict[str, float | None]:
    """Micro top-1/top-5 accuracy and mean cross-entropy over every image of ``loader`` (``acc_top5``:
    None with fewer than 5 classes)."""
    correct = correct5 = 0
    loss_sum = 0.0
    images = 0
    started = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if limit_batches is not None and i >= limit_batches:
            break
        # move_data_to_device: a NaFlex token batch (a dataclass of tensors) moves as Lightning moves it
        x, y = module.on_after_batch_transfer(move_data_to_device((x, y), device), 0)
        with autocast_for(precision, device):
            logits = module(x)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
        images += int(y.numel())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    if not images:
        raise ConfigError("the evaluation split has no images", hint="check data.* and eval.split")
    return {
        "acc": correct / images,
        "acc_top5": correct5 / images if logits.shape[1] >= 5 else None,  # JSON null, empty CSV cell
        "loss": loss_sum / images,
        "images": images,
        "images_per_sec": images / elapsed if elapsed > 0 else float("nan"),
    }


def top5(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    width = max([10, *(len(str(r["resolution"])) for r in rows)])
    header = f"{'resolution':>{width}}  {'acc':>7}  {'top5':>7}  {'loss':>7}  {'images':>6}  {'img/s':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['resolution']:>{width}}  {r['acc']:7.4f}  {top5(r['acc_top5']):>7}  {r['loss']:7.4f}  "
            f"{r['images']:6d}  {r['images_per_sec']:8.1f}"
        )
    return "\n".join(lines)


def robustness_summary(
    rows: list[dict[str, Any]], tokens: bool, main: tuple[int, int] | None = None
) -> dict[str, Any] | None:
    """Worst and mean over the evaluated sizes (sequence lengths for a NaFlex run) and the range that
    holds up, as training reports them (:func:`resflex.training.robustness.summarize_sizes`); None for
    a single size.

    Scales are × of ``main``: for a run that takes images, the run's own eval size (training's 1×,
    whatever ``eval.resolutions`` lists first); for a NaFlex run (``main=None``), the first length.
    """
    if len(rows) < 2:
        return None
    sizes = [(r["seq_len"], r["seq_len"]) if tokens else (r["height"], r["width"]) for r in rows]
    accuracy = dict(zip(sizes, (r["acc"] for r in rows), strict=True))
    reference = as_size(main) if main is not None else sizes[0]
    summary = summarize_sizes(accuracy, main=reference)
    worst = min(rows, key=lambda r: r["acc"])
    return {
        "unit": "tokens" if tokens else "px",
        "over": len(rows),
        "worst": summary.worst,
        "worst_at": worst["resolution"],
        "mean": summary.mean,
        "range_low": summary.range_low,
        "range_high": summary.range_high,
        "reference": list(main) if main is not None else None,  # the size the range's × are of
    }


def robustness_text(summary: dict[str, Any]) -> str:
    """``worst 0.612 at 16 tokens, mean over 3 sequence lengths 0.701, within 0.03 of its best from
    0.5x to 1x``."""
    over = "sequence lengths" if summary["unit"] == "tokens" else "sizes"
    text = (
        f"worst {summary['worst']:.4f} at {summary['worst_at']}, mean over {summary['over']} {over} "
        f"{summary['mean']:.4f}, {range_phrase(summary['range_low'], summary['range_high'])}"
    )
    reference = summary.get("reference")
    if reference and summary["unit"] == "px":
        h, w = reference
        text += f" (x of the run's eval size, {size_tag(h, w)} px)"
    return text


def write_outputs(output_dir: Path, record: dict[str, Any]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "eval.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    with open(output_dir / "eval.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(record["results"])


def log_tensorboard(output_dir: Path, split: str, rows: list[dict[str, Any]], table: str) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from resflex.training.resolution_eval import size_curve_points

    writer = SummaryWriter(str(output_dir))
    sized: dict[str, float] = {}
    try:
        for r in rows:
            writer.add_scalar(f"{split}/acc@{r['tag']}", r["acc"], 0)
            writer.add_scalar(f"{split}/loss@{r['tag']}", r["loss"], 0)
            sized |= {f"{split}/acc@{r['tag']}": r["acc"], f"{split}/loss@{r['tag']}": r["loss"]}
        # the training runs' accuracy- and loss-vs-size tags (eval/<split>_acc_vs_size, stepped by the
        # side; h x w at the side of equal area), so TensorBoard overlays this run on theirs
        for side, values in size_curve_points(sized, split).items():
            for name, value in values.items():
                writer.add_scalar(name, value, side)
        writer.add_text("eval", "```\n" + table + "\n```", 0)
    finally:
        writer.close()


def bn_statistics_text(module: Any) -> str | None:
    """Which BatchNorm statistics the numbers are of (None: the model has no BatchNorm): each size's
    nearest in the checkpoint's per-size table, or the one set the weights were trained with (a
    checkpoint without the table: calibrated numbers would differ, e.g. a state dict saved again)."""
    if not has_batchnorm(module.model):
        return None
    if module.size_stats is not None and module.size_stats.table:
        sides = ", ".join(str(side) for side in sorted(module.size_stats.table))
        return f"per size, from the checkpoint's table ({sides} px): each size uses its nearest"
    return "one set, as trained (the checkpoint has no per-size table)"


def class_order(run_classes: list[str] | None, data_classes: list[str]) -> list[int] | None:
    """For each of the data's labels, the checkpoint's label of the same class name; None when the two
    orders agree or the run's names are unknown. Raises :class:`ConfigError` for other names.

    Why: an image folder's labels are its class folders in sorted order, while a run trained on
    another source keeps that source's order (the synthetic shapes: circle, ring, square, ...); scored
    by label index, the same images read 0.07 where they are 0.13.
    """
    if run_classes is None or run_classes == data_classes:
        return None
    if sorted(run_classes) != sorted(data_classes):
        missing = [c for c in run_classes if c not in data_classes][:3]
        extra = [c for c in data_classes if c not in run_classes][:3]
        raise ConfigError(
            f"the data's classes are not the checkpoint's: the run has {', '.join(map(repr, missing))}, "
            f"the data {', '.join(map(repr, extra))} instead",
            hint="evaluate on data with the checkpoint's class names (the run's classes.json)",
        )
    return [run_classes.index(name) for name in data_classes]


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` at each of ``cfg.eval.resolutions``; returns the record in eval.json."""
    quiet_library_noise()
    started = time.time()
    split = str(cfg.eval.get("split", "val"))
    if split not in EVAL_SPLITS:  # the training split has no evaluation loader (and no held-out meaning)
        raise ConfigError(f"eval.split={split}: evaluation reads val or test", hint="eval.split=val|test")
    device = resolve_device(cfg.eval.get("device", "auto"), "eval.device")  # the keys read after the data:
    precision = check_precision(cfg.eval.get("precision", "auto"), "eval.precision")  # checked before it
    if device.type != "cuda" and str(precision) not in ("auto", "32", "32-true"):
        log.warning("eval.precision=%s: evaluating on the CPU in 32-true (mixed precision: CUDA)", precision)
    precision = resolve_precision(precision) if device.type == "cuda" else "32-true"
    limit = cfg.eval.get("limit_batches")
    if limit is not None:
        check_value("eval.limit_batches", limit, int, lambda v: v >= 1, "a whole number >= 1 or null")
    asked = requested_sizes(cfg)
    cfg.eval.resolutions = [h if h == w else [h, w] for h, w in asked]  # one size alone: a list of one
    run = open_run(cfg.get("ckpt_path"), cfg.get("run_config"))  # first: refuses unsafe files early
    run_cfg = compose_eval_config(cfg, run)
    if run.is_naflex:
        asked = []
    if asked:  # sizes the backbone cannot take (too small for its stride, a fixed-size ViT), before the data
        model = meta_model(run_cfg.model).model
        for size in asked:
            model.backbone.check_input_size(size, "eval.resolutions")
        forget_real_twins()  # a fixed-size model's real twin (input_shapes): its memory is the run's again
        batch = int(run_cfg.data.get("eval_batch_size") or run_cfg.data.batch_size)
        memory = device_memory("cuda" if device.type == "cuda" else "cpu")  # a batch that cannot fit: now
        largest = max(asked, key=lambda s: s[0] * s[1])
        bytes_each = element_bytes(precision)
        check_batch_fits(model, largest, batch, "eval.resolutions", "eval.batch_size", memory, bytes_each)
    datamodule = build_datamodule(run_cfg)
    geometry = str(datamodule.schedule.geometry)
    bucket_size = str(getattr(datamodule.schedule, "bucket_size", "short_side"))
    for size in asked:  # keep_aspect: one side per size; [h, w] refused, as predict.size does
        check_bucketed_size(size, geometry, bucket_size, "eval.resolutions")
    if not datamodule.has_split(split):
        raise ConfigError(f"the data has no {split!r} split (eval.split={split})", hint="eval.split=val")
    if run.num_classes != datamodule.num_classes:
        raise ConfigError(
            f"the checkpoint classifies {run.num_classes} classes but the data has {datamodule.num_classes}",
            hint="evaluate on data with the label set the checkpoint was trained on",
        )
    order = class_order(run.known_classes(), list(datamodule.classes))
    # strict load; per-size BatchNorm statistics (eval.bn_calibration): the nearest size's at each size
    module = run.build_module(run_cfg)
    if order is not None:  # the head's rows in the data's label order: every number is by class name
        head = module.model.head
        with torch.no_grad():
            head.weight.copy_(head.weight[order])
            head.bias.copy_(head.bias[order])
        log.info("the data lists the run's classes in another order: its labels are matched by class name")

    bn_statistics = bn_statistics_text(module)

    if device.type == "cpu":
        retain_freed_host_memory()  # large evaluation batches: see the function
    module.to(device).eval()

    loaders = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
    rows = []
    for (h, w), loader in zip(datamodule.eval_sizes, loaders, strict=True):
        tag = size_tag(h, w)
        if module.size_stats is not None:
            module.size_stats.use(side_of((h, w)))
        with out_of_memory_as_one_line(
            lambda: getattr(module, "last_batch", None),
            lambda _: evaluation_hint("eval.batch_size", datamodule.eval_batch_size),
        ):
            metrics = evaluate_loader(module, loader, device, precision, limit)
        if run.is_naflex:  # a NaFlex run's 'size' (s, s) is a sequence length: s tokens per image
            place = {"resolution": f"{h} tokens", "height": None, "width": None, "seq_len": h}
        else:  # keep_aspect: each image at its aspect bucket's shape for this size (what ran is said)
            shapes = bucket_shapes(datamodule, split, (h, w))
            name = f"{h}x{w}" if shapes in (None, [(h, w)]) else f"{tag} (buckets)"
            place = {"resolution": name, "height": h, "width": w, "seq_len": None}
        rows.append({**place, "tag": tag, **metrics})
        log.info("%s@%s: acc %.4f, loss %.4f", split, tag, metrics["acc"], metrics["loss"])
    robustness = robustness_summary(rows, run.is_naflex, None if run.is_naflex else run.main_size())

    table = format_table(rows)
    output_dir = Path(cfg.paths.output_dir)
    record = {
        "checkpoint": str(run.checkpoint),
        "run_config": str(run.config_path),
        "data": str(run_cfg.data.get("name", "")),
        "split": split,
        "device": str(device),
        "precision": str(precision),
        "results": rows,
        "robustness": robustness,
        "bn_statistics": bn_statistics,
        "wall_time_s": round(time.time() - started, 2),
    }
    write_outputs(output_dir, record)
    log_tensorboard(output_dir, split, rows, table)
    print(f"checkpoint: {run.checkpoint}\ndata: {record['data']} ({split} split)\n{table}")
    if bn_statistics is not None:
        print(f"BatchNorm statistics: {bn_statistics}")
    if robustness is not None:
        print(f"robustness ({split}): {robustness_text(robustness)}")
    print(f"written: {output_dir / 'eval.json'}, {output_dir / 'eval.csv'} (TensorBoard: {output_dir})")
    return record


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def _hydra_entry(cfg: DictConfig) -> None:
    with user_errors_as_one_line():
        evaluate(cfg)


def main() -> None:
    """Console entry point (``scripts/eval.py``)."""
    with interruption_as_one_line("no results written"):
        prepare_cli(sys.argv[1:], "eval")
        _hydra_entry()


if __name__ == "__main__":
    main()
