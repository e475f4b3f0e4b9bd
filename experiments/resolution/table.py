"""The resolution study's table, generated from its result file (never typed):

    python experiments/resolution/table.py experiments/resolution/summary.csv --train-size 32

One row per pooling head (``scripts/summarize.py``'s ``summary.csv`` of the sweep): test accuracy at
every evaluated size, validation accuracy at every size, and the run's wall time. One seed.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

ORDER = ["avg", "max", "pyramid"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--train-size", type=int, default=32)
    args = parser.parse_args()
    with args.csv.open() as f:
        rows = sorted(
            csv.DictReader(f), key=lambda r: ORDER.index(r["pooling"]) if r["pooling"] in ORDER else 99
        )
    sizes = {
        split: sorted(int(k.split("@")[1]) for k in rows[0] if k.startswith(f"{split}/acc@") and rows[0][k])
        for split in ("test", "val")
    }
    head = ["pooling"]
    for split, short in (("test", "test"), ("val", "val")):
        head += [f"{short}@{s}" + (" (train size)" if s == args.train_size else "") for s in sizes[split]]
    head.append("run wall time")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        cols = [row["pooling"]]
        cols += [f"{float(row[f'{split}/acc@{s}']):.3f}" for split in ("test", "val") for s in sizes[split]]
        cols.append(f"{float(row['time_s']):.0f} s")
        print("| " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main()
