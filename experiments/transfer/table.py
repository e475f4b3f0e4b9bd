#!/usr/bin/env python
"""Print the fine-tuning comparison of ``run.sh`` as a markdown table (val accuracy of the last epoch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from resflex.training.finetune import format_count

ROWS = {
    "scratch": "scratch (random init, full)",
    "probe_random": "linear probe, random backbone",
    "probe": "linear probe, pre-trained",
    "full": "full fine-tune, pre-trained (backbone LR x0.1)",
    "gradual": "gradual unfreeze, pre-trained",
}


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "logs/transfer")
    sizes = sorted((p for p in out.glob("ft*") if p.is_dir()), key=lambda p: int(p.name[2:]))
    pre = json.loads((out / "pretrain" / "metrics.json").read_text())
    print(
        f"pre-training: val/acc {pre['metrics'].get('val/acc', float('nan')):.3f} "
        f"on the 6 source classes, {pre['wall_time_s']:.0f} s\n"
    )
    columns = [f"val acc @{p.name[2:]} px" for p in sizes]
    header = "| strategy | " + " | ".join(columns) + " | trainable params at start | time/run |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for key, label in ROWS.items():
        cells, params, times = [], "", []
        for p in sizes:
            f = p / key / "metrics.json"
            if not f.is_file():
                cells.append("-")
                continue
            record = json.loads(f.read_text())
            cells.append(f"{record['metrics'].get('val/acc', float('nan')):.3f}")
            counts = record.get("params", {})
            params = format_count(counts["trainable"]) if counts else ""
            times.append(record["wall_time_s"])
        mean_time = f"{sum(times) / len(times):.0f} s" if times else "-"
        print(f"| {label} | " + " | ".join(cells) + f" | {params} | {mean_time} |")
    ev = out / "eval" / "eval.csv"
    if ev.is_file():
        print(f"\nscripts/eval.py on {sizes[0].name}/full (val split):\n")
        print(ev.read_text())


if __name__ == "__main__":
    main()
