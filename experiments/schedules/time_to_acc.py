#!/usr/bin/env python
"""Wall time until each job of a sweep first reaches a validation accuracy.

``python experiments/schedules/time_to_acc.py <sweep> [--thresholds 0.90 0.92 0.93]``

Reads the ``val/acc`` series from each job's TensorBoard events; the clock
starts at the job's first logged event (model built, data loaded), so start-up
is excluded and only training + validation time counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def series(run: Path, tag: str) -> tuple[float, list[tuple[float, int, float]]]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.90, 0.92, 0.93])
    parser.add_argument("--tag", default="val/acc")
    args = parser.parse_args()
    head = ["job", "final " + args.tag, *(f"s to {t:.2f}" for t in args.thresholds), "run wall s"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for run in sorted(p.parent for p in args.sweep.glob("*/metrics.json")):
        record = json.loads((run / "metrics.json").read_text())
        start, points = series(run, args.tag)
        cells = [run.name, f"{points[-1][2]:.4f}" if points else "-"]
        for t in args.thresholds:
            hit = next((w - start for w, _, v in points if v >= t), None)
            cells.append(f"{hit:.1f}" if hit is not None else "not reached")
        cells.append(f"{record.get('wall_time_s', float('nan')):.1f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
