"""The robustness study's tables, generated from its result file (never typed):

    python experiments/robustness/table.py experiments/robustness/results_shapes.csv --baseline fixed \
        [--cells fixed multiscale ...] [--split test]

One row per cell: seeds, accuracy at each evaluation size (mean ± sd over seeds), worst and mean
over the sizes, and the paired change against the baseline cell (same seed) of the accuracy at the
main size and of the mean over sizes. ``--split val_cal`` prints the validation numbers the choices were
made on (the best checkpoint with its calibrated statistics: val_calibrated.sh); ``val``, the last
epoch's validation; the default, ``test``, the split that played no part in any choice.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path


def spread(values: list[float], sign: str = "") -> str:
    """``mean ± sd`` over seeds (the mean alone for one value; ``sign="+"``: signed, for differences)."""
    if not values:
        return "–"
    mean = f"{statistics.mean(values):{sign}.3f}"
    return mean if len(values) == 1 else f"{mean} ± {statistics.stdev(values):.3f}"


def wall(runs: dict[str, dict[str, str]]) -> str:
    """Median wall time of a cell's runs (they may have shared the machine: see the README for the
    timing pass)."""
    values = [float(r["wall_time_s"]) for r in runs.values() if r.get("wall_time_s")]
    return f"{statistics.median(values):.0f}" if values else "–"


def paired_ratios(
    runs: dict[str, dict[str, str]], base: dict[str, dict[str, str]], key: str = "wall_time_s"
) -> list[float]:
    """``key`` of each run over the baseline run with the same seed (a timing pass's pair index), in
    seed order; runs without a partner, or without the value, left out."""
    seeds = sorted(runs, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    return [
        float(runs[s][key]) / float(base[s][key])
        for s in seeds
        if runs[s].get(key) and base.get(s, {}).get(key)
    ]


def ratio(runs: dict[str, dict[str, str]], base: dict[str, dict[str, str]], key: str = "wall_time_s") -> str:
    """``key`` (wall time; training pixels) over the baseline's, paired by seed: ``mean ± sd``×."""
    ratios = paired_ratios(runs, base, key)
    return spread(ratios) + "×" if ratios else "–"


def table(
    rows: list[dict[str, str]],
    baseline: str,
    cells: list[str],
    split: str,
    main: int,
    wall_time: bool = False,
    wall_ratio: bool = False,
    pixels: bool = False,
) -> str:
    by_cell: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    for row in rows:
        if row.get("status", "completed") == "completed":
            by_cell[row["cell"]][row["seed"]] = row
    sizes = sorted({int(k.split("@")[1]) for r in rows for k in r if k.startswith(f"{split}_acc@") and r[k]})
    head = ["cell", "seeds", *(f"{s} px" for s in sizes), "worst", "mean", f"Δ@{main} vs {baseline}",
            f"Δmean vs {baseline}"]  # fmt: skip
    base = by_cell.get(baseline, {})
    extras: list[tuple[str, Callable[[dict[str, dict[str, str]]], str]]] = []  # (heading, a cell's value)
    if wall_time:
        extras.append(("wall s", wall))
    if wall_ratio:
        extras.append((f"wall × vs {baseline}", lambda runs: ratio(runs, base)))
    if pixels:
        extras.append((f"pixels × vs {baseline}", lambda runs: ratio(runs, base, "train_megapixels")))
    head += [heading for heading, _ in extras]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells or list(by_cell):
        runs = by_cell.get(cell, {})
        if not runs:
            continue

        def values(key: str, runs: dict[str, dict[str, str]] = runs) -> list[float]:
            return [float(r[key]) for r in runs.values() if r.get(key)]

        def paired(key: str, runs: dict[str, dict[str, str]] = runs) -> list[float]:
            return [
                float(r[key]) - float(base[s][key])
                for s, r in runs.items()
                if r.get(key) and base.get(s, {}).get(key)
            ]

        cols = [cell, str(len(runs)), *(spread(values(f"{split}_acc@{s}")) for s in sizes),
                spread(values(f"{split}_acc_worst")), spread(values(f"{split}_acc_mean_sizes")),
                "–" if cell == baseline else spread(sign="+", values=paired(f"{split}_acc@{main}")),
                "–" if cell == baseline else spread(sign="+", values=paired(f"{split}_acc_mean_sizes")),
                ]  # fmt: skip
        cols += [value(runs) if heading == "wall s" or cell != baseline else "–" for heading, value in extras]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, nargs="+", help="result files (e.g. resflex's and a peer's)")
    parser.add_argument("--baseline", default="fixed")
    parser.add_argument("--cells", nargs="*", default=[])
    parser.add_argument("--split", default="test", choices=["val", "val_cal", "test"])
    parser.add_argument("--main", type=int, default=64, help="the main (trained) size, px")
    parser.add_argument(
        "--wall", action="store_true", help="median wall time per cell (compare only runs made alone)"
    )
    parser.add_argument(
        "--wall-ratio", action="store_true", help="wall time over the baseline's, paired by seed"
    )
    parser.add_argument(
        "--pixels",
        action="store_true",
        help="training pixels (train/megapixels) over the baseline's, paired by seed",
    )
    args = parser.parse_args()
    rows = [row for path in args.csv for row in csv.DictReader(path.open())]
    print(
        table(rows, args.baseline, args.cells, args.split, args.main, args.wall, args.wall_ratio, args.pixels)
    )


if __name__ == "__main__":
    main()
