#!/usr/bin/env python
"""Print the fine-tuning comparison of ``run.sh`` as a markdown table (val accuracy of the last epoch).

    python experiments/transfer/table.py logs/transfer [--csv OUT.csv]   # from the run folders
    python experiments/transfer/table.py experiments/transfer/results.csv  # from the result file
    python experiments/transfer/table.py experiments/transfer/eval_ft32_full.csv   # scripts/eval.py's CSV

From run folders it also writes ``--csv``: one row per strategy (val/acc at each fine-tuning size,
trainable parameters, mean wall time per run); the README's tables are generated from the
committed CSVs (``make results``).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def format_count(n: int) -> str:
    """As resflex.training.finetune.format_count (not imported: the table needs no torch)."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


ROWS = {
    "scratch": "scratch (random init, full)",
    "probe_random": "linear probe, random backbone",
    "probe": "linear probe, pre-trained",
    "full": "full fine-tune, pre-trained (backbone LR x0.1)",
    "gradual": "gradual unfreeze, pre-trained",
}


def from_runs(out: Path, csv_out: Path | None) -> None:
    sizes = sorted((p for p in out.glob("ft*") if p.is_dir()), key=lambda p: int(p.name[2:]))
    pre = json.loads((out / "pretrain" / "metrics.json").read_text())
    rows = [
        {"strategy": "pretrain", "label": "pre-training (6 source classes)",
         "val_acc@" + sizes[0].name[2:]: f"{pre['metrics'].get('val/acc', float('nan')):.4f}",
         "trainable_params": "", "wall_s_per_run": f"{pre['wall_time_s']:.0f}"}
    ]  # fmt: skip
    for key, label in ROWS.items():
        row = {"strategy": key, "label": label, "trainable_params": "", "wall_s_per_run": ""}
        times = []
        for p in sizes:
            f = p / key / "metrics.json"
            if not f.is_file():
                continue
            record = json.loads(f.read_text())
            row[f"val_acc@{p.name[2:]}"] = f"{record['metrics'].get('val/acc', float('nan')):.4f}"
            row["trainable_params"] = str(record.get("params", {}).get("trainable", ""))
            times.append(record["wall_time_s"])
        row["wall_s_per_run"] = f"{sum(times) / len(times):.0f}" if times else ""
        rows.append(row)
    fields = [
        "strategy",
        "label",
        *(f"val_acc@{p.name[2:]}" for p in sizes),
        "trainable_params",
        "wall_s_per_run",
    ]
    if csv_out:
        with csv_out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
    print(table(rows))
    ev = out / "eval" / "eval.csv"
    if ev.is_file():
        print(f"\nscripts/eval.py on {sizes[0].name}/full (val split):\n")
        print(eval_table(ev))


def table(rows: list[dict[str, str]]) -> str:
    pre, rows = rows[0], rows[1:]
    sizes = [k.split("@")[1] for k in rows[0] if k.startswith("val_acc@")]
    pre_acc = next(float(v) for k, v in pre.items() if k.startswith("val_acc@") and v)
    lines = [f"pre-training: val/acc {pre_acc:.3f} on the 6 source classes, {pre['wall_s_per_run']} s", ""]
    lines.append(
        "| strategy | "
        + " | ".join(f"val acc @{s} px" for s in sizes)
        + " | trainable params at start | time/run |"
    )
    lines.append("|" + "---|" * (len(sizes) + 3))
    for row in rows:
        accs = [f"{float(row[f'val_acc@{s}']):.3f}" if row.get(f"val_acc@{s}") else "-" for s in sizes]
        params = row["trainable_params"]
        params = format_count(int(params)) if params.isdigit() else params  # transcribed rows: as reported
        time = f"{row['wall_s_per_run']} s" if row["wall_s_per_run"] else "-"
        lines.append(f"| {row['label']} | " + " | ".join(accs) + f" | {params} | {time} |")
    return "\n".join(lines)


def eval_table(path: Path) -> str:
    """``scripts/eval.py``'s CSV as one row of accuracies per evaluated size."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    lines = ["| eval size | " + " | ".join(r["height"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    lines.append("| val acc | " + " | ".join(f"{float(r['acc']):.3f}" for r in rows) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, nargs="?", default=Path("logs/transfer"))
    parser.add_argument("--csv", type=Path, help="from run folders: also write the result file here")
    args = parser.parse_args()
    if args.source.suffix == ".csv":
        with args.source.open() as f:
            rows = list(csv.DictReader(f))
        print(eval_table(args.source) if "height" in rows[0] else table(rows))
    else:
        from_runs(args.source, args.csv)


if __name__ == "__main__":
    main()
