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

Sizes: ``predict.size=null`` (the run's eval size), ``64`` or ``[h, w]``, ``native`` (each image
near its own size and aspect) or ``auto`` (each image at the run's robust size nearest to it);
how each image's size is chosen and batched is :mod:`resflex.predict_plan`. The size chosen is
recorded per image (``size`` in the output) and the candidates in the record (``auto_sizes``).

A NaFlex run (``resolution=naflex``) takes token sequences: each image patchified at its own aspect at
``predict.seq_len`` tokens, as its evaluation frames it (:mod:`resflex.predict_naflex`); ``predict.size``
is refused for it, and ``predict.seq_len`` for a run that takes images.

This module is the command: decode, frame and classify the planned batches, write the output
file, print the table. Its settings' defaults live in ``configs/predict.yaml`` only (every
``predict.*`` is read from the composed config).

Unreadable files are reported and skipped; a single unreadable ``input``, a missing
or unsafe checkpoint, an empty folder are one-line errors. The output file is
written once, atomically, after every prediction: an error leaves nothing behind.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from resflex.config import CONFIG_DIR, prepare_cli
from resflex.data.bad_images import BadImageError
from resflex.data.images import DEFAULT_DECODER, open_image
from resflex.data.sizes import DEFAULT_ASPECTS
from resflex.errors import ConfigError, DataError, interruption_as_one_line, user_errors_as_one_line
from resflex.inference import ResflexClassifier, classifier_of
from resflex.models.batch_memory import check_batch_fits, device_memory
from resflex.models.input_shapes import forget_real_twins
from resflex.naflex_framing import parse_seq_len
from resflex.predict_naflex import check_naflex_options, run_token_predictions
from resflex.predict_plan import (
    NAMED_SIZES,
    Inputs,
    Plan,
    auto_sizes,
    collect_inputs,
    framed_shape,
    input_path,
    nearest_size,
    parse_predict_size,
    plan_batches,
)
from resflex.preflight import meta_model
from resflex.run import open_run
from resflex.runtime import resolve_device, size_tag
from resflex.training.out_of_memory import (
    PREDICTION_SIZES,
    BatchSeen,
    evaluation_hint,
    out_of_memory_as_one_line,
)
from resflex.training.robustness import RANGE_TOLERANCE
from resflex.types import Size
from resflex.validation import check_value, check_writable

__all__ = [
    "NAMED_SIZES",
    "Inputs",
    "Plan",
    "auto_sizes",
    "collect_inputs",
    "format_table",
    "framed_shape",
    "main",
    "nearest_size",
    "parse_predict_size",
    "plan_batches",
    "predict",
    "run_predictions",
    "write_predictions",
]

log = logging.getLogger("resflex")


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
    batch_size = max((len(members) for _, members, _ in plan.batches), default=1)  # predict.batch_size
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
            images = torch.stack(pixels).to(device)
            with out_of_memory_as_one_line(
                BatchSeen(tuple(images.shape), training=False),
                lambda _: evaluation_hint("predict.batch_size", batch_size, PREDICTION_SIZES),
            ):
                probs = classifier(images).float().softmax(dim=1).cpu()
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
    """One line per image: its path under ``root``, the size it ran at, the top classes and, for a
    labelled folder, whether the first is right; the columns aligned across the lines shown."""
    shown = rows if limit is None or limit < 0 else rows[:limit]
    cells = []
    for r in shown:
        try:
            name = str(Path(r["path"]).relative_to(root))
        except ValueError:
            name = r["path"]
        top = "  ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
        mark = "" if r["correct"] is None else ("  ✓" if r["correct"] else f"  ✗ ({r['label']})")
        cells.append((name, f"[{r['height']}x{r['width']}]", f"{top}{mark}"))
    name_width = max((len(name) for name, _, _ in cells), default=0)
    size_width = max((len(size) for _, size, _ in cells), default=0)
    lines = [f"{name:<{name_width}}  {size:<{size_width}}  {rest}" for name, size, rest in cells]
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more in the output file")
    return "\n".join(lines)


def _auto_text(candidates: list[Size], source: str | None, note: str | None = None) -> str:
    """``32, 48, 64 px (the robust sizes of the val curve)``: what ``auto`` chose among, and why
    (``note``: why the run's curve is not this checkpoint's, :attr:`resflex.run.Run.metrics_note`)."""
    sizes = ", ".join(size_tag(*c) for c in candidates) + " px"
    if source == "eval size" and note:
        return f"{sizes} (the run's eval size: {note})"
    if source == "eval size":
        return f"{sizes} (the run's eval size: no accuracy per size in its metrics.json)"
    return f"{sizes} (the robust sizes of the {source} curve: within {RANGE_TOLERANCE:g} of the best)"


