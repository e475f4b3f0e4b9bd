"""``<run>/model_card.md``: what a trained model is and how to feed it, built from the run's own records.

Why from the records rather than from the live objects: the card must be
rebuildable for any run folder (an old run, a run whose data has moved), and the
run folder already holds the single sources of truth — ``.hydra/config.yaml`` (the
composed config), ``.hydra/overrides.yaml`` (the command) and ``metrics.json``
(status, accuracy at every evaluated size), read through :mod:`resflex.run` (old
config layouts arrive migrated to today's). Training writes the card when it ends;
``scripts/export.py`` rewrites it and copies it beside the exported file. The class
names also go to ``<run>/classes.json``, so a later ``load_classifier`` does not need
the training data to name its outputs.

The card is of the checkpoint the run folder stands for (its best, else ``last.ckpt``:
:func:`resflex.run_folder.run_checkpoint`): its "Use it" snippets name that file, its numbers are
those measured on it (the record's ``measured_on``; a split measured on another checkpoint is left
out, and said so), labelled when they come after BatchNorm calibration, beside the value the
checkpoint was selected on during training.

The robust range the card states (which sizes the model holds up at) is computed in
:mod:`resflex.robust_range`; this module only renders it. Its names are re-exported here.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from resflex.errors import first_line
from resflex.robust_range import (
    CURVE_STAGES,
    RobustRange,
    number_text,
    parse_size_tag,
    robust_range,
    robust_ranges,
    robustness_lines,
    scale_text,
    size_curve,
    size_text,
    token_robustness_lines,
)
from resflex.run import Run, open_run_folder
from resflex.run_folder import (
    CLASSES_FILE,
    hydra_file,
    metrics_of_checkpoint,
    read_classes,
    read_overrides,
    run_checkpoint,
)
from resflex.validation import override_arg

__all__ = [
    "CARD_FILE",
    "CURVE_STAGES",
    "RobustRange",
    "build_model_card",
    "parse_size_tag",
    "robust_range",
    "robust_ranges",
    "robustness_lines",
    "scale_text",
    "size_curve",
    "size_text",
    "token_robustness_lines",
    "write_model_card",
    "write_model_card_quietly",
]

log = logging.getLogger("resflex")
CARD_FILE = "model_card.md"
INPUT_CONVENTION = (
    "float32 RGB in [0, 1], shape (B, 3, H, W), any H and W the backbone takes; the mean/std "
    "normalisation is inside the loaded or exported model; the output is logits (B, classes): "
    "softmax gives probabilities"
)


#: a NaFlex run's input, for the card (the export's metadata says the same: resflex.export_naflex)
TOKEN_CONVENTION = (
    "token sequences, not image batches: each image resized whole, keeping its aspect, to at most N "
    "patches of P px (timm's get_image_size_for_seq), patchified (timm's patchify_image), padded to the "
    "batch's longest sequence with a validity mask; inputs (patches (B, N, P*P*3) in [0, 1], patch_coord "
    "(B, N, 2), patch_valid (B, N)), the mean/std normalisation inside; the output is logits (B, classes)"
)


#: what each geometry's evaluation framing does, for the card's input convention
GEOMETRY_EVAL = {
    "square": "resize to cover, centre crop",
    "keep_aspect": "resize to cover the aspect bucket's shape, centre crop",
    "squash": "the whole image resized to the size, aspect ignored",
    "pad": "the whole image fitted inside the size, padded with the training data's mean colour",
}


def _overrides(run: Run) -> list[str]:
    """The command's overrides: ``.hydra/overrides.yaml``, else the record's copy of them."""
    overrides = read_overrides(run.run_dir)
    return overrides if overrides is not None else [str(o) for o in run.record.get("overrides") or []]


def _mean_std(name: str) -> tuple[Any, Any]:
    try:
        import timm

        cfg = timm.get_pretrained_cfg(name.split(".", 1)[0])
        if cfg is not None:
            return tuple(cfg.mean), tuple(cfg.std)
    except Exception:
        pass
    return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


#: the LR schedule classes (resflex.training.lr_schedule) by the word a reader knows them by
SCHEDULE_NAMES = {
    "WarmupCosine": "cosine",
    "WarmupStep": "step decay",
    "WarmupConstant": "constant",
    "WarmupPlateau": "reduce on plateau",
}


def _schedule_name(cfg: DictConfig) -> str:
    """``cosine``, ``step decay``...: what follows the warm-up."""
    target = str(OmegaConf.select(cfg, "scheduler._target_", default="") or "")
    return SCHEDULE_NAMES.get(target.rsplit(".", 1)[-1], "cosine")


def _warmup_text(cfg: DictConfig) -> str:
    """``warm-up 3.0 epochs then cosine``; for a warm-up as long as the run (clamped to it,
    :func:`resflex.training.lr_schedule.warmup_covers_run`), what the LR did instead."""
    from resflex.training.lr_schedule import warmup_covers_run

    warmup = OmegaConf.select(cfg, "scheduler.warmup_epochs", default=None)
    epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if warmup is None:
        return f"warm-up ? epochs then {_schedule_name(cfg)}"
    if isinstance(epochs, int | float) and epochs > 0 and warmup_covers_run(float(warmup), float(epochs)):
        return (
            f"warm-up {warmup} epochs, as long as the run: the LR only rose, to its peak at the end "
            f"(no {_schedule_name(cfg)} phase)"
        )
    return f"warm-up {warmup} epochs then {_schedule_name(cfg)}"


def _optimizer_name(cfg: DictConfig) -> str:
    """``adamw``: the timm name of the optimizer (``optimizer.name``)."""
    return str(OmegaConf.select(cfg, "optimizer.name", default="?"))


def _pooling_text(cfg: DictConfig) -> str:
    pooling = OmegaConf.to_container(cfg.get("pooling") or {}, resolve=True) or {}
    assert isinstance(pooling, dict)
    name = str(pooling.pop("_target_", "")).rsplit(".", 1)[-1] or "?"
    args = ", ".join(f"{k!s}={v}" for k, v in pooling.items())  # keys: str (a config's)
    return f"{name}({args})"


def _accuracy_rows(metrics: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """(split, size, acc, loss) for every ``<split>/acc@<size>`` (and the plain ``<split>/acc``)."""
    rows = []
    for key, value in metrics.items():
        match = re.fullmatch(r"(val|test)/acc@(\w+)", key)
        if match and value is not None:
            split, size = match.groups()
            rows.append((split, size, value, metrics.get(f"{split}/loss@{size}")))
    if not rows:
        for split in ("val", "test"):
            if metrics.get(f"{split}/acc") is not None:
                rows.append((split, "eval size", metrics[f"{split}/acc"], metrics.get(f"{split}/loss")))

    def order(row: tuple[str, str, Any, Any]) -> tuple[bool, int, str]:
        """val before test, then by size."""
        digits = re.match(r"\d+", row[1])
        return row[0] != "val", int(digits.group()) if digits else 0, row[1]

    return sorted(rows, key=order)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else (value or {})


def build_model_card(run_dir: Path, classes: list[str] | None = None) -> str:
    """The card's markdown for ``run_dir`` (needs ``.hydra/config.yaml``; ``metrics.json`` optional)."""
    run = open_run_folder(run_dir)
    cfg, record = run.config, run.record
    # the checkpoint the card is of: what the run folder resolves to (its best, else last.ckpt); its
    # numbers only (a split measured on another checkpoint is left out, and said so)
    checkpoint, checkpoint_why = run_checkpoint(run_dir, record)
    metrics, other = metrics_of_checkpoint(record, checkpoint)
    backbone = cfg.backbone
    mean, std = _mean_std(str(backbone.name))
    try:  # the values the run used (seed=${seed} is the seed); a dangling interpolation: as written
        resolution = OmegaConf.to_container(cfg.get("resolution") or {}, resolve=True) or {}
    except Exception:
        resolution = OmegaConf.to_container(cfg.get("resolution") or {}, resolve=False) or {}
    assert isinstance(resolution, dict)
    schedule_name = str(resolution.pop("_target_", "?")).rsplit(".", 1)[-1]
    resolution.pop("_convert_", None)
    weights = (
        "timm hub (pretrained)"
        if backbone.get("pretrained")
        else backbone.get("weights") or backbone.get("init_from") or "from scratch"
    )
    data = cfg.get("data") or {}
    classes_text = (
        f"{len(classes)}: " + ", ".join(f"`{c}`" for c in classes[:50]) + (" …" if len(classes) > 50 else "")
        if classes
        else "see the run's data"
    )
    overrides = _overrides(run)
    configured_geometry = str(resolution.get("geometry", "square"))
    framing = run.trained_framing()
    trained_geometry = framing[0] if framing else configured_geometry
    geometry_origin = ""
    if configured_geometry == "auto":  # auto names no framing: say what it chose, or how it will choose
        geometry_origin = (
            " (chosen by auto from the training images)"
            if framing
            else " (not in the run's record: resolved from the training images when the run is evaluated, "
            "`square` if they are gone)"
        )
    framing_text = GEOMETRY_EVAL.get(trained_geometry)
    command = " ".join(["python scripts/train.py", *(shlex.quote(o) for o in overrides)])
    naflex = run.is_naflex
    schedule = run.schedule() if naflex else None
    training_sizes = (
        f"| training sequence lengths | {schedule!r} (tokens per image, each image at its own aspect) |"
        if schedule is not None
        else f"| training sizes | {schedule_name}: "
        + ", ".join(
            f"{k!s}={v}"
            + (f" (chose {trained_geometry})" if k == "geometry" and v != trained_geometry else "")
            for k, v in resolution.items()
            if v is not None
        )
        + " |"
    )
    lines = [
        f"# Model card: {run_dir.name}",
        "",
        "An image classifier trained with resflex (timm backbone → adaptive pooling head → linear),",
        "for inputs of variable size.",
        "",
        "| | |",
        "|---|---|",
        f"| classes | {classes_text} |",
        f"| backbone | `{backbone.name}` (timm), weights: {weights}, "
        f"model_kwargs: {_plain(backbone.get('model_kwargs'))} |",
        f"| head | {_pooling_text(cfg)} → dropout {_dropout(cfg)} → linear |",
        training_sizes,
        f"| schedule | {OmegaConf.select(cfg, 'trainer.max_epochs', default='?')} epochs, "
        f"optimizer {_optimizer_name(cfg)} "
        f"lr={OmegaConf.select(cfg, 'optimizer.lr', default='?')}, "
        f"{_warmup_text(cfg)}, "
        f"finetune={OmegaConf.select(cfg, 'finetune.name', default=None) or 'full'}, "
        f"seed {cfg.get('seed')} |",
        f"| data | {data.get('name', '?')}" + (f" (`{data.get('root')}`)" if data.get("root") else "") + " |",
        f"| run | status {record.get('status', '?')}, wall time {record.get('wall_time_s', '?')} s |",
        "",
        "## Accuracy across evaluated sequence lengths" if naflex else "## Accuracy across evaluated sizes",
        "",
    ]
    rows = _accuracy_rows(metrics)
    if rows:
        column = "sequence length (tokens per image)" if naflex else "size"
        lines += [f"| split | {column} | acc | loss |", "|---|---|---|---|"]
        lines += [
            f"| {s} | {size} | {number_text(acc)} | {number_text(loss)} |" for s, size, acc, loss in rows
        ]
    elif other:  # recorded, of another checkpoint (said below): not "none recorded"
        lines.append("No evaluation of this checkpoint recorded in metrics.json.")
    else:
        lines.append("No evaluation recorded in metrics.json.")
    lines += ["", *_measured_lines(record, checkpoint, checkpoint_why, other)]
    if naflex:
        main = run.main_size(schedule)
        lines += ["", "## Robustness across sequence lengths", "", *token_robustness_lines(metrics, main)]
        lines += ["", "## Input convention", "", f"{TOKEN_CONVENTION}."]
        lines.append(
            f"Normalisation: mean {tuple(round(v, 4) for v in mean)}, std {tuple(round(v, 4) for v in std)}."
        )
        lines += [
            f"Evaluation preprocessing: N = the run's max_seq_len ({main[0] if main else '?'}), "
            f"P = {getattr(schedule, 'patch_size', '?')} px, crop_pct "
            f"{OmegaConf.select(cfg, 'data.eval_crop_pct', default=1.0)} (`scripts/predict.py` applies it; "
            "`predict.seq_len` picks another N).",
            "",
        ]
    else:
        robustness = robustness_lines(metrics, run.main_size())
        if other and not robust_ranges(metrics, run.main_size()):
            robustness = ["No accuracy per size of this checkpoint recorded in metrics.json (see above)."]
        lines += ["", "## Robustness across sizes", "", *robustness]
        lines += [
            "",
            "## Input convention",
            "",
            f"{INPUT_CONVENTION}.",
            f"Normalisation: mean {tuple(round(v, 4) for v in mean)}, std {tuple(round(v, 4) for v in std)}.",
            f"Evaluation preprocessing: geometry `{trained_geometry}`{geometry_origin}, "
            f"crop_pct {OmegaConf.select(cfg, 'data.eval_crop_pct', default=1.0)} "
            f"({f'{framing_text}; ' if framing_text else ''}`scripts/predict.py` applies it).",
            "",
        ]
    lines += [
        "## How it was trained",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Use it",
        "",
        *(_token_usage(checkpoint) if naflex else _image_usage(checkpoint)),
        "",
    ]
    return "\n".join(lines)


