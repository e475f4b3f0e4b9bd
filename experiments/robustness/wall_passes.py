"""Every timing pass of one compute, side by side, and all their pairs pooled:

    python experiments/robustness/wall_passes.py experiments/robustness/timing_shapes.csv \
        fixed_b:up fixed_c:up075 ...   # BASELINE:CELL, one per pass

Why a script: on this machine two runs of the same deterministic command differ by up to 0.1× of
their wall time, as much as the cost being measured, so one pass of three pairs does not settle
the issue's 1.1× budget; each pass's rows carry their own name (``fixed_c``, ``up075_d`` ...) so
table.py keeps them apart. This pools the pairs of every pass (a pair: a cell's run over the run
without the term just before it, the same ``seed``, i.e. pair index) into one mean and one median.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path

from table import paired_ratios, spread


def pair_ratios(rows: list[dict[str, str]], baseline: str, cell: str) -> list[float]:
    """``cell``'s wall time over ``baseline``'s, paired by seed (a pass's pair index), in seed order;
    completed runs only."""
    by_cell: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    for row in rows:
        if row.get("status", "completed") == "completed":
            by_cell[row["cell"]][row["seed"]] = row
    return paired_ratios(by_cell[cell], by_cell[baseline])


def markdown(rows: list[dict[str, str]], passes: list[tuple[str, str]]) -> str:
    head = ["pass (without the term : with it)", "pairs", "each pair", "wall ×"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pooled: list[float] = []
    for baseline, cell in passes:
        ratios = pair_ratios(rows, baseline, cell)
        pooled += ratios
        each = ", ".join(f"{r:.2f}" for r in ratios) or "–"
        lines.append(f"| {baseline} : {cell} | {len(ratios)} | {each} | {spread(ratios)}× |")
    median = f"median {statistics.median(pooled):.3f}×" if pooled else "–"
    lines.append(f"| all passes | {len(pooled)} | {median} | {spread(pooled)}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="timing_shapes.csv")
    parser.add_argument("passes", nargs="+", help="BASELINE:CELL, one per timing pass")
    args = parser.parse_args()
    with args.results.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    passes = [tuple(p.split(":", 1)) for p in args.passes]
    if any(len(p) != 2 for p in passes):
        parser.error("each pass is BASELINE:CELL, e.g. fixed_c:up075")
    print(markdown(rows, passes))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
