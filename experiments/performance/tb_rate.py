"""Mean ``train/images_per_sec`` per epoch of a resflex run, from its TensorBoard events.

    python experiments/performance/tb_rate.py <run dir>

The throughput logger writes a point every ``log_every_n_steps`` (images over wall time
since the previous point, data waiting included). Epochs are told apart by the validation
points at each epoch's end (resflex's TensorBoard logger drops Lightning's ``epoch`` scalar;
runs logged before that are read with it).
"""

from __future__ import annotations

import sys
from bisect import bisect_left, bisect_right
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(run: str) -> None:
    events = sorted(Path(run).rglob("events.out.tfevents.*"))
    if not events:
        raise SystemExit(f"error: no TensorBoard events under {run}")
    acc = EventAccumulator(str(events[0].parent), size_guidance={"scalars": 0})
    acc.Reload()
    rates = acc.Scalars("train/images_per_sec")
    tags = acc.Tags()["scalars"]
    per_epoch: dict[int, list[float]] = {}
    if "epoch" in tags:
        epochs = acc.Scalars("epoch")
        steps, values = [e.step for e in epochs], [int(e.value) for e in epochs]
        for point in rates:
            i = max(0, bisect_right(steps, point.step) - 1)
            per_epoch.setdefault(values[i] if values else 0, []).append(point.value)
    else:  # an epoch ends one step after its validation point (the epoch-end rate is logged there)
        ends = sorted({e.step + 1 for e in acc.Scalars("val/acc")}) if "val/acc" in tags else []
        for point in rates:
            per_epoch.setdefault(bisect_left(ends, point.step), []).append(point.value)
    means = {epoch: sum(v) / len(v) for epoch, v in sorted(per_epoch.items())}
    for epoch, mean in means.items():
        print(f"epoch {epoch}: {mean:.1f} images/s (mean of {len(per_epoch[epoch])} logged points)")
    later = [m for e, m in means.items() if e > 0] or list(means.values())
    print(f"resflex: epochs after the first {sum(later) / len(later):.1f} images/s")


if __name__ == "__main__":
    main(sys.argv[1])
