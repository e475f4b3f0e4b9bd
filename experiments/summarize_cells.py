"""A CPU study's CSV (``collect_extra.py``'s rows, experiments/cells.sh) as a markdown table: one row
per cell.

Per cell: seeds, best val/acc and test/acc as mean ± standard deviation over seeds, the change of
test/acc against the baseline cell paired by seed (mean ± sd of the per-seed differences; pairing
removes what the seed does to both), and seconds per training epoch (median over its runs; the
training loop only, from the logged images/s, so it shows what a switch costs, not the load of the
machine at the time only). ``--val-pairs`` adds the same paired change on best val/acc (the split
the choices are made on) before the test one. ``--timing T.csv`` takes seconds per epoch from
another CSV instead (the timing pass: one short run per cell, one at a time on a quiet machine, so
cells run under different loads compare). Cells in the order given, else the CSV's.

    python experiments/summarize_cells.py experiments/recipes/results_transfer.csv --val-pairs \
        --baseline finetune --cells finetune finetune_preset_v2 finetune_ema ... \
        > experiments/recipes/summary_transfer.md

``--resolutions`` prints test/acc at each extra evaluation size instead (the ``test_acc@N`` columns of
runs with ``eval.resolutions``), mean ± sd over seeds per cell (with ``--baseline B --main 64``: the
change at 64 px against B, paired by seed); ``--pairs A:B ...`` the per-size differences A − B,
paired by seed. The READMEs include these tables between ``<!-- generated: COMMAND -->`` markers
(``make results``, tests/test_generated_tables.py).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path


def spread(values: list[float]) -> str:
    """``mean ± sd`` (sd over seeds; just the mean for one value)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def signed_spread(values: list[float]) -> str:
    """``+mean ± sd`` of differences (just the signed mean for one)."""
    if len(values) == 1:
        return f"{values[0]:+.3f}"
    return f"{statistics.mean(values):+.3f} ± {statistics.stdev(values):.3f}"


def by_cell_and_seed(rows: list[dict[str, str]]) -> dict[str, dict[str, dict[str, str]]]:
    by_cell: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    for row in rows:
        by_cell[row["cell"]][row["seed"]] = row
    return by_cell


def seconds_per_epoch(runs: dict[str, dict[str, str]]) -> str:
    """Median training seconds per epoch over a cell's runs (``—`` without a CSV log)."""
    values = [float(run["train_s_per_epoch"]) for run in runs.values() if run.get("train_s_per_epoch")]
    return f"{statistics.median(values):.1f}" if values else "—"


