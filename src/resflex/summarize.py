"""Summarise a sweep (or one run): ``python scripts/summarize.py logs/multirun/<sweep> [--sort val/acc]``.

Reads each job folder's ``metrics.json`` (written by :func:`resflex.train.train`
for completed, failed and interrupted runs alike) and prints one row per job:
the overrides that differ between jobs, status, final and best ``val/acc``,
``test/acc``, robustness across sizes (``val/acc_worst``, ``val/acc_mean_sizes``,
``val/acc_range``, and ``test/`` when tested; see :mod:`resflex.training.robustness`),
per-resolution accuracies (``val/acc@64`` ...), images/s and wall time. Writes
``summary.csv``, ``summary.md`` and ``summary.png`` into the folder: accuracy vs
evaluation size with one curve per job (test when tested, else val), each job's
mean and worst over the sizes beside it (:func:`draw`). A job folder
without ``metrics.json`` is ``running`` while its files are still being written,
``missing`` otherwise (killed, or never finished), so a sweep can be summarised
while it runs.

How job folders are read (and a job's status told) is :mod:`resflex.sweep_jobs`; this module
is what is made of the jobs: the table (text, csv, markdown), the figure and the command.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resflex.errors import ResflexError
from resflex.robust_range import CURVE_STAGES
from resflex.sweep_jobs import (
    RES_KEY,
    ROBUSTNESS_METRICS,
    Job,
    add_robustness,
    find_jobs,
    load_job,
    resolution_columns,
    varying_overrides,
)
from resflex.training.resolution_eval import equivalent_side

__all__ = [
    "Job",
    "add_robustness",
    "check_sort_key",
    "columns_for",
    "draw",
    "find_jobs",
    "format_markdown",
    "format_text",
    "load_job",
    "main",
    "plot",
    "resolution_columns",
    "size_curves",
    "sort_jobs",
    "summarize",
    "table_rows",
    "varying_overrides",
]

BASE_METRICS = ("val/acc", "best val/acc", "test/acc")
STATUS_ORDER = {"completed": 0, "interrupted": 1, "failed": 2, "running": 3, "missing": 4}


def robustness_columns(jobs: Sequence[Job]) -> list[str]:
    """The robustness columns some job has a value for: val's, then test's."""
    names = [f"{stage}/{name}" for stage in CURVE_STAGES for name in ROBUSTNESS_METRICS]
    return [n for n in names if any(job.metrics.get(n) is not None for job in jobs)]


def columns_for(jobs: Sequence[Job]) -> list[str]:
    varying, _ = varying_overrides(jobs)
    return [
        "job",
        *varying,
        "status",
        *BASE_METRICS,
        *robustness_columns(jobs),
        *resolution_columns(jobs),
        "img/s",
        "time_s",
        "error",
    ]


def sortable_keys(jobs: Sequence[Job]) -> list[str]:
    """What ``--sort`` can name: the table's fixed columns, every override and every metric of a job."""
    keys = [*BASE_METRICS, "img/s", "time_s"]
    for job in jobs:
        keys += [k for k in (*job.overrides, *job.metrics) if k not in keys]
    return keys


def check_sort_key(jobs: Sequence[Job], metric: str) -> None:
    """Refuse a ``--sort`` key no job has (a typo would sort in no order at all), naming the closest."""
    keys = sortable_keys(jobs)
    if metric in keys:
        return
    prefixed = [k for k in keys if k.startswith(metric)]  # val/acc_mean -> val/acc_mean_sizes
    close = [
        *prefixed,
        *(k for k in difflib.get_close_matches(metric, keys, n=3, cutoff=0.5) if k not in prefixed),
    ]
    raise ResflexError(
        f"--sort {metric}: no job has this column or metric",
        hint=f"the closest: {', '.join(close[:3])}" if close else f"e.g. {', '.join(BASE_METRICS)}",
    )


