"""The LAMB check on the default run, per seed, from its result files (never typed):

    python experiments/recipes/table.py experiments/recipes/results_lamb_default.csv \
        --seed42-defaults experiments/variable_size/results_defaults/default_runs.csv

One row per seed: the defaults' and ``optimizer=lamb``'s best val/acc and test/acc, and LAMB minus the
defaults on best val/acc (the split the choice is made on) and on test/acc (the split reported); a last
row with the mean ± sd of both differences. The seed-42 run of the
defaults is the default run recorded by the variable-size study (``default_runs.csv``, its cell
``default run, pooling=pyramid``); rows without a seed are seed 42 (``scripts/train.py``'s default).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path


def read(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--seed42-defaults", type=Path, help="default_runs.csv of the variable-size study")
    parser.add_argument("--cell", default="lamb")
    args = parser.parse_args()
    runs: dict[str, dict[str, dict[str, str]]] = {}
    for row in read(args.csv):
        runs.setdefault(row["cell"], {})[row["seed"] or "42"] = row
    if args.seed42_defaults:
        for row in read(args.seed42_defaults):
            if row["cell"] == "default run, pooling=pyramid":
                runs.setdefault("defaults", {})["42"] = row
    base, other = runs["defaults"], runs[args.cell]
    cell = args.cell
    print(
        f"| seed | defaults val / test | `optimizer={cell}` val / test "
        f"| val: {cell} − defaults | test: {cell} − defaults |"
    )
    print("|---|---|---|---|---|")
    val_diffs, test_diffs = [], []
    for seed in sorted(set(base) & set(other), key=int):
        b, o = base[seed], other[seed]
        val_diffs.append(float(o["val_acc_best"]) - float(b["val_acc_best"]))
        test_diffs.append(float(o["test_acc"]) - float(b["test_acc"]))
        print(
            f"| {seed} | {float(b['val_acc_best']):.3f} / {float(b['test_acc']):.3f} | "
            f"{float(o['val_acc_best']):.3f} / {float(o['test_acc']):.3f} | "
            f"{val_diffs[-1]:+.3f} | {test_diffs[-1]:+.3f} |"
        )
    means = [f"{statistics.mean(d):+.3f} ± {statistics.stdev(d):.3f}" for d in (val_diffs, test_diffs)]
    print(f"| mean ± sd | | | {means[0]} | {means[1]} |")


if __name__ == "__main__":
    main()
