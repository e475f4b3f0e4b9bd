"""Predict with a trained run: ``python scripts/predict.py ckpt_path=CKPT input=PATH [output=preds.csv|.json]
[predict.size=64|[h,w]|native|auto]``.

``input`` is an image, a folder, or a folder tree (image files by extension, as
image folders are read for training). Each image is decoded and framed exactly as
``scripts/eval.py`` does — the run's evaluation transform and geometry
(:meth:`resflex.run.Run.eval_framing`), the same reduced-scale JPEG decode — and
classified by :func:`resflex.inference.load_classifier`'s model, fed the uint8
pixels (bit-identical normalisation). So on a labelled folder
(``input/<class>/...`` with the run's class names) the accuracy printed is the one
``scripts/eval.py`` reports on the same data and size.

Sizes: ``predict.size=null`` (the run's eval size), ``64`` or ``[h, w]``, or
``native``: every image near its own size and aspect — the image's area, capped
by ``predict.max_side``, on its aspect-ratio bucket's shape (the run's
``aspect_ratios``), sides rounded to the run's ``multiple`` — and batched by bucket
and shape, so a batch never mixes shapes and no image is resized far from what it is.

``auto``: every image at the size the model is best at for it. The candidates are the
run's *robust sizes*: of its accuracy-per-size curve (``metrics.json``'s
``val/acc@<size>``, else ``test/acc@<size>``) the contiguous sizes around the best one
whose accuracy stays within 0.03 of the best, as
:func:`resflex.training.robustness.summarize_sizes` defines ``acc_range``; a run without
a curve has one candidate, its eval size. Each image gets the candidate whose shape is
closest to the image in log scale — by the side of the square of equal area,
sqrt(h*w), of the image and of the candidate's shape (for ``keep_aspect`` runs its
aspect bucket's shape at that size, as for a fixed size; otherwise the size itself) —
so an image smaller than every robust size runs at the smallest, a larger one at the
largest, and none at a size the model was not measured to hold up at. Images are
batched by shape, as for ``native``. The size chosen is recorded per image (``size``
in the output) and the candidates in the record (``auto_sizes``).

Unreadable files are reported and skipped; a single unreadable ``input``, a missing
or unsafe checkpoint, an empty folder are one-line errors. The output file is
written once, atomically, after every prediction: an error leaves nothing behind.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from resflex.config import CONFIG_DIR, prepare_cli
from resflex.data.bad_images import BadImageError
from resflex.data.buckets import assign_buckets, file_image_size
from resflex.data.images import DEFAULT_DECODER, IMAGE_EXTENSIONS, open_image
from resflex.data.resolution import DEFAULT_ASPECTS, parse_size, round_to
from resflex.errors import ConfigError, DataError, user_errors_as_one_line
from resflex.inference import ResflexClassifier, classifier_of
from resflex.model_card import robust_ranges
from resflex.run import open_run
from resflex.runtime import resolve_device, size_tag
from resflex.training.robustness import RANGE_TOLERANCE
from resflex.types import Size

log = logging.getLogger("resflex")


@dataclass
class Inputs:
    """The files to predict, their labels when ``input`` is a labelled folder, and what was left out."""

    root: Path
    files: list[Path]
    labels: list[int | None]
    ignored: int = 0  # files without an image extension

    @property
    def labelled(self) -> bool:
        return bool(self.files) and all(label is not None for label in self.labels)


def collect_inputs(path: str | Path, classes: list[str]) -> Inputs:
    """An image file, or every image under a folder (recursive, sorted like ``DatasetFolder``).

    The folder is *labelled* when every image lies in ``<input>/<class>/...`` with a
    class name of the model: the layout of a training/validation split.
    """
    if path is None or str(path) in ("", "None", "???"):
        raise ConfigError("input is not set", hint="pass input=/path/to/image_or_folder")
    root = Path(str(path)).expanduser()
    if not root.exists():
        raise DataError(f"input not found: {root}", hint="pass an image file or a folder of images")
    if root.is_file():
        return Inputs(root=root.parent, files=[root], labels=[None])
    files: list[Path] = []
    ignored = 0
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(Path(folder) / name)
            elif not name.startswith("."):
                ignored += 1
    if not files:
        raise DataError(
            f"no image files under {root}" + (f" ({ignored} other files)" if ignored else ""),
            hint=f"image extensions: {', '.join(IMAGE_EXTENSIONS)}",
        )
    index = {name: i for i, name in enumerate(classes)}
    labels: list[int | None] = []
    for file in files:
        parts = file.relative_to(root).parts
        labels.append(index.get(parts[0]) if len(parts) > 1 else None)
    return Inputs(root=root, files=files, labels=labels, ignored=ignored)


#: the named ``predict.size`` values (a side or [h, w] otherwise)
NAMED_SIZES = ("native", "auto")


def parse_predict_size(value: Any, classifier: ResflexClassifier) -> Size | str:
    """``null`` -> the run's eval size; ``native``; ``auto``; ``64`` or ``[h, w]`` (checked against the
    backbone)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if value is None:
        size = classifier.eval_size or (64, 64)
    elif isinstance(value, str) and value.lower() in NAMED_SIZES:
        return value.lower()
    else:
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        try:
            size = parse_size(value, "predict.size")
        except ConfigError as exc:
            raise ConfigError(
                exc.message, hint="predict.size=64, predict.size=[48,80], predict.size=native or auto"
            ) from None
    classifier.check_size(size, "predict.size")
    return size