def sort_jobs(jobs: Sequence[Job], metric: str, ascending: bool = False) -> list[Job]:
    """By ``metric`` (best first); jobs without a value for it go last: failed, running, missing."""

    def key(job: Job) -> tuple[int, Any]:
        value = job.value(metric)
        if isinstance(value, str):
            try:
                value = float(value)  # overrides are strings: optimizer.lr=0.001
            except ValueError:
                return (1, value)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return (0, value if ascending else -value)
        return (2, STATUS_ORDER.get(job.status, len(STATUS_ORDER)))

    ordered = sorted(jobs, key=key)
    numbers = [job for job in ordered if key(job)[0] == 0]
    # text (a group choice: pooling=avg) cannot be negated: its own order, in the direction asked
    texts = sorted((job for job in ordered if key(job)[0] == 1), key=key, reverse=not ascending)
    return [*numbers, *texts, *(job for job in ordered if key(job)[0] == 2)]


def _format(column: str, value: Any) -> str:
    if value is None or value == "":
        return "" if column == "error" else "-"
    if isinstance(value, float):
        if column == "img/s" or column == "time_s":
            return f"{value:.1f}"
        if column.endswith("/acc_range"):  # a ratio of sizes: 1.50 (x)
            return f"{value:.2f}"
        return f"{value:.4f}"
    return str(value)


def table_rows(jobs: Sequence[Job], columns: Sequence[str], exact: bool = False) -> list[list[str]]:
    """One row of text per job. ``exact``: numbers as recorded and no value empty (``summary.csv``, for
    programs), not rounded with ``-`` (the printed and markdown tables, for people)."""
    rows = []
    for job in jobs:
        row = []
        for column in columns:
            if column == "job":
                row.append(job.name)
            elif column == "status":
                row.append(job.status)
            elif column == "error":
                row.append(job.error)
            elif exact:
                value = job.value(column)
                row.append("" if value is None else str(value))
            else:
                row.append(_format(column, job.value(column)))
        rows.append(row)
    return rows


