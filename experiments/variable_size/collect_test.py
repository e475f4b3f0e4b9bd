"""One CSV row per finished run of ``test_run.sh``: val accuracy of the checkpoint chosen on val (the
best val/acc) and its test accuracy, at 40 px, with wall time and where the row came from (commit,
machine, finished, command).

    python experiments/variable_size/collect_test.py OUT.csv RUNS_DIR TIMM_CHECKOUT

Rewrites OUT.csv from every finished ``RUNS_DIR/<cell>-s<seed>`` (resflex: ``metrics.json``; the
plain loop: ``result.json``; timm: validate.py's ``eval_{val,test}_40.csv`` of its model_best).
The commit is ``$RESULTS_COMMIT`` (test_run.sh sets the code's commit) or the checkout's HEAD.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "robustness"))
from collect import commit, machine, write_rows

PEER = {"plain": "plain loop", "timm": "timm train.py"}


def finished(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")


def top1(path: Path) -> float | None:
    rows = list(csv.DictReader(path.open())) if path.is_file() else []
    return float(rows[0]["top1"]) / 100 if rows else None


def row_of(run: Path, common: dict[str, str], timm_commit: str) -> dict[str, object] | None:
    cell, _, seed = run.name.rpartition("-s")
    kind = cell.split("_")[0] if cell.startswith(("plain_", "timm_")) else "resflex"
    row: dict[str, object] = {"cell": cell, "seed": seed, "peer": PEER.get(kind, "resflex"), **common}
    if kind == "resflex":
        path = run / "metrics.json"
        record = json.loads(path.read_text()) if path.is_file() else {}
        if record.get("status") != "completed":
            return None
        row["finished"] = finished(path)
        row["wall_time_s"] = record.get("wall_time_s")
        row["val_acc"] = record["best"]["val/acc"]
        row["test_acc"] = record["metrics"].get("test/acc")
        row["command"] = (run.parent / f"{run.name}.command.txt").read_text().strip()
    elif kind == "plain":
        path = run / "result.json"
        if not path.is_file():
            return None
        result = json.loads(path.read_text())
        row["finished"] = finished(path)
        row["wall_time_s"] = round(result["seconds"], 1)
        row["val_acc"] = result["val_acc_best"]
        row["test_acc"] = result.get("test_acc")
        row["command"] = (run / "command.txt").read_text().strip()
    else:
        done = run / "run" / ".evaluated"
        if not done.is_file():
            return None
        row["commit"] = f"{common['commit']} (timm {timm_commit})"
        row["finished"] = finished(done)
        wall = run / "wall_s.txt"
        row["wall_time_s"] = float(wall.read_text()) if wall.is_file() else None
        row["val_acc"] = top1(run / "eval_val_40.csv")
        row["test_acc"] = top1(run / "eval_test_40.csv")
        row["command"] = (run / "command.txt").read_text().strip() + "  # then validate.py on val and test"
    return row


def main() -> None:
    out, runs, timm = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    timm_commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=timm, capture_output=True, text=True, check=False
        ).stdout.strip()
        or "aa4b5850"
    )
    common = {"commit": commit(), "machine": machine()}
    order = ["default", "avg", "squash", "warmup1", "flip", "plain_own", "plain_resflex", "timm_own"]
    order.append("timm_resflex")

    def key(run: Path) -> tuple[int, int, str]:
        cell, _, seed = run.name.rpartition("-s")
        return (int(seed), order.index(cell) if cell in order else len(order), cell)

    found = [run for run in runs.glob("*-s*") if run.is_dir() and run.name.rpartition("-s")[2].isdigit()]
    rows = [r for run in sorted(found, key=key) if (r := row_of(run, common, timm_commit))]
    if rows:
        write_rows(out, rows)


if __name__ == "__main__":
    main()
