"""The end of a run in a few lines: accuracy and loss per evaluation size, then where everything is.

What a person wants when a run ends is which sizes it holds up at and where to
look next. Lightning's test table has one sparse column per evaluation loader
(so ``trainer.test(verbose=False)``), and a dict of ~30 unrounded floats answers
neither; the full numbers stay in ``<run>/metrics.json``. :func:`end_of_run_text`
turns that record into::

    run completed; tested with the best checkpoint (epoch 4)
      size   x main  val acc  val loss  test acc  test loss  drop (test)
      32 px  0.5x      0.412     1.734     0.398      1.801        0.384
      48 px  0.75x     0.701     0.912     0.688      0.950        0.094
      64 px  1x        0.790     0.641     0.782      0.660         best
      96 px  1.5x      0.763     0.702     0.760      0.741        0.022
    val, test: after BatchNorm calibration (eval.bn_calibration); selected on val/acc 0.7850 before it
    robustness (test): worst 0.398 at 32 px, mean over sizes 0.657, within 0.03 of its best from 1x to 1.5x
    best checkpoint: epoch 4, val/acc 0.7850 during training (0.7900 after calibration), <run>/checkpoints/
    best-epoch004-acc0.7850.ckpt (one line)
    train: 812 images/s; wall time 4 min 45 s
    run folder: logs/train/runs/<time>
    model card: logs/train/runs/<time>/model_card.md
    compare runs: tensorboard --logdir logs

Every number in the table is the record's, rounded to 3 decimals. When ``eval.bn_calibration``
re-estimated the BatchNorm statistics after fit, the table's numbers are the calibrated ones (the
record's ``measured_on``) and differ from the value the checkpoint was selected on during training:
the calibration line and the best checkpoint line show both. ``drop`` is
how far a size's accuracy is below the best size's (test when the run was
tested, else val). :func:`end_of_run_markdown` is the same as a Markdown table
for TensorBoard's TEXT tab (``summary/results``). Both are pure functions of the
record, so a failed or interrupted run (few or no metrics) still gets its lines.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resflex.data.eval_sizes import loader_sizes
from resflex.training.resolution_eval import parse_sized_tag
from resflex.training.robustness import range_phrase
from resflex.types import Size, as_size

log = logging.getLogger("resflex")


STAGES = ("val", "test")
SUMMARY_TAG = "summary/results"


@dataclass(frozen=True)
class SizeRow:
    """One evaluation size: its metrics by ``"<stage>/<acc|loss>"`` (absent when not measured)."""

    size: Size
    scale: float
    values: dict[str, float]
    #: ``px``, or ``tokens`` for a NaFlex run (its sizes are sequence lengths)
    unit: str = "px"

    @property
    def label(self) -> str:
        h, w = self.size
        return f"{w} {self.unit}" if h == w else f"{h}x{w} {self.unit}"


def _number(value: Any) -> float | None:
    """A finite float, or None (metrics.json stores NaN/inf as null)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _tag(size: Size) -> str:
    return str(size[1]) if size[0] == size[1] else f"{size[0]}x{size[1]}"  # as resflex.runtime.size_tag


def _infer_main(metrics: Mapping[str, Any], sizes: Sequence[Size]) -> Size | None:
    """The size behind the headline ``val/acc`` (or ``test/acc``): its per-size numbers are the headline's."""
    for stage in STAGES:
        headline = [_number(metrics.get(f"{stage}/{m}")) for m in ("acc", "loss")]
        if headline[0] is None:
            continue

        def gap(size: Size, stage: str = stage, headline: list[float | None] = headline) -> float:
            per_size = [_number(metrics.get(f"{stage}/{m}@{_tag(size)}")) for m in ("acc", "loss")]
            pairs = [(a, b) for a, b in zip(per_size, headline, strict=True) if b is not None]
            return sum(math.inf if a is None else abs(a - b) for a, b in pairs)

        return min(sizes, key=gap)
    return None


def size_unit(record: Mapping[str, Any]) -> str:
    """``tokens`` for a NaFlex run (``resolution=naflex``: its evaluation sizes are sequence lengths),
    else ``px``."""
    return "tokens" if (record.get("choices") or {}).get("resolution") == "naflex" else "px"