def format_text(columns: Sequence[str], rows: Sequence[Sequence[str]], max_error: int = 70) -> str:
    rows = [[*r[:-1], (r[-1][: max_error - 1] + "…") if len(r[-1]) > max_error else r[-1]] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def format_markdown(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _label(job: Job, varying: Sequence[str]) -> str:
    parts = [f"{k}={job.overrides[k]}" for k in varying if k in job.overrides]
    return ",".join(parts) or job.name


def size_curves(jobs: Sequence[Job]) -> tuple[str, dict[str, list[tuple[int, float]]]]:
    """The split to draw (test when any job was tested, else val) and, per job with per-size
    accuracies, its curve: ``[(side, accuracy)]`` by side (``h x w`` at the side of equal area)."""
    varying, _ = varying_overrides(jobs)
    res_cols = resolution_columns(jobs)
    split = "test" if any(c.startswith("test/") for c in res_cols) else "val"
    curves: dict[str, list[tuple[int, float]]] = {}
    for job in jobs:
        points = []
        for column in res_cols:
            match = RES_KEY.match(column)
            value = job.metrics.get(column)
            if match and match.group(1) == split and isinstance(value, int | float):
                h, w = int(match.group(2)), int(match.group(3) or match.group(2))
                points.append((equivalent_side(h, w), float(value)))
        if points:
            curves[_label(job, varying)] = sorted(points)
    return split, curves


def draw(jobs: Sequence[Job], metric: str) -> Any:
    """The summary figure: a sweep's accuracy vs evaluation size, one curve per job, with each job's
    mean over sizes and worst size beside it (bars); without per-size metrics, bars of ``metric``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    varying, _ = varying_overrides(jobs)
    split, curves = size_curves(jobs)
    if curves:
        fig = Figure(figsize=(11, 4.5))
        FigureCanvasAgg(fig)
        ax, side = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        colors = {}
        for label, points in curves.items():
            (line,) = ax.plot(*zip(*points, strict=True), marker="o", label=label)
            colors[label] = line.get_color()
        sizes = sorted({s for points in curves.values() for s, _ in points})
        ax.set_xlabel("evaluation size (px per side; h x w at the side of equal area)")
        ax.set_ylabel(f"{split}/acc")
        ax.set_xticks(sizes)
        ax.set_title(f"{split} accuracy vs evaluation size, one curve per job")
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
        labels = list(curves)
        rows = range(len(labels))
        means = [sum(v for _, v in curves[k]) / len(curves[k]) for k in labels]
        worst = [min(v for _, v in curves[k]) for k in labels]
        height = 0.38
        side.barh([r - height / 2 for r in rows], means, height, color=[colors[k] for k in labels])
        side.barh(
            [r + height / 2 for r in rows], worst, height, color=[colors[k] for k in labels], alpha=0.45
        )
        for r, (m, w) in enumerate(zip(means, worst, strict=True)):
            side.text(m, r - height / 2, f" mean {m:.3f}", va="center", fontsize=7)
            side.text(w, r + height / 2, f" worst {w:.3f}", va="center", fontsize=7)
        side.set_yticks(list(rows), labels, fontsize=7)
        side.invert_yaxis()
        side.set_xlim(0, max(1.0, max(means) * 1.25))
        side.set_xlabel(f"{split}/acc over the sizes: mean (solid), worst (pale)")
        side.set_title("mean and worst over sizes", fontsize=10)
        side.grid(alpha=0.3, axis="x")
    else:
        bars = [(_label(j, varying), j.value(metric)) for j in jobs]
        bars = [(n, v) for n, v in bars if isinstance(v, int | float) and not isinstance(v, bool)]
        if not bars:
            return None
        fig = Figure(figsize=(7, 1.2 + 0.35 * len(bars)))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        names, values = zip(*bars, strict=True)
        ax.barh(range(len(bars)), values)
        ax.set_yticks(range(len(bars)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(metric)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.4f}", va="center", fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot(jobs: Sequence[Job], path: Path, metric: str) -> Path | None:
    """:func:`draw` saved as ``path`` (None when there is nothing to draw)."""
    fig = draw(jobs, metric)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    fig.clear()
    return path


def summarize(root: str | Path, sort: str = "val/acc", ascending: bool = False, write: bool = True) -> str:
    """Build the summary of ``root``; write the csv/md/png files there unless ``write`` is False."""
    root = Path(root)
    jobs = find_jobs(root)
    check_sort_key(jobs, sort)
    jobs = sort_jobs(jobs, sort, ascending)
    columns = columns_for(jobs)
    if sort not in columns:  # the order's key is shown (val/loss, a shared override), before speed
        columns.insert(columns.index("img/s"), sort)
    rows = table_rows(jobs, columns)
    _, common = varying_overrides(jobs)
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    header = [f"{root}: {len(jobs)} job(s), " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    if common:
        header.append("common overrides: " + " ".join(f"{k}={v}" for k, v in common.items()))
    header.append(f"sorted by {sort} ({'ascending' if ascending else 'descending'})")
    text = "\n".join([*header, "", format_text(columns, rows)])
    if write:
        with open(root / "summary.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(table_rows(jobs, columns, exact=True))
        (root / "summary.md").write_text(
            "\n\n".join(["\n".join(header), format_markdown(columns, rows)]) + "\n"
        )
        png = plot(jobs, root / "summary.png", sort)
        text += "\n\nwrote " + ", ".join(
            str(p) for p in (root / "summary.csv", root / "summary.md", png) if p is not None
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], prog="summarize.py")
    parser.add_argument("path", help="a sweep folder (logs/multirun/<time>) or one run folder")
    parser.add_argument("--sort", default="val/acc", help="column or metric to sort by (default: val/acc)")
    parser.add_argument("--ascending", action="store_true", help="smallest first (e.g. for val/loss)")
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    args = parser.parse_args(argv)
    try:
        print(summarize(args.path, sort=args.sort, ascending=args.ascending, write=not args.no_write))
    except ResflexError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