def _measured_lines(record: dict[str, Any], checkpoint: Path, why: str, other: dict[str, str]) -> list[str]:
    """Which checkpoint the numbers above are of, whether after BatchNorm calibration, and the value
    the checkpoint was selected on (measured during training, before any calibration)."""
    lines = [f"Checkpoint: `{checkpoint.name}` ({why}); the numbers above and the snippets below are its."]
    measured = record.get("measured_on") or {}
    calibrated = [
        split
        for split in ("val", "test")
        if split not in other and (measured.get(split) or {}).get("bn_calibration")
    ]
    best = record.get("best") or {}
    monitor = str(best.get("monitor") or "val/acc")
    if calibrated:
        lines.append(
            f"{' and '.join(calibrated).capitalize()} numbers are after BatchNorm calibration "
            "(`eval.bn_calibration`: statistics re-estimated per size after fit), so they may differ from "
            "the values during training."
        )
    if best.get(monitor) is not None and best.get("checkpoint"):
        lines.append(
            f"Selected as the best by {monitor} {number_text(best[monitor])} during training "
            f"(`{Path(str(best['checkpoint'])).name}`)."
        )
    for split, source in other.items():
        lines.append(f"Not shown: the {split} numbers, measured on `{source}` (another checkpoint).")
    return lines