def auto_sizes(metrics: Mapping[str, Any], main: Size) -> tuple[list[Size], str]:
    """``predict.size=auto``'s candidates and where they come from: the robust sizes of the val
    curve (``"val"``), else of the test curve (``"test"``), else ``[main]`` (``"eval size"``).

    ``metrics``: the run's ``metrics.json`` metrics (``ResflexClassifier.info["metrics"]``).
    """
    ranges = robust_ranges(metrics, main)
    if not ranges:
        return [main], "eval size"
    return ranges[0].sizes, ranges[0].stage


def nearest_size(side: float, sizes: Sequence[Size], shape_of: Callable[[Size], Size] | None = None) -> Size:
    """The size in ``sizes`` whose shape is closest to an image of side ``side`` (sqrt of its area),
    in log scale: ratios count, not pixels (24 px is as far from 48 as 96 is).

    ``shape_of(size)``: the (h, w) an image runs at for ``size`` (its aspect bucket's shape for
    ``keep_aspect``); default the size itself. A tie goes to the larger size (more detail).
    """
    if not sizes:
        raise ValueError("nearest_size needs at least one size")
    side = max(float(side), 1e-6)

    def distance(size: Size) -> tuple[float, int]:
        h, w = shape_of(size) if shape_of is not None else size
        # rounded: a tie up to float error (an image at the geometric mean of two sizes) is a tie
        return round(abs(math.log(math.sqrt(h * w) / side)), 9), -size[0] * size[1]

    return min(sizes, key=distance)


def framed_shape(schedule: Any, size: Size, aspect: float) -> Size:
    """The (h, w) a fixed ``size`` runs at for an image in the aspect bucket ``aspect``: the bucket's
    shape for ``keep_aspect`` (:meth:`ResolutionSchedule.shape_for`, as evaluation frames it), else
    the size itself."""
    if schedule is None:
        return size
    h, w = schedule.shape_for(size, aspect)
    return int(h), int(w)


@dataclass
class Plan:
    """Batches of file indices, each with one (h, w); ``bucket`` per batch (None: no bucketing);
    ``sizes``: the size each file runs at (``predict.size``'s value for it: auto's choice,
    native's shape)."""

    batches: list[tuple[Size, list[int], int | None]] = field(default_factory=list)
    unreadable: dict[int, str] = field(default_factory=dict)
    sizes: dict[int, Size] = field(default_factory=dict)


