"""How far below the trained size each cell's larger size falls, on val and on test, paired by run:

    python experiments/robustness/split_gap.py experiments/robustness/results_shapes.csv \
        [--main 64] [--size 96] [--cells fixed sc_up_075 ...]

Why a script: `make train`'s target reads one split (test: 64 px minus 96 px within 0.05) while the
choices were made on the other (val, calibrated statistics). Printing both gaps for the same runs, and
their paired difference, helps tell a cell's miss on test from the split's: a difference shared by
cells trained differently points at the split's images (both splits are 500 fixed drawings of the
embedded data, the same for every cell) more than at any one training choice.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from table import spread


def gaps(rows: list[dict[str, str]], main: int, size: int) -> dict[str, list[tuple[float, float]]]:
    """Cell -> one (val gap, test gap) per run with both splits (val: calibrated, ``val_cal_acc@``)."""
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    keys = [f"val_cal_acc@{main}", f"val_cal_acc@{size}", f"test_acc@{main}", f"test_acc@{size}"]
    for row in rows:
        if row.get("status", "completed") != "completed" or not all(row.get(k) for k in keys):
            continue
        val_main, val_size, test_main, test_size = (float(row[k]) for k in keys)
        out[row["cell"]].append((val_main - val_size, test_main - test_size))
    return out


def markdown(by_cell: dict[str, list[tuple[float, float]]], cells: list[str], main: int, size: int) -> str:
    head = ["cell", "runs", f"val: {main} − {size} px", f"test: {main} − {size} px", "test − val (paired)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells:
        pairs = by_cell.get(cell, [])
        val = [v for v, _ in pairs]
        test = [t for _, t in pairs]
        lines.append(
            f"| {cell} | {len(pairs)} | {spread(val)} | {spread(test)} | "
            f"{spread([t - v for v, t in pairs], '+')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--main", type=int, default=64, help="the trained size")
    parser.add_argument("--size", type=int, default=96, help="the size compared with it")
    parser.add_argument("--cells", nargs="*", help="default: every cell with both splits, in file order")
    args = parser.parse_args()
    by_cell = gaps(list(csv.DictReader(args.results.open())), args.main, args.size)
    print(markdown(by_cell, args.cells or list(by_cell), args.main, args.size))


if __name__ == "__main__":
    main()
