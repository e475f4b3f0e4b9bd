"""One CSV row per finished timm run of ``timm_peer.sh``: its validate.py accuracy per size on val and
test, worst and mean over the sizes, wall time, commit (resflex's and the timm checkout's), date,
machine and the train.py command, in the columns of ``collect.py`` so ``table.py`` reads both files.

    python experiments/robustness/collect_timm.py OUT.csv RUNS_DIR TIMM_CHECKOUT

Rewrites OUT.csv from every ``RUNS_DIR/<cell>-s<seed>/`` that has its evaluations.
"""

from __future__ import annotations

import csv
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect import commit, machine, write_rows


def accuracies(run: Path, split: str) -> dict[int, float]:
    """validate.py's top-1 (percent in its file) per image size, as a fraction."""
    out = {}
    for path in run.glob(f"eval_{split}_*.csv"):
        rows = list(csv.DictReader(path.open()))
        if rows:
            out[int(path.stem.rsplit("_", 1)[1])] = float(rows[0]["top1"]) / 100
    return dict(sorted(out.items()))


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
    for split in ("val", "test"):
        accs = accuracies(run, split)
        if accs:
            row[f"{split}_acc_worst"] = min(accs.values())
            row[f"{split}_acc_mean_sizes"] = statistics.mean(accs.values())
            for size, acc in accs.items():
                row[f"{split}_acc@{size}"] = acc
    row["command"] = (run / "command.txt").read_text().strip() + "  # then validate.py per size and split"
    return row


def main() -> None:
    out, runs, timm = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    timm_commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=timm, capture_output=True, text=True, check=False
        ).stdout.strip()
        or "aa4b5850"
    )
    common = {"commit": f"{commit()} (timm {timm_commit})", "machine": machine()}
    rows = [r for run in sorted(runs.glob("*-s*")) if run.is_dir() and (r := row_of(run, common))]
    write_rows(out, rows)


if __name__ == "__main__":
    main()