def size_rows(metrics: Mapping[str, Any], main: Size | None = None, unit: str = "px") -> list[SizeRow]:
    """The per-size metrics (``val/acc@64``, ``test/loss@48x80``) as rows, smallest size first.

    ``main``: the main evaluation size (the datamodule's ``eval_sizes[0]``); without it, the size
    whose numbers are the headline ``val/acc`` and ``val/loss``.
    """
    found: dict[Size, dict[str, float]] = {}
    for key, value in metrics.items():
        parsed, number = parse_sized_tag(key), _number(value)
        if parsed is not None and number is not None:
            stage, metric, size = parsed
            found.setdefault(size, {})[f"{stage}/{metric}"] = number
    if not found:
        return []
    main = as_size(main) if main is not None else _infer_main(metrics, list(found))
    main_area = math.sqrt(main[0] * main[1]) if main else 0.0
    rows = [
        SizeRow(size, math.sqrt(size[0] * size[1]) / main_area if main_area else math.nan, values, unit)
        for size, values in found.items()
    ]
    return sorted(rows, key=lambda row: (row.size[0] * row.size[1], row.size))


def drop_stage(rows: Sequence[SizeRow]) -> str | None:
    """Which accuracy the ``drop`` column is taken from: test when measured, else val."""
    for stage in reversed(STAGES):
        if any(f"{stage}/acc" in row.values for row in rows):
            return stage
    return None


