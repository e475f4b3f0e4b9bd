"""A resflex run's training throughput from its TensorBoard events, as images over wall time.

    python experiments/performance/tb_rate.py <run dir>

The throughput logger writes a point every ``log_every_n_steps`` and at each epoch's end: images
over the wall time since the previous point (data waiting included; the clock restarts at each
epoch's start, so validation is not counted). A point at global step s after a point at step s'
covers s - s' steps, so its wall time is (s - s') · batch / rate; the window's rate is the images
of its points over the sum of their wall times — **images over wall time of the same window**, the
definition the plain loop (``plain_loop.py``) uses, not the mean of the interval rates (which is at
least the aggregate rate and leans towards resflex; issue 28). The batch size cancels out; a partial
last batch of an epoch counts as a full one (under one batch per epoch).

Epochs are told apart by the validation points at each epoch's end (resflex's TensorBoard logger
drops Lightning's ``epoch`` scalar; runs logged before that are read with it). The figure compared
is the epochs after the first (the first includes worker start-up).
"""

from __future__ import annotations

import sys
from bisect import bisect_left, bisect_right
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def aggregate(points: list[tuple[int, float]]) -> tuple[float, float]:
    """``(steps covered, images/s)`` points -> (steps, Σ steps / rate); the ratio of the two is the
    window's images over wall time (each point's seconds are steps · batch / rate: the batch cancels)."""
    steps = sum(n for n, _ in points)
    seconds = sum(n / rate for n, rate in points)
    return steps, seconds


def main(run: str) -> None:
    events = sorted(Path(run).rglob("events.out.tfevents.*"))
    if not events:
        raise SystemExit(f"error: no TensorBoard events under {run}")
    acc = EventAccumulator(str(events[0].parent), size_guidance={"scalars": 0})
    acc.Reload()
    rates = sorted(acc.Scalars("train/images_per_sec"), key=lambda p: p.step)
    tags = acc.Tags()["scalars"]
    per_epoch: dict[int, list[tuple[int, float]]] = {}
    previous = 0
    if "epoch" in tags:
        epochs = acc.Scalars("epoch")
        steps, values = [e.step for e in epochs], [int(e.value) for e in epochs]
        epoch_of = lambda step: values[max(0, bisect_right(steps, step) - 1)] if values else 0  # noqa: E731
    else:  # an epoch ends one step after its validation point (the epoch-end rate is logged there)
        ends = sorted({e.step + 1 for e in acc.Scalars("val/acc")}) if "val/acc" in tags else []
        epoch_of = lambda step: bisect_left(ends, step)  # noqa: E731
    for point in rates:
        per_epoch.setdefault(epoch_of(point.step), []).append((point.step - previous, point.value))
        previous = point.step
    for epoch, points in sorted(per_epoch.items()):
        steps, seconds = aggregate(points)
        print(f"epoch {epoch}: {steps / seconds:.1f} images/s (images over wall time, {len(points)} points)")
    later = [p for e, points in per_epoch.items() if e > 0 for p in points] or [
        p for points in per_epoch.values() for p in points
    ]
    steps, seconds = aggregate(later)
    print(f"resflex: epochs after the first {steps / seconds:.1f} images/s (images over wall time)")


if __name__ == "__main__":
    main(sys.argv[1])