def predict(cfg: DictConfig) -> dict[str, Any]:
    """The task of ``scripts/predict.py``; returns the record (also in the ``.json`` output)."""
    from resflex.runtime import quiet_library_noise

    quiet_library_noise()
    started = time.time()
    settings = cfg.predict  # every default is in configs/predict.yaml
    device = resolve_device(settings.device, "predict.device")
    output = (
        Path(str(cfg.output)) if cfg.get("output") else Path(str(cfg.paths.output_dir)) / "predictions.csv"
    )
    if output.suffix.lower() not in (".csv", ".json"):
        raise ConfigError(f"output must end in .csv or .json, got {output}", hint="output=preds.csv")
    positive = "a whole number >= 1"
    batch_size = check_value("predict.batch_size", settings.batch_size, int, lambda v: v >= 1, positive)
    check_value("predict.topk", settings.topk, int, lambda v: v >= 1, f"{positive} (classes per row)")
    check_value("predict.max_side", settings.max_side, int, lambda v: v >= 1, f"{positive} (pixels)")
    check_value("predict.print_rows", settings.print_rows, int, lambda v: v >= 0, "a whole number >= 0")
    if settings.progress not in ("auto", True, False):
        raise ConfigError(
            f"predict.progress must be auto, true or false, got {settings.progress!r}",
            hint="predict.progress=auto",
        )
    check_writable(output)
    input_path(cfg.get("input"))  # before the checkpoint is read (seconds for a large model)
    run = open_run(cfg.get("ckpt_path"), cfg.get("run_config"))
    check_naflex_options(run, settings.size, settings.seq_len)
    decoder = OmegaConf.select(run.config, "data.source.decoder", default=None) or DEFAULT_DECODER
    if run.is_naflex:  # token sequences, each image at its own aspect (resflex.predict_naflex)
        transform, geometry, schedule = run.eval_framing()
        seq_len = parse_seq_len(settings.seq_len, schedule)
        classes = run.classes()
        inputs = collect_inputs(cfg.get("input"), classes)
        rows, unreadable, batches = run_token_predictions(
            run.token_classifier(device, seq_len),
            classes,
            inputs,
            schedule,
            transform,
            seq_len,
            batch_size,
            int(settings.topk),
            device,
            decoder,
        )
        size: Size | str = (seq_len, seq_len)
        candidates = candidates_from = None
        checkpoint = str(run.checkpoint)
    else:
        classifier = classifier_of(run, device)
        size = parse_predict_size(settings.size, classifier)
        inputs = collect_inputs(cfg.get("input"), classifier.classes)
        if not isinstance(size, str):  # a batch that cannot fit: one line now, not the allocator's trace
            memory = device_memory("cuda" if device.type == "cuda" else "cpu")
            model, batch = meta_model(run.config.model).model, min(batch_size, len(inputs.files))
            check_batch_fits(model, size, batch, "predict.size", "predict.batch_size", memory)
        forget_real_twins()  # a fixed-size model's real twin (input_shapes): its memory is the run's again
        transform, geometry, schedule = run.eval_framing()
        info = classifier.info
        min_side = max(classifier.min_side, int(info.get("multiple", 8)))
        if size == "native" and int(settings.max_side) < min_side:  # each image would run below it
            raise ConfigError(
                f"predict.max_side={settings.max_side} is below the {min_side} px the model takes a side at",
                hint=f"predict.max_side >= {min_side}",
            )
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
            min_side,
            int(settings.max_side),
            candidates,
        )
        rows, unreadable = run_predictions(
            classifier, inputs, plan, transform, int(settings.topk), device, settings.progress, decoder
        )
        batches = len(plan.batches)
        checkpoint = info["checkpoint"]
    if len(inputs.files) == 1 and unreadable:
        raise DataError(
            next(iter(unreadable.values())),
            hint="its bytes do not decode as an image (cut short, or another format under an image's "
            "name): open it in an image viewer, or save it again",
        )
    if not rows:
        first = inputs.files[min(unreadable)]
        raise DataError(
            f"no readable image under {inputs.root} ({len(unreadable)} unreadable; the first, {first.name}: "
            f"{unreadable[min(unreadable)]})",
            hint="pass files whose bytes decode as images (PNG, JPEG, WebP, ...)",
        )
    labelled = [r for r in rows if r["correct"] is not None]
    accuracy = sum(r["correct"] for r in labelled) / len(labelled) if inputs.labelled and labelled else None
    record = {
        "checkpoint": checkpoint,
        "input": str(cfg.get("input")),
        "size": size if isinstance(size, str) else list(size),
        "seq_len": size[0] if run.is_naflex else None,
        "geometry": geometry,
        "auto_sizes": [list(c) for c in candidates] if candidates else None,
        "auto_sizes_from": candidates_from,
        "images": len(rows),
        "unreadable": [{"path": str(inputs.files[i]), "error": e} for i, e in sorted(unreadable.items())],
        "ignored_non_image_files": inputs.ignored,
        "batches": batches,
        "accuracy": accuracy,
        "wall_time_s": round(time.time() - started, 2),
    }
    write_predictions(output, rows, record)
    print(f"checkpoint: {checkpoint}")
    size_text = size if isinstance(size, str) else f"{size[0]}x{size[1]}"
    if run.is_naflex:
        size_text = f"{size[0]} tokens per image, each at its own aspect"
    where = inputs.files[0] if len(inputs.files) == 1 else inputs.root
    count = "1 image" if len(rows) == 1 else f"{len(rows)} images"
    batch_count = "1 batch" if batches == 1 else f"{batches} batches"
    print(f"input: {where} ({count}, size {size_text}, geometry {geometry}, {batch_count})")
    if candidates:
        print(f"size auto: {_auto_text(candidates, candidates_from, info.get('metrics_note'))}")
    print(format_table(rows, inputs.root, int(settings.print_rows)))
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
    with interruption_as_one_line("no predictions written"):
        prepare_cli(sys.argv[1:], "predict")
        _hydra_entry()


if __name__ == "__main__":
    main()
