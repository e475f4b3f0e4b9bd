"""The NaFlex study's tables, generated from its result files (never typed):

    python experiments/naflex/table.py experiments/naflex/results.csv experiments/naflex/timm.csv \\
        [--split test|val] [--cost] [--baseline naflex] [--cells naflex buckets ...]
    python experiments/naflex/table.py experiments/naflex/timing.csv --timing

Accuracy (the default): one row per cell, seeds, accuracy at each evaluation length in tokens per
image (mean ± sd over seeds; an image cell's s px is (s/8)^2 tokens), the mean over the lengths,
and the paired change against the baseline cell (same seed) at 64 tokens (the length every run
was chosen at) and of the mean. ``--split val``: the numbers the checkpoints were chosen on (the
best checkpoint by val/acc at 64 tokens, validated at every length after fit); ``test``, the
split that played no part in any choice. ``--cost``: padded share of token slots, share of the
image a framing drops, training images/s, seconds per training step (every cell's steps hold
6,144 token slots) and wall time (runs made one at a time, beside other work on the machine).
``--timing``: timing.py's side-by-side measurement, one row per measurement and side.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path


def spread(values: list[float], sign: str = "", digits: int = 3, scale: float = 1.0) -> str:
    """``mean ± sd`` over seeds (the mean alone for one value; ``sign="+"``: signed, for differences)."""
    if not values:
        return "–"
    values = [v * scale for v in values]
    mean = f"{statistics.mean(values):{sign}.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ± {statistics.stdev(values):.{digits}f}"


def by_cell(rows: list[dict[str, str]]) -> dict[str, dict[str, dict[str, str]]]:
    out: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    for row in rows:
        if row.get("status", "completed") == "completed":
            out[row["cell"]][row["seed"]] = row
    return out


def values(runs: dict[str, dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in runs.values() if r.get(key) not in (None, "")]


def mean_over(row: dict[str, str], keys: list[str]) -> str:
    got = [float(row[k]) for k in keys if row.get(k) not in (None, "")]
    return str(statistics.mean(got)) if len(got) == len(keys) else ""


def accuracy(rows: list[dict[str, str]], baseline: str, cells: list[str], split: str, main: int) -> str:
    prefix = f"{split}_acc@"
    lengths = sorted({int(k.split("@")[1]) for r in rows for k in r if k.startswith(prefix) and r[k]})
    keys = [f"{split}_acc@{n}" for n in lengths]
    for row in rows:
        row["mean"] = mean_over(row, keys)
    cells_runs = by_cell(rows)
    base = cells_runs.get(baseline, {})
    head = ["cell", "seeds", *(f"{n} tok" for n in lengths), "mean", f"Δ@{main} vs {baseline}",
            f"Δmean vs {baseline}"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells or list(cells_runs):
        runs = cells_runs.get(cell, {})
        if not runs:
            continue

        def paired(key: str, runs: dict[str, dict[str, str]] = runs) -> list[float]:
            return [
                float(r[key]) - float(base[s][key])
                for s, r in runs.items()
                if r.get(key) and base.get(s, {}).get(key)
            ]

        cols = [cell, str(len(runs)), *(spread(values(runs, k)) for k in keys), spread(values(runs, "mean")),
                "–" if cell == baseline else spread(paired(f"{split}_acc@{main}"), sign="+"),
                "–" if cell == baseline else spread(paired("mean"), sign="+")]  # fmt: skip
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def cost(rows: list[dict[str, str]], cells: list[str]) -> str:
    head = ["cell", "seeds", "padded slots %", "image dropped %", "train images/s", "s / step", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cells_runs = by_cell(rows)
    for cell in cells or list(cells_runs):
        runs = cells_runs.get(cell, {})
        if not runs:
            continue
        wall = values(runs, "wall_time_s")
        cols = [
            cell,
            str(len(runs)),
            spread(values(runs, "padding_share"), digits=1, scale=100),
            spread(values(runs, "discarded"), digits=1, scale=100),
            spread(values(runs, "images_per_sec"), digits=1),
            spread(values(runs, "step_s"), digits=2),
            f"{statistics.median(wall):.0f}" if wall else "–",
        ]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def timing(rows: list[dict[str, str]]) -> str:
    lengths = [k.split("@")[1] for k in rows[0] if k.startswith("s_per_step@")] if rows else []
    head = ["finished", "side", "slots / step", "steps", "s / step", *(f"s / step at {n}" for n in lengths),
            "padded slots %", "resflex / timm"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        when = r["finished"][:16].replace("T", " ")
        slots, step = f"{float(r['slots_per_step']):.0f}", float(r["s_per_step"])
        cols = [when, r["side"], slots, r["steps"], f"{step:.3f}",
                *(f"{float(r[f's_per_step@{n}']):.3f}" if r[f"s_per_step@{n}"] else "–" for n in lengths),
                f"{100 * float(r['padding_share']):.1f}",
                f"{float(r['ratio_vs_timm']):.3f}" if r["side"] == "resflex" else "–"]  # fmt: skip
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, nargs="+", help="result files (resflex's and timm's)")
    parser.add_argument("--baseline", default="naflex")
    parser.add_argument("--cells", nargs="*", default=[])
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--main", type=int, default=64, help="the length checkpoints were chosen at, tokens")
    parser.add_argument("--cost", action="store_true", help="padding, dropped image, throughput, wall time")
    parser.add_argument("--timing", action="store_true", help="the file is timing.py's: its table")
    args = parser.parse_args()
    rows = [row for path in args.csv if path.is_file() for row in csv.DictReader(path.open())]
    if args.timing:
        print(timing(rows))
    elif args.cost:
        print(cost(rows, args.cells))
    else:
        print(accuracy(rows, args.baseline, args.cells, args.split, args.main))


if __name__ == "__main__":
    main()