def _image_usage(checkpoint: Path) -> list[str]:
    return [
        "```python",
        "from resflex import load_classifier",
        f'model = load_classifier("{checkpoint}")   # eval mode, .classes',
        "logits = model(images)   # float32 (B, 3, H, W) in [0, 1]",
        "```",
        "",
        "```bash",
        f"python scripts/predict.py {override_arg('ckpt_path', checkpoint)} input=PATH output=preds.csv",
        f"python scripts/export.py {override_arg('ckpt_path', checkpoint)} format=onnx output=model.onnx",
        "```",
    ]


def _token_usage(checkpoint: Path) -> list[str]:
    ckpt, arg = str(checkpoint), override_arg("ckpt_path", checkpoint)
    return [
        "```python",
        "from resflex import load_classifier",
        f'model = load_classifier("{ckpt}")   # eval mode, .classes',
        "logits = model(images)   # (B, 3, H, W) in [0, 1], each image at its own aspect, max_seq_len tokens",
        "",
        "from resflex.run import open_run",
        f'model = open_run("{ckpt}").token_classifier()   # eval mode',
        "logits = model(patches, patch_coord, patch_valid)   # see the input convention",
        "```",
        "",
        "```bash",
        f"python scripts/predict.py {arg} input=PATH output=preds.csv [predict.seq_len=N]",
        f"python scripts/eval.py {arg} 'eval.seq_lens=[64,32,128]'",
        f"python scripts/export.py {arg} format=onnx output=model.onnx"
        "   # runs trained with +backbone.model_kwargs.pos_embed_use_grid_sample=true",
        "```",
    ]


