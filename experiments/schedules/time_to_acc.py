#!/usr/bin/env python
"""Wall time until each job of a sweep first reaches a validation accuracy.

``python experiments/schedules/time_to_acc.py <sweep> [--thresholds 0.90 0.92 0.93]``

Reads the ``val/acc`` series from each job's TensorBoard events; the clock
starts at the job's first logged event (model built, data loaded), so start-up
is excluded and only training + validation time counts. For runs named
``CELL-sSEED`` (``experiments/cells.sh``) a second table gives each cell over its
seeds; ``--csv OUT`` writes one row per run.

``python experiments/schedules/time_to_acc.py RUNS.csv [--jobs fixed-s2 ...]`` prints the table again
from such a CSV (the committed result file; the README includes it between generated markers).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from pathlib import Path

SEED_SUFFIX = re.compile(r"-s\d+$")


def series(run: Path, tag: str) -> tuple[float, list[tuple[float, int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    start, points = float("inf"), []
    for events in sorted(run.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for name in acc.Tags()["scalars"]:
            for event in acc.Scalars(name):
                start = min(start, event.wall_time)
                if name == tag:
                    points.append((event.wall_time, event.step, event.value))
    return start, sorted(points)


def times(run: Path, tag: str, thresholds: list[float]) -> dict[str, object]:
    """One run: final value of ``tag``, seconds to each threshold (None: not reached), wall time."""
    record = json.loads((run / "metrics.json").read_text())
    start, points = series(run, tag)
    row: dict[str, object] = {"job": run.name, "final": round(points[-1][2], 4) if points else None}
    for t in thresholds:
        hit = next((w - start for w, _, v in points if v >= t), None)
        row[f"s_to_{t:.2f}"] = round(hit, 1) if hit is not None else None
    row["run_wall_s"] = record.get("wall_time_s")
    return row


def _cell(key: str, value: object) -> str:
    if key.startswith("s_to"):
        return "not reached" if value is None else f"{value:.1f}"
    return "-" if value is None else str(value)


def by_cell(rows: list[dict[str, object]], thresholds: list[float]) -> list[str]:
    """Jobs named ``CELL-sSEED`` (experiments/cells.sh) grouped per cell: mean final value and the
    median seconds to each threshold over the seeds that reached it (``n/N`` when not all did)."""
    cells: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        cells.setdefault(SEED_SUFFIX.sub("", str(row["job"])), []).append(row)
    lines = []
    for cell, runs in cells.items():
        finals = [float(r["final"]) for r in runs if r["final"] is not None]  # type: ignore[arg-type]
        values = [f"{statistics.mean(finals):.4f}" if finals else "-"]
        for t in thresholds:
            hits = [float(r[f"s_to_{t:.2f}"]) for r in runs if r[f"s_to_{t:.2f}"] is not None]  # type: ignore[arg-type]
            note = "" if len(hits) == len(runs) else f" ({len(hits)}/{len(runs)})"
            values.append(f"{statistics.median(hits):.1f}{note}" if hits else f"not reached (0/{len(runs)})")
        lines.append(f"| {cell} | {len(runs)} | " + " | ".join(values) + " |")
    return lines


def table_from_csv(path: Path, jobs: list[str] | None) -> str:
    """The per-run table from a ``--csv`` file: seconds to each threshold, wall time, final value."""
    with path.open() as f:
        rows = {row["job"]: row for row in csv.DictReader(f)}
    keys = [k for k in next(iter(rows.values())) if k.startswith("s_to_")]
    head = ["job", *(f"s to {k[5:]}" for k in keys), "run wall s", "final val/acc"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for job in jobs or list(rows):
        row = rows[job]
        cols = [job, *(f"{float(row[k]):.1f}" if row[k] else "not reached" for k in keys)]
        cols += [f"{float(row['run_wall_s']):.1f}", f"{float(row['final']):.3f}"]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.90, 0.92, 0.93])
    parser.add_argument("--tag", default="val/acc")
    parser.add_argument("--csv", type=Path, help="also write one row per job here")
    parser.add_argument("--jobs", nargs="*", help="with a CSV: these jobs, in this order")
    args = parser.parse_args()
    if args.sweep.suffix == ".csv":
        print(table_from_csv(args.sweep, args.jobs))
        return
    rows = [times(p.parent, args.tag, args.thresholds) for p in sorted(args.sweep.glob("*/metrics.json"))]
    head = ["job", "final " + args.tag, *(f"s to {t:.2f}" for t in args.thresholds), "run wall s"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(_cell(key, value) for key, value in row.items()) + " |")
    if any(SEED_SUFFIX.search(str(row["job"])) for row in rows):
        head = ["cell", "seeds", "mean final " + args.tag, *(f"median s to {t:.2f}" for t in args.thresholds)]
        print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        print("\n".join(by_cell(rows, args.thresholds)))
    if args.csv and rows:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