def plan_batches(
    files: list[Path],
    size: Size | str,
    batch_size: int,
    geometry: str,
    schedule: Any,
    aspect_ratios: list[float],
    multiple: int,
    min_side: int,
    max_side: int,
    candidates: list[Size] | None = None,
) -> Plan:
    """Group files into batches of one shape.

    A fixed size with ``keep_aspect`` mirrors evaluation (bucket shape at the size's
    area, :meth:`ResolutionSchedule.shape_for`); other geometries use the size as is.
    ``native``: bucket by aspect, then the image's own area (sides clamped to
    ``[min_side, max_side]``) on the bucket's shape, rounded to ``multiple``.
    ``auto``: each image at the size of ``candidates`` (:func:`auto_sizes`) nearest to it
    (:func:`nearest_size`), framed as that fixed size would be. Header reads only;
    files whose header does not parse are set aside as unreadable.
    """
    plan = Plan()
    if size == "auto" and not candidates:
        raise ValueError("predict.size=auto needs candidate sizes")
    need_sizes = size in NAMED_SIZES or geometry == "keep_aspect"
    sizes: dict[int, tuple[int, int]] = {}
    if need_sizes:
        for i, file in enumerate(files):
            try:
                sizes[i] = file_image_size(str(file))
            except Exception as exc:
                plan.unreadable[i] = str(BadImageError(file, exc).message)
    readable = [i for i in range(len(files)) if i not in plan.unreadable]
    groups: dict[tuple[Size, int | None], list[int]] = defaultdict(list)
    if not need_sizes:
        groups[(size, None)] = readable  # type: ignore[index]
        plan.sizes = dict.fromkeys(readable, size)  # type: ignore[arg-type]
    else:
        ratios = aspect_ratios or [1.0]
        buckets = assign_buckets([sizes[i] for i in readable], ratios)
        for i, bucket in zip(readable, buckets, strict=True):
            aspect = ratios[bucket]
            framed = partial(framed_shape, schedule, aspect=aspect)
            if size == "native":
                width, height = sizes[i]
                side = min(max(math.sqrt(width * height), min_side), max_side)
                h = side / math.sqrt(aspect)
                shape = (
                    min(max(round_to(h, multiple), min_side), max_side),
                    min(max(round_to(h * aspect, multiple), min_side), max_side),
                )
                plan.sizes[i] = shape
            elif size == "auto":
                width, height = sizes[i]
                plan.sizes[i] = nearest_size(math.sqrt(width * height), candidates or [], framed)
                shape = framed(plan.sizes[i])
            else:
                shape = framed(size)  # type: ignore[arg-type]
                plan.sizes[i] = size  # type: ignore[assignment]
            # auto buckets only where the framing does (keep_aspect); native always does
            bucketed = size != "auto" or geometry == "keep_aspect"
            groups[(tuple(shape), bucket if bucketed else None)].append(i)
    for (shape, bucket), members in sorted(groups.items(), key=lambda item: (item[0][1] or 0, item[0][0])):
        for start in range(0, len(members), batch_size):
            plan.batches.append((shape, members[start : start + batch_size], bucket))
    return plan


def _progress(total: int, enabled: Any) -> Any:
    from tqdm import tqdm

    disable = None if enabled in (None, "auto") else not bool(enabled)
    return tqdm(total=total, unit="img", desc="predict", disable=disable, file=sys.stderr, leave=False)