def write_model_card(run_dir: str | Path, classes: list[str] | None = None) -> Path:
    """Write ``<run>/model_card.md`` (atomically) and, when the names are known, ``<run>/classes.json``.

    ``classes`` default: ``classes.json`` if present, else the run's data (see
    :meth:`resflex.run.Run.classes`). The card names its files by absolute path: it is copied beside
    exports, and a path relative to where it was written leads nowhere there.
    """
    run_dir = Path(run_dir).expanduser().absolute()
    if classes is None:
        classes = _known_classes(run_dir)
    if classes:
        classes_path = run_dir / CLASSES_FILE
        if not classes_path.is_file():
            _atomic_write(classes_path, json.dumps(list(classes)) + "\n")
    path = run_dir / CARD_FILE
    _atomic_write(path, build_model_card(run_dir, classes))
    return path


def _known_classes(run_dir: Path) -> list[str] | None:
    names = read_classes(run_dir)
    if names is not None:
        return names
    try:
        return open_run_folder(run_dir).classes_from_data()
    except Exception as exc:
        log.debug("model card: class names not found: %s", exc)
        return None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_model_card_quietly(run_dir: str | Path) -> Path | None:
    """For the end of training: :func:`write_model_card`, never raising (a card must not fail a run)."""
    run_dir = Path(run_dir)
    if not hydra_file(run_dir).is_file():
        return None
    try:
        return write_model_card(run_dir)
    except Exception as exc:
        reason = first_line(exc)
        log.warning("model card not written: %s", reason)
        return None


def _dropout(cfg: DictConfig) -> float:
    return OmegaConf.select(cfg, "model.net.dropout", default=0.0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/model_card.py RUN_DIR``: (re)write a run folder's ``model_card.md`` from its records
    (a run whose card training did not write, or one written by older code); 2 and one line on error."""
    import argparse
    import sys

    from resflex.errors import ResflexError

    parser = argparse.ArgumentParser(
        description="(Re)write a run folder's model_card.md", prog="model_card.py"
    )
    parser.add_argument("run_dir", help="a training run folder (logs/train/runs/<time>)")
    parser.add_argument("--print", action="store_true", help="also print the card")
    args = parser.parse_args(argv)
    try:
        path = write_model_card(Path(args.run_dir))
    except ResflexError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    if args.print:
        print(path.read_text())
    print(f"written: {path}")
    return 0
