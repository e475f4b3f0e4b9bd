"""One CSV row per finished run folder of the robustness study: accuracy per evaluation size (val and
test), the robustness summary, wall time, and where the row came from (commit, date, machine, command).

    python experiments/robustness/collect.py OUT.csv CELL-sSEED=RUN_DIR [...]

Appends to OUT.csv (rows of the same cell and seed are replaced), so a study can be collected as
its runs finish. The commit is the checkout's HEAD when collected (runs are collected right after
they finish, from the same checkout).
"""

from __future__ import annotations

import csv
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

SIZE_KEYS = ("val/acc@", "test/acc@")
SUMMARY = ("val/acc_worst", "val/acc_mean_sizes", "test/acc_worst", "test/acc_mean_sizes")


def machine() -> str:
    """The CPU model and core count (the study's numbers depend on it)."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import os

    return f"{model}, {os.cpu_count()} cores, no GPU"


def commit() -> str:
    """HEAD of this checkout, or ``$RESULTS_COMMIT`` (runs made at an earlier commit, collected later)."""
    import os

    if os.environ.get("RESULTS_COMMIT"):
        return os.environ["RESULTS_COMMIT"]
    here = Path(__file__).resolve().parent
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=False
    ).stdout.strip()


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
    row: dict[str, object] = {"cell": cell, "seed": seed, "status": record.get("status"), **common}
    row["finished"] = datetime.fromtimestamp(
        (run_dir / "metrics.json").stat().st_mtime, timezone.utc
    ).isoformat(timespec="seconds")
    row["wall_time_s"] = record.get("wall_time_s")
    row["val_acc_best_epoch"] = (record.get("best") or {}).get("val/acc")
    if metrics.get("train/megapixels") is not None:  # runs since the count existed
        row["train_megapixels"] = metrics["train/megapixels"]
    for key in SUMMARY:
        row[key.replace("/", "_")] = metrics.get(key)
    for key, value in metrics.items():
        if key.startswith(SIZE_KEYS) and key.split("@", 1)[1].isdigit():
            row[key.replace("/", "_")] = value
    calibrated = run_dir / "eval_val" / "eval.json"  # val_calibrated.sh: val per size, calibrated statistics
    accs: dict[int, float] = {}
    if calibrated.is_file():
        results = json.loads(calibrated.read_text())["results"]
        accs = {int(r["height"]): float(r["acc"]) for r in results if r["height"] == r["width"]}
    elif "eval.bn_calibration=false" in command and "eval.sizes_every_epoch" not in command:
        # nothing to calibrate: the run's own val/acc@<size> are its best checkpoint's, validated after fit
        accs = {int(k.split("@")[1]): float(v) for k, v in metrics.items() if k.startswith("val/acc@")
                and k.split("@")[1].isdigit()}  # fmt: skip
    if accs:
        for size, acc in accs.items():
            row[f"val_cal_acc@{size}"] = acc
        row["val_cal_acc_worst"] = min(accs.values())
        row["val_cal_acc_mean_sizes"] = sum(accs.values()) / len(accs)
    row["command"] = command
    return row


def write_rows(out: Path, rows: list[dict[str, object]]) -> None:
    """The rows as CSV: provenance and summary columns first, then one per size, the command last."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    sized = sorted(
        (c for c in columns if "@" in c), key=lambda c: (c.split("_acc@")[0], int(c.split("@")[1]))
    )
    columns = [c for c in columns if "@" not in c and c != "command"] + sized + ["command"]
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    out = Path(sys.argv[1])
    common = {"commit": commit(), "machine": machine()}
    new = [row_of(name, Path(run), common) for name, run in (a.rsplit("=", 1) for a in sys.argv[2:])]
    old = list(csv.DictReader(out.open())) if out.is_file() else []
    write_rows(out, merge_rows(old, new))


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with ``new`` rows added or replacing theirs by (cell, seed) — except a run collected
    before (same ``finished``): its old row stays, so re-collecting a study does not stamp finished
    runs with today's commit (their provenance is the code that ran them)."""
    before = {(r["cell"], str(r["seed"])): r for r in old}
    fresh = [
        r
        for r in new
        if str(before.get((r["cell"], str(r["seed"])), {}).get("finished")) != str(r.get("finished"))
    ]
    keys = {(r["cell"], str(r["seed"])) for r in fresh}
    return [r for r in old if (r["cell"], str(r["seed"])) not in keys] + fresh


if __name__ == "__main__":
    main()
