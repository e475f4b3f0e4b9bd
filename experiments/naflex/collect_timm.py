"""One CSV row per finished timm run of ``timm_peer.sh``: its validate.py accuracy per sequence length
on val and test, its training log's seconds per step and images/s, wall time, and where the row came
from (resflex's commit and the timm checkout's version, machine, finished, the train.py command), in
the columns of ``collect.py`` so ``table.py`` reads both files.

    python experiments/naflex/collect_timm.py OUT.csv RUNS_DIR TIMM_CHECKOUT

Rewrites OUT.csv from every ``RUNS_DIR/<cell>-s<seed>/`` that has its evaluations. ``step_s``: the
median over epochs of train.py's mean step time at each epoch's last logged step (``Time: now
(mean)``); ``images_per_sec``: the median over epochs of the epoch's images over its steps' time.
timm logs no padding (``timing.py`` measures both loaders' padding on the same batches).
"""

from __future__ import annotations

import csv
import re
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect import commit, machine, write_rows

# "Train: 4 [  42/43 (100%)]  Loss: ... Time: 2.1s,  30.5/s  (2.3s,  28.1/s)"
LAST_STEP = re.compile(r"Train: (\d+) \[\s*(\d+)/(\d+) \(100%\)\].*?Time: [\d.]+s,\s*[\d.]+/s\s+\(([\d.]+)s,")


def accuracies(run: Path, split: str) -> dict[int, float]:
    """validate.py's top-1 (percent in its file) per sequence length, as a fraction."""
    out = {}
    for path in run.glob(f"eval_{split}_*.csv"):
        rows = list(csv.DictReader(path.open()))
        if rows:
            out[int(path.stem.rsplit("_", 1)[1])] = float(rows[0]["top1"]) / 100
    return dict(sorted(out.items()))


def timm_version(timm: Path) -> str:
    match = re.search(r"__version__ = '([^']+)'", (timm / "timm" / "version.py").read_text())
    return match[1] if match else "?"


def row_of(run: Path, common: dict[str, str]) -> dict[str, object] | None:
    cell, _, seed = run.name.rpartition("-s")
    if not (run / "run" / ".evaluated").is_file():
        return None
    row: dict[str, object] = {"cell": cell, "seed": seed, "status": "completed", **common}
    row["finished"] = datetime.fromtimestamp(
        (run / "run" / ".evaluated").stat().st_mtime, timezone.utc
    ).isoformat(timespec="seconds")
    wall = run / "wall_s.txt"
    row["wall_time_s"] = float(wall.read_text()) if wall.is_file() else None
    summary = run / "run" / "summary.csv"
    if summary.is_file():
        epochs = list(csv.DictReader(summary.open()))
        best = max(epochs, key=lambda r: float(r["eval_top1"]))
        row["val_acc_best"] = float(best["eval_top1"]) / 100
        row["best_epoch"] = int(best["epoch"])
    row["discarded"] = 0.0
    log = (run / "train.log").read_text() if (run / "train.log").is_file() else ""
    last = LAST_STEP.findall(log)
    samples = re.search(r"batches for (\d+) samples", log)
    if last and samples:
        row["step_s"] = statistics.median(float(m[3]) for m in last)
        # an epoch's images over its steps' time (the log's own rate is the last batch's count / mean time)
        row["images_per_sec"] = statistics.median(int(samples[1]) / (float(m[3]) * int(m[2])) for m in last)
        row["steps"] = sum(int(m[2]) for m in last)
    for split in ("val", "test"):
        for seq_len, acc in accuracies(run, split).items():
            row[f"{split}_acc@{seq_len}"] = acc
    row["command"] = (run / "command.txt").read_text().strip() + "  # then validate.py per length and split"
    return row


def main() -> None:
    out, runs, timm = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    common = {"commit": f"{commit()} (timm {timm_version(timm)} checkout)", "machine": machine()}
    rows = [r for run in sorted(runs.glob("*-s*")) if run.is_dir() and (r := row_of(run, common))]
    write_rows(out, rows)


if __name__ == "__main__":
    main()