@torch.inference_mode()
def run_predictions(
    classifier: ResflexClassifier,
    inputs: Inputs,
    plan: Plan,
    transform: Any,
    topk: int,
    device: torch.device,
    progress: Any = "auto",
    decoder: str = DEFAULT_DECODER,
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Decode (with the run's ``data.decoder``), frame and classify every planned file; unreadable
    files are collected, not raised."""
    rows: list[dict[str, Any]] = []
    unreadable = dict(plan.unreadable)
    k = min(topk, classifier.num_classes)
    bar = _progress(sum(len(members) for _, members, _ in plan.batches), progress)
    try:
        for batch_index, (shape, members, bucket) in enumerate(plan.batches):
            pixels, kept = [], []
            for i in members:
                try:
                    pixels.append(transform(open_image(inputs.files[i], decoder), shape))
                    kept.append(i)
                except BadImageError as exc:
                    unreadable[i] = exc.message
            bar.update(len(members))
            if not kept:
                continue
            probs = classifier(torch.stack(pixels).to(device)).float().softmax(dim=1).cpu()
            top = probs.topk(k, dim=1)
            for row_index, i in enumerate(kept):
                label = inputs.labels[i]
                classes = [classifier.classes[int(c)] for c in top.indices[row_index]]
                rows.append(
                    {
                        "path": str(inputs.files[i]),
                        "index": i,
                        "height": shape[0],
                        "width": shape[1],
                        "size": size_tag(*plan.sizes.get(i, shape)),
                        "bucket": bucket,
                        "batch": batch_index,
                        "top": [
                            {"class": c, "prob": float(p)}
                            for c, p in zip(classes, top.values[row_index], strict=True)
                        ],
                        "label": classifier.classes[label] if label is not None else None,
                        "correct": (int(top.indices[row_index, 0]) == label) if label is not None else None,
                    }
                )
    finally:
        bar.close()
    rows.sort(key=lambda r: r["index"])
    return rows, unreadable


def write_predictions(path: Path, rows: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """``.csv`` (one row per image: path, the shape it ran at, the size it ran at (``predict.size``'s
    value for it; auto's choice), top-k class/prob, label) or ``.json`` (the full record).

    Written to a temporary file and renamed: a failure never leaves half a file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.suffix.lower() == ".json":
            tmp.write_text(json.dumps({**record, "predictions": rows}, indent=2, default=str) + "\n")
        else:
            k = max((len(r["top"]) for r in rows), default=0)
            header = ["path", "height", "width", "size"]
            for j in range(1, k + 1):
                header += [f"top{j}", f"prob{j}"]
            header += ["label", "correct"]
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                for r in rows:
                    cells: list[Any] = [r["path"], r["height"], r["width"], r.get("size", "")]
                    for t in r["top"]:
                        cells += [t["class"], f"{t['prob']:.6f}"]
                    cells += [""] * (2 * (k - len(r["top"])))
                    cells += [r["label"] or "", "" if r["correct"] is None else int(r["correct"])]
                    writer.writerow(cells)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def format_table(rows: list[dict[str, Any]], root: Path, limit: int) -> str:
    lines = []
    shown = rows if limit is None or limit < 0 else rows[:limit]
    for r in shown:
        try:
            name = str(Path(r["path"]).relative_to(root))
        except ValueError:
            name = r["path"]
        top = "  ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
        mark = "" if r["correct"] is None else ("  ✓" if r["correct"] else f"  ✗ ({r['label']})")
        lines.append(f"{name}  [{r['height']}x{r['width']}]  {top}{mark}")
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more in the output file")
    width = max((len(line.split("  [")[0]) for line in lines), default=0)
    aligned = []
    for line in lines:
        head, sep, tail = line.partition("  [")
        aligned.append(f"{head:<{width}}{sep}{tail}" if sep else line)
    return "\n".join(aligned)


def _auto_text(candidates: list[Size], source: str | None) -> str:
    """``32, 48, 64 px (the robust sizes of the val curve)``: what ``auto`` chose among, and why."""
    sizes = ", ".join(size_tag(*c) for c in candidates) + " px"
    if source == "eval size":
        return f"{sizes} (the run's eval size: no accuracy per size in its metrics.json)"
    return f"{sizes} (the robust sizes of the {source} curve: within {RANGE_TOLERANCE:g} of the best)"


def predict(cfg: DictConfig) -> dict[str, Any]:
    """The task of ``scripts/predict.py``; returns the record (also in the ``.json`` output)."""
    from resflex.runtime import quiet_library_noise

    quiet_library_noise()
    started = time.time()
    settings = cfg.get("predict") or {}
    device = resolve_device(settings.get("device", "auto"))
    output = (
        Path(str(cfg.output)) if cfg.get("output") else Path(str(cfg.paths.output_dir)) / "predictions.csv"
    )
    if output.suffix.lower() not in (".csv", ".json"):
        raise ConfigError(f"output must end in .csv or .json, got {output}", hint="output=preds.csv")
    batch_size = settings.get("batch_size", 32)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"predict.batch_size must be a positive integer, got {batch_size!r}")
    run = open_run(cfg.ckpt_path, cfg.get("run_config"))
    classifier = classifier_of(run, device)
    size = parse_predict_size(settings.get("size"), classifier)
    inputs = collect_inputs(cfg.get("input"), classifier.classes)
    transform, geometry, schedule = run.eval_framing()
    info = classifier.info
    candidates, candidates_from = (
        auto_sizes(info.get("metrics") or {}, classifier.eval_size or (64, 64))
        if size == "auto"
        else (None, None)
    )
    plan = plan_batches(
        inputs.files,
        size,
        batch_size,
        geometry,
        schedule,
        info.get("aspect_ratios") or list(DEFAULT_ASPECTS),
        int(info.get("multiple", 8)),
        max(classifier.min_side, int(info.get("multiple", 8))),
        int(settings.get("max_side", 512)),
        candidates,
    )
    rows, unreadable = run_predictions(
        classifier,
        inputs,
        plan,
        transform,
        int(settings.get("topk", 5)),
        device,
        settings.get("progress", "auto"),
        OmegaConf.select(run.config, "data.source.decoder", default=None) or DEFAULT_DECODER,
    )
    if len(inputs.files) == 1 and unreadable:
        raise DataError(next(iter(unreadable.values())), hint="pass an image file (PNG, JPEG, ...)")
    if not rows:
        raise DataError(f"no readable image under {inputs.root} ({len(unreadable)} unreadable)")
    labelled = [r for r in rows if r["correct"] is not None]
    accuracy = sum(r["correct"] for r in labelled) / len(labelled) if inputs.labelled and labelled else None
    record = {
        "checkpoint": info["checkpoint"],
        "input": str(cfg.get("input")),
        "size": size if isinstance(size, str) else list(size),
        "geometry": geometry,
        "auto_sizes": [list(c) for c in candidates] if candidates else None,
        "auto_sizes_from": candidates_from,
        "images": len(rows),
        "unreadable": [{"path": str(inputs.files[i]), "error": e} for i, e in sorted(unreadable.items())],
        "ignored_non_image_files": inputs.ignored,
        "batches": len(plan.batches),
        "accuracy": accuracy,
        "wall_time_s": round(time.time() - started, 2),
    }
    write_predictions(output, rows, record)
    print(f"checkpoint: {info['checkpoint']}")
    size_text = size if isinstance(size, str) else f"{size[0]}x{size[1]}"
    print(
        f"input: {inputs.root} ({len(rows)} images, size {size_text}, geometry {geometry}, "
        f"{len(plan.batches)} batches)"
    )
    if candidates:
        print(f"size auto: {_auto_text(candidates, candidates_from)}")
    print(format_table(rows, inputs.root, int(settings.get("print_rows", 50))))
    for _, error in sorted(unreadable.items()):
        print(f"skipped: {error}", file=sys.stderr)
    if unreadable:
        print(f"skipped {len(unreadable)} unreadable file(s)", file=sys.stderr)
    if inputs.ignored:
        print(f"ignored {inputs.ignored} file(s) without an image extension", file=sys.stderr)
    if accuracy is not None:
        print(
            f"accuracy: {accuracy:.4f} ({sum(r['correct'] for r in labelled)}/{len(labelled)}, "
            f"labels from the folder names)"
        )
    print(f"written: {output}")
    return record


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def _hydra_entry(cfg: DictConfig) -> None:
    with user_errors_as_one_line():
        predict(cfg)


def main() -> None:
    """Console entry point (``scripts/predict.py``, ``resflex-predict``)."""
    prepare_cli(sys.argv[1:])
    _hydra_entry()


if __name__ == "__main__":
    main()
