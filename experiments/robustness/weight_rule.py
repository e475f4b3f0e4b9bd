"""The choice of the scale-consistency term's weight, by the rule written before its last runs.

    python experiments/robustness/weight_rule.py experiments/robustness/results_folder_shapes.csv \
        experiments/robustness/timm_folder_shapes.csv experiments/robustness/results_shapes.csv \
        experiments/robustness/results_fmnist.csv

Why a script: the rule (experiments/robustness/README.md, "Three-quarter weight") reads three result
files at once and counts targets; typing its outcome would be a number no file backs. For each weight
(its cell runs the default's views at that weight) it prints, from validation point estimates:
(a) the shapes folder's 40 px against ``fixed`` (paired by seed; the target: no more than 0.010
below), (b) the shapes folder's worst size over timm's per-batch sizes' worst (at least 0.30),
(c) the embedded shapes' 64 px minus their 96 px (calibrated val; within 0.05), how many of the three
are met, and the tie-break: the mean over ½×-2× against ``fixed``, averaged over the three data sets.
The chosen weight meets the most targets, the tie-break deciding among equals. ``--cells A B``
applies the same rule to other candidates (the views' draw at the chosen weight: README, "The same
budget, more of the smaller view").
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

#: weight -> the cell that ran the default's views (0.6x or 1.4x on an eighth of the steps) at it
CELLS = {1.0: "sc_up_budget", 0.75: "sc_up_075", 0.5: "sc_up_half"}
BASELINE = "fixed"
PEER = "timm_sizes"
#: the seeds the rule was run on (0-5, each cell alike); seeds added later to read a test-split gap
#: (seeds 6-8 of the default and of timm on the shapes folder) do not change what it chose
RULE_SEEDS = frozenset(str(seed) for seed in range(6))
#: slack on each target's bound: a value on the bound (a paired 0.870 − 0.880 is -0.010000000000000009
#: in floats; the files hold float32 accuracies) meets it, as the rule's "no more than"/"at least" say
TIE = 1e-6

Runs = dict[str, dict[str, dict[str, str]]]  # cell -> seed -> row


def load(path: Path) -> Runs:
    """The completed runs of the rule's seeds, by cell and seed."""
    runs: Runs = defaultdict(dict)
    for row in csv.DictReader(path.open()):
        if row.get("status", "completed") == "completed" and row["seed"] in RULE_SEEDS:
            runs[row["cell"]][row["seed"]] = row
    return runs


def mean(runs: Runs, cell: str, key: str) -> float:
    """The mean over seeds (nan where the cell has no runs yet: its row then shows a dash)."""
    values = [float(r[key]) for r in runs[cell].values() if r.get(key)]
    return statistics.mean(values) if values else math.nan


def paired(runs: Runs, cell: str, key: str) -> float:
    """The mean over seeds of ``cell`` minus ``fixed`` at the same seed."""
    base = runs[BASELINE]
    diffs = [float(r[key]) - float(base[s][key]) for s, r in runs[cell].items() if r.get(key) and s in base]
    return statistics.mean(diffs) if diffs else math.nan


def rows(
    folder: Runs, peer: Runs, shapes: Runs, fmnist: Runs, cells: Mapping[float | str, str] = CELLS
) -> list[dict[str, float | str]]:
    """One row per candidate of ``cells`` (label -> cell; the weights by default)."""
    out: list[dict[str, float | str]] = []
    for weight, cell in cells.items():
        at_40 = paired(folder, cell, "val_acc@40")
        over_peer = mean(folder, cell, "val_acc_worst") - mean(peer, PEER, "val_acc_worst")
        gap_96 = mean(shapes, cell, "val_cal_acc@64") - mean(shapes, cell, "val_cal_acc@96")
        met = (at_40 >= -0.010 - TIE) + (over_peer >= 0.30 - TIE) + (gap_96 <= 0.05 + TIE)
        gain = statistics.mean([
            paired(folder, cell, "val_acc_mean_sizes"),
            paired(shapes, cell, "val_cal_acc_mean_sizes"),
            paired(fmnist, cell, "val_acc_mean_sizes"),
        ])  # fmt: skip
        seeds = min(len(folder[cell]), len(shapes[cell]), len(fmnist[cell]))
        out.append({"weight": weight, "cell": cell, "seeds": seeds, "a": at_40, "b": over_peer, "c": gap_96,
                    "met": met, "gain": gain})  # fmt: skip
    return out


def markdown(table: list[dict[str, float | str]]) -> str:
    complete = [r for r in table if not any(math.isnan(float(r[k])) for k in ("a", "b", "c", "gain"))]
    chosen = max(complete, key=lambda r: (r["met"], r["gain"])) if complete else None
    head = ["candidate", "cell", "seeds", "(a) Δ@40 vs fixed, folder", "(b) worst − timm's, folder",
            "(c) 64 − 96 px, shapes", "met", "Δmean vs fixed, 3 data sets", "chosen"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        if r not in complete:
            lines.append(f"| {r['weight']} | {r['cell']} | {r['seeds']} |" + " – |" * 6)
            continue
        lines.append(
            f"| {r['weight']} | {r['cell']} | {r['seeds']} | {r['a']:+.3f} | {r['b']:.3f} | {r['c']:.3f} | "
            f"{r['met']} of 3 | {r['gain']:+.3f} | {'yes' if r is chosen else ''} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="results_folder_shapes.csv")
    parser.add_argument("peer", type=Path, help="timm_folder_shapes.csv")
    parser.add_argument("shapes", type=Path, help="results_shapes.csv (the embedded shapes)")
    parser.add_argument("fmnist", type=Path, help="results_fmnist.csv")
    parser.add_argument("--cells", nargs="+", help="candidates by cell name; default: the weights")
    args = parser.parse_args()
    cells = {cell: cell for cell in args.cells} if args.cells else CELLS
    print(markdown(rows(load(args.folder), load(args.peer), load(args.shapes), load(args.fmnist), cells)))


if __name__ == "__main__":
    main()