def table(
    rows: list[dict[str, str]],
    baseline: str,
    cells: list[str] | None,
    timing: list[dict[str, str]] | None = None,
    val_pairs: bool = False,
) -> str:
    """One row per cell; ``val_pairs`` adds the change of best val/acc against the baseline, paired
    by seed, before the test one (the choosing split beside the reporting split)."""
    by_cell = by_cell_and_seed(rows)
    timed = by_cell_and_seed(timing) if timing is not None else by_cell
    order = cells or list(by_cell)
    base = by_cell.get(baseline, {})
    head = ["cell", "seeds", "best val/acc", "test/acc"]
    head += [f"val/acc − {baseline} (paired by seed)"] if val_pairs else []
    head += [f"test/acc − {baseline} (paired by seed)", "s / epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in order:
        runs = by_cell.get(cell)
        if not runs:
            continue
        seeds = sorted(runs)
        val = [float(runs[s]["val_acc_best"]) for s in seeds]
        test = [float(runs[s]["test_acc"]) for s in seeds]
        cols = [cell, str(len(seeds)), spread(val), spread(test)]
        for key in (["val_acc_best"] if val_pairs else []) + ["test_acc"]:
            paired = [float(runs[s][key]) - float(base[s][key]) for s in seeds if s in base]
            cols.append("—" if cell == baseline or not paired else signed_spread(paired))
        cols.append(seconds_per_epoch(timed.get(cell, {})))
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def resolution_table(
    rows: list[dict[str, str]],
    cells: list[str] | None,
    baseline: str | None = None,
    main: int | None = None,
    seconds: bool = True,
) -> str:
    """Per cell: test/acc at each evaluated size (``test_acc@N``), mean ± sd over seeds; with
    ``baseline`` and ``main`` also the change at the main size against the baseline cell, paired by
    seed; ``seconds=False`` drops the seconds per epoch (runs that shared the machine)."""
    sizes = sorted({int(k.split("@")[1]) for row in rows for k, v in row.items() if "@" in k and v})
    by_cell = by_cell_and_seed(rows)
    base = by_cell.get(baseline, {}) if baseline else {}
    head = ["cell", "seeds", *(f"{size} px" for size in sizes)]
    head += [f"{main} px − {baseline} (paired)"] if baseline and main else []
    head += ["s / epoch"] if seconds else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells or list(by_cell):
        runs = by_cell.get(cell)
        if not runs:
            continue
        cols = [cell, str(len(runs))]
        cols += [spread([float(r[f"test_acc@{size}"]) for r in runs.values()]) for size in sizes]
        if baseline and main:
            key = f"test_acc@{main}"
            paired = [float(r[key]) - float(base[s][key]) for s, r in runs.items() if s in base]
            cols.append("—" if cell == baseline or not paired else signed_spread(paired))
        cols += [seconds_per_epoch(runs)] if seconds else []
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def paired_table(rows: list[dict[str, str]], pairs: list[str]) -> str:
    """``A:B`` pairs: test/acc of cell A minus cell B at each evaluated size, paired by seed (mean ± sd
    of the per-seed differences) and how many seeds have A ahead."""
    sizes = sorted({int(k.split("@")[1]) for row in rows for k, v in row.items() if "@" in k and v})
    by_cell = by_cell_and_seed(rows)
    lines = [
        "| pair | seeds | " + " | ".join(f"{size} px" for size in sizes) + " |",
        "|---|---|" + "---|" * len(sizes),
    ]
    for pair in pairs:
        a, b = pair.split(":")
        seeds = sorted(set(by_cell.get(a, {})) & set(by_cell.get(b, {})))
        cols = []
        for size in sizes:
            key = f"test_acc@{size}"
            diffs = [float(by_cell[a][s][key]) - float(by_cell[b][s][key]) for s in seeds]
            ahead = sum(d > 0 for d in diffs)
            cols.append(f"{signed_spread(diffs)} ({ahead}/{len(diffs)} ahead)")
        lines.append(f"| {a} − {b} | {len(seeds)} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--baseline", help="the cell the others are compared with")
    parser.add_argument("--cells", nargs="*", help="cells and their order (default: all, CSV order)")
    parser.add_argument("--timing", type=Path, help="seconds per epoch from this CSV (the timing pass)")
    parser.add_argument(
        "--val-pairs", action="store_true", help="also best val/acc minus the baseline's, paired by seed"
    )
    parser.add_argument("--resolutions", action="store_true", help="test/acc per evaluated size instead")
    parser.add_argument("--main", type=int, help="with --resolutions and --baseline: the paired size, px")
    parser.add_argument("--no-seconds", action="store_true", help="with --resolutions: no s / epoch column")
    parser.add_argument("--pairs", nargs="*", help="A:B ... test/acc of A minus B per size, paired by seed")
    args = parser.parse_args()
    if args.pairs:
        print(paired_table(read_rows(args.csv), args.pairs))
        return
    if args.resolutions:
        rows = read_rows(args.csv)
        print(resolution_table(rows, args.cells, args.baseline, args.main, not args.no_seconds))
        return
    if not args.baseline:
        parser.error("--baseline is required (or --resolutions)")
    timing = read_rows(args.timing) if args.timing else None
    print(table(read_rows(args.csv), args.baseline, args.cells, timing, args.val_pairs))


if __name__ == "__main__":
    main()