def _scale_text(scale: float) -> str:
    return "?" if math.isnan(scale) else f"{scale:.3g}x"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(rows: Sequence[SizeRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells: size, x main, then val/test acc/loss where measured, then the drop from the best."""
    columns = [(f"{s}/{m}", f"{s} {m}") for s in STAGES for m in ("acc", "loss")]
    columns = [(key, title) for key, title in columns if any(key in row.values for row in rows)]
    stage = drop_stage(rows)
    header = ["size", "x main", *(title for _, title in columns)]
    if stage is not None:
        header.append(f"drop ({stage})")
    best = max((row.values.get(f"{stage}/acc", -math.inf) for row in rows), default=-math.inf)
    cells = []
    for row in rows:
        line = [row.label, _scale_text(row.scale), *(_cell(row.values.get(key)) for key, _ in columns)]
        if stage is not None:
            acc = row.values.get(f"{stage}/acc")
            line.append("-" if acc is None else "best" if acc == best else f"{best - acc:.3f}")
        cells.append(line)
    return header, cells


def _align(header: Sequence[str], cells: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Plain-text columns: labels left-aligned, numbers right-aligned."""
    widths = [max(len(str(line[k])) for line in [header, *cells]) for k in range(len(header))]

    def fmt(line: Sequence[str]) -> str:
        parts = [str(v).ljust(widths[k]) if k < 2 else str(v).rjust(widths[k]) for k, v in enumerate(line)]
        return (indent + "  ".join(parts)).rstrip()

    return [fmt(header), *(fmt(line) for line in cells)]


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def best_epoch(checkpoint: str) -> int | None:
    """The epoch in a best checkpoint's file name (``best-epoch004-acc0.7900.ckpt`` -> 4)."""
    match = re.search(r"epoch[=_-]?(\d+)", Path(checkpoint).name)
    return int(match.group(1)) if match else None


def robustness_line(metrics: Mapping[str, Any], rows: Sequence[SizeRow]) -> str | None:
    """Worst and mean over the sizes and the range of sizes that hold up (``<stage>/acc_worst``,
    ``acc_mean_sizes``, ``acc_range_low``/``high``; worst and mean from the rows if the run has no tags)."""
    stage = drop_stage(rows)
    if stage is None or len(rows) < 2:
        return None
    accs = [(row.values[f"{stage}/acc"], row) for row in rows if f"{stage}/acc" in row.values]
    worst_value, worst_row = min(accs, key=lambda item: item[0])
    worst = _number(metrics.get(f"{stage}/acc_worst"))
    mean = _number(metrics.get(f"{stage}/acc_mean_sizes"))
    parts = [f"worst {worst if worst is not None else worst_value:.3f} at {worst_row.label}"]
    parts.append(f"mean over sizes {mean if mean is not None else sum(a for a, _ in accs) / len(accs):.3f}")
    low, high = (
        _number(metrics.get(f"{stage}/acc_range_low")),
        _number(metrics.get(f"{stage}/acc_range_high")),
    )
    if low is not None and high is not None and low > 0:
        parts.append(range_phrase(low, high))
    return f"robustness ({stage}): " + ", ".join(parts)


def _status_line(record: Mapping[str, Any], rows: Sequence[SizeRow]) -> str:
    status = str(record.get("status", "unknown"))
    line = f"run {status}"
    if record.get("error"):
        line += f": {record['error']}"
    elif any("test/acc" in row.values for row in rows) and (record.get("best") or {}).get("checkpoint"):
        epoch = record["best"].get("epoch", best_epoch(str(record["best"]["checkpoint"])))
        line += "; tested with the best checkpoint" + (f" (epoch {epoch})" if epoch is not None else "")
    return line


def calibrated_stages(record: Mapping[str, Any]) -> list[str]:
    """The splits whose final numbers were measured after BatchNorm calibration (the record's
    ``measured_on``, :class:`resflex.training.callbacks.MeasuredOn`)."""
    measured = record.get("measured_on") or {}
    return [s for s in STAGES if isinstance(measured.get(s), dict) and measured[s].get("bn_calibration")]


def calibration_line(record: Mapping[str, Any]) -> str | None:
    """``val, test: after BatchNorm calibration (eval.bn_calibration); selected on val/acc 0.7850 before
    it``: why the table's numbers of the checkpoint differ from the value it was selected on during
    training (the file is named when it is not the best). None when no calibration ran."""
    stages = calibrated_stages(record)
    if not stages:
        return None
    best = record.get("best") or {}
    best_name = Path(str(best.get("checkpoint") or "")).name
    files = sorted({str(record["measured_on"][s].get("checkpoint")) for s in stages} - {best_name})
    line = f"{', '.join(stages)}: after BatchNorm calibration (eval.bn_calibration)"
    line += f" of {', '.join(files)}" if files else ""
    monitor = str(best.get("monitor") or "val/acc")
    score = _number(best.get(monitor))
    if score is not None and best_name:
        line += f"; selected on {monitor} {score:.4f} before it"
    return line


def tensorboard_logdir(run_dir: Path, log_root: str | Path | None) -> Path:
    """The folder to point TensorBoard at: the logs root when the run is inside it (all runs on one
    chart), else the run folder itself."""
    if log_root is not None:
        try:
            Path(run_dir).resolve().relative_to(Path(log_root).resolve())
            return Path(log_root)
        except (OSError, ValueError):
            pass
    return Path(run_dir)


def detail_lines(record: Mapping[str, Any], run_dir: Path, log_root: str | Path | None = None) -> list[str]:
    """Best checkpoint, speed and time, and where the run's files are (only what exists)."""
    metrics = record.get("metrics") or {}
    lines = []
    best = record.get("best") or {}
    if best.get("checkpoint"):
        epoch = best.get("epoch", best_epoch(str(best["checkpoint"])))
        monitor = str(best.get("monitor") or "val/acc")  # callbacks.model_checkpoint.monitor
        score = _number(best.get(monitor))
        after = None
        measured = (record.get("measured_on") or {}).get("val") or {}
        same = measured.get("checkpoint") == Path(str(best["checkpoint"])).name
        if measured.get("bn_calibration") and same:
            after = _number(metrics.get(monitor))  # the same checkpoint's value after calibration
        where = [
            f"epoch {epoch}" if epoch is not None else None,
            f"{monitor} {score:.4f}" if score is not None else None,
        ]
        if score is not None and after is not None:
            where[1] = f"{monitor} {score:.4f} during training ({after:.4f} after calibration)"
        lines.append("best checkpoint: " + ", ".join([*filter(None, where), str(best["checkpoint"])]))
    elif record.get("checkpoint"):
        lines.append(f"checkpoint: {record['checkpoint']}")
    speed = _number(
        metrics.get("train/images_per_sec", (record.get("throughput") or {}).get("train/images_per_sec"))
    )
    wall = _number(record.get("wall_time_s"))
    timing = [
        f"train: {speed:,.0f} images/s" if speed else None,
        f"wall time {_duration(wall)}" if wall else None,
    ]
    if any(timing):
        lines.append("; ".join(filter(None, timing)))
    lines.append(f"run folder: {run_dir}")
    card = Path(run_dir) / "model_card.md"
    if card.is_file():
        lines.append(f"model card: {card}")
    if any(Path(run_dir).glob("events.out.tfevents.*")):  # a run that failed before logging has none
        lines.append(f"compare runs: tensorboard --logdir {tensorboard_logdir(run_dir, log_root)}")
    return lines


def end_of_run_text(
    record: Mapping[str, Any],
    run_dir: str | Path,
    log_root: str | Path | None = None,
    main: Size | None = None,
) -> str:
    """The console summary of a run from its ``metrics.json`` record (see the module docstring)."""
    metrics = record.get("metrics") or {}
    rows = size_rows(metrics, main, size_unit(record))
    lines = [_status_line(record, rows)]
    if rows:
        lines += _align(*table(rows))
    for extra in (calibration_line(record), robustness_line(metrics, rows)):
        if extra:
            lines.append(extra)
    lines += detail_lines(record, Path(run_dir), log_root)
    return "\n".join(lines)


def end_of_run_markdown(
    record: Mapping[str, Any],
    run_dir: str | Path,
    log_root: str | Path | None = None,
    main: Size | None = None,
) -> str:
    """The same as :func:`end_of_run_text` as Markdown, for TensorBoard's TEXT tab."""
    metrics = record.get("metrics") or {}
    rows = size_rows(metrics, main, size_unit(record))
    parts = [f"**{_status_line(record, rows)}**", ""]
    if rows:
        header, cells = table(rows)
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|")
        parts += ["| " + " | ".join(line) + " |" for line in cells]
        parts.append("")
    found = [calibration_line(record), robustness_line(metrics, rows)]
    extra = [line for line in found if line] + detail_lines(record, Path(run_dir), log_root)
    parts += [f"- {_code_spans(line)}" for line in extra]
    return "\n".join(parts)


_LITERAL_DETAILS = ("run folder", "model card", "compare runs", "checkpoint")


def _code_spans(line: str) -> str:
    """A detail line with its path or command in backticks: Markdown would otherwise render
    ``--logdir`` as an en dash (a command that no longer pastes) and ``_`` in paths as emphasis."""
    label, sep, value = line.partition(": ")
    if not sep:
        return line
    if label in _LITERAL_DETAILS:
        return f"{label}: `{value}`"
    if label == "best checkpoint":
        head, comma, path = value.rpartition(", ")
        return f"{label}: {head}{comma}`{path}`"
    return line


def report_end_of_run(
    record: Mapping[str, Any],
    run_dir: str | Path,
    trainer: Any = None,
    log_root: str | Path | None = None,
) -> None:
    """Log the summary line by line (console and ``train.log``) and, with a trainer that has loggers, as
    TEXT (``summary/results``). Never raises: a summary must not turn a result into a failure."""
    main = _main_size(trainer)
    try:
        for line in end_of_run_text(record, run_dir, log_root, main).splitlines():
            log.info(line)
        if trainer is not None and trainer.loggers:
            _log_markdown(trainer, end_of_run_markdown(record, run_dir, log_root, main))
    except Exception as exc:  # the run's result is already in metrics.json
        log.warning("could not write the end-of-run summary: %s", exc)


def _main_size(trainer: Any) -> Size | None:
    sizes = loader_sizes(trainer)
    return sizes[0] if sizes else None


def _log_markdown(trainer: Any, markdown: str) -> None:
    """TEXT after the trainer finished: the loggers are finalised, so TensorBoard reopens a writer
    (a new event file in the run folder) for this entry and closes it again."""
    from resflex.training.loggers import log_text, tensorboard_writers

    log_text(trainer, SUMMARY_TAG, markdown)
    for writer in tensorboard_writers(trainer):
        writer.close()
