"""One CSV row per finished resflex run of the NaFlex study (``cpu_run.sh``): val and test accuracy
per evaluation length in tokens per image, throughput, padding, wall time, and where the row came
from (commit, machine, finished, command).

    python experiments/naflex/collect.py OUT.csv CELL-sSEED=RUN_DIR [...]

Columns ``val_acc@<n>`` / ``test_acc@<n>``: ``<n>`` is tokens per image. A NaFlex run's metrics are
tagged in tokens already (``eval.seq_lens``); an image run's ``@<s>`` (pixels) becomes ``(s/8)^2``,
the patch grid of an s x s image at patch 8 (exact for square crops; keep_aspect buckets by area
are within a few tokens of it). From the run's TensorBoard events: ``step_s`` (the median over the
logging intervals of seconds per training step, validation excluded), ``images_per_sec`` (the
median of ``train/images_per_sec``), ``padding_share`` (the mean over epochs of
``train/padding_share``; 0 for image batches). ``discarded``: the share of the average image a
run's framing drops (the data profile's, 0 for keep_aspect and NaFlex's whole-image resize).
Appends to OUT.csv (rows of the same cell and seed are replaced).
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "robustness_collect", Path(__file__).resolve().parents[1] / "robustness" / "collect.py"
)
_shared = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_shared)  # type: ignore[union-attr]
commit, machine, write_rows = _shared.commit, _shared.machine, _shared.write_rows
PATCH = 8


def event_stats(run_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    out: dict[str, float] = {}
    if "train/loss" in tags:
        points = events.Scalars("train/loss")
        val_times = sorted(p.wall_time for p in events.Scalars("val/images_per_sec")) if (
            "val/images_per_sec" in tags) else []  # fmt: skip
        per_step = [
            (b.wall_time - a.wall_time) / (b.step - a.step)
            for a, b in itertools.pairwise(points)
            if b.step > a.step and not any(a.wall_time < t < b.wall_time for t in val_times)
        ]
        if per_step:
            out["step_s"] = statistics.median(per_step)
        out["steps"] = points[-1].step + 1
    if "train/images_per_sec" in tags:
        out["images_per_sec"] = statistics.median(p.value for p in events.Scalars("train/images_per_sec"))
    out["padding_share"] = (
        statistics.mean(p.value for p in events.Scalars("train/padding_share"))
        if "train/padding_share" in tags
        else 0.0
    )
    return out


def row_of(name: str, run_dir: Path, common: dict[str, str]) -> dict[str, object]:
    record = json.loads((run_dir / "metrics.json").read_text())
    metrics = record.get("metrics", {})
    cell, _, seed = name.rpartition("-s")
    command_file = run_dir.parent / f"{run_dir.name}.command.txt"
    command = (
        command_file.read_text().strip()
        if command_file.is_file()
        else ("python scripts/train.py " + " ".join(record.get("overrides", [])))
    )
    tokens = record.get("choices", {}).get("resolution") == "naflex"
    row: dict[str, object] = {"cell": cell, "seed": seed, "status": record.get("status"), **common}
    row["finished"] = datetime.fromtimestamp(
        (run_dir / "metrics.json").stat().st_mtime, timezone.utc
    ).isoformat(timespec="seconds")
    row["wall_time_s"] = record.get("wall_time_s")
    row["val_acc_best"] = (record.get("best") or {}).get("val/acc")
    row["best_epoch"] = (record.get("best") or {}).get("epoch")
    profile = record.get("data_profile") or {}
    geometry = "squash" if tokens else profile.get("geometry")  # the geometry auto resolved to
    for override in command.split():
        if override.startswith("resolution.geometry="):  # or the one the command set
            geometry = override.split("=", 1)[1]
    row["discarded"] = (profile.get("discarded") or {}).get(geometry, 0.0 if tokens else None)
    row.update({k: round(v, 6) for k, v in event_stats(run_dir).items()})
    for key, value in metrics.items():
        split, _, n = key.partition("_acc@") if "_acc@" in key else key.partition("/acc@")
        if split in ("val", "test") and n.isdigit():
            count = int(n) if tokens else (int(n) // PATCH) ** 2
            row[f"{split}_acc@{count}"] = value
    row["command"] = command
    return row


def main() -> None:
    out = Path(sys.argv[1])
    common = {"commit": commit(), "machine": machine()}
    new = [row_of(name, Path(run), common) for name, run in (a.rsplit("=", 1) for a in sys.argv[2:])]
    old = list(csv.DictReader(out.open())) if out.is_file() else []
    write_rows(out, _shared.merge_rows(old, new))


if __name__ == "__main__":
    main()
