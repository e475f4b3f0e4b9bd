"""The variable-size study's tables, generated from its result files (never typed):

    python experiments/variable_size/table.py grid results_defaults/results.csv [--larger]
    python experiments/variable_size/table.py pairs results_defaults/results.csv [--head pyramid --base avg]
    python experiments/variable_size/table.py runs results_ablations.csv [--cells CELL ...]
    python experiments/variable_size/table.py test results_test.csv
    python experiments/variable_size/table.py regime results_test_regime.csv

(paths relative to experiments/variable_size/ or the repository root.)

``grid``: pooling × geometry, best val/acc (``--larger``: the final val/acc at the larger size) as
mean ± sd over seeds (n); then the reference rows (plain loop, timm). ``pairs``: head minus base,
paired by geometry and seed, at the trained and the larger size. ``runs``: one row per cell of any
of the study's CSVs: its seeds, each seed's best val/acc, mean ± sd, and, where the file has them,
val/acc at the larger size and test/acc. A row without a seed ran with ``scripts/train.py``'s
default seed, 42.

Every number of ``grid``, ``pairs`` and ``runs`` is **validation** accuracy on the study's 600 val
images, the split the study's choices were made on. ``test`` reads ``results_test.csv``
(``test_run.sh``): per cell, val/acc of the checkpoint chosen on val and that checkpoint's test/acc
on 600 test images no choice was made on, mean ± sd over seeds, and test minus ``default`` paired
by seed; the reading is "level" where the paired gap is within its spread (|mean| ≤ sd), else
ahead / behind (one seed: no reading).

``regime`` reads ``results_test_regime.csv``, the short runs that sized
tests/data/test_variable_size_learning.py: per epochs and threads, each geometry's final val/acc and
its gap to square at the same seed, mean ± sd over seeds, with the worst seed's gap.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
POOLINGS = ["avg", "pyramid", "max"]
GEOMETRIES = ["squash", "square", "pad", "keep_aspect"]
REFERENCES = ["plain loop (squash)", "timm train.py (square)"]


def read(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        path = HERE / path
    with path.open() as f:
        return list(csv.DictReader(f))


def spread(values: list[float], sign: str = "", n: bool = True) -> str:
    """``mean ± sd (n=k)`` (the mean alone for one value; ``sign="+"`` for differences)."""
    if not values:
        return "–"
    text = f"{statistics.mean(values):{sign}.3f}"
    if len(values) > 1:
        text += f" ± {statistics.stdev(values):.3f}"
    return text + (f" (n={len(values)})" if n else "")


def seed_of(row: dict[str, str]) -> str:
    return row["seed"] or "42"


def values(rows: list[dict[str, str]], cell: str, key: str) -> list[float]:
    return [float(r[key]) for r in rows if r["cell"] == cell and r.get(key)]


def grid(rows: list[dict[str, str]], larger: bool) -> str:
    key = "val_acc_larger" if larger else "val_acc_best"
    cells = {r["cell"] for r in rows}
    poolings = [p for p in POOLINGS if any(c.startswith(f"{p}/") for c in cells)]
    geometries = [g for g in [*GEOMETRIES, "auto"] if any(c.endswith(f"/{g}") for c in cells)]
    lines = ["| pooling | " + " | ".join(geometries) + " |", "|---|" + "---|" * len(geometries)]
    for pooling in poolings:
        lines.append(
            f"| {pooling} | "
            + " | ".join(spread(values(rows, f"{pooling}/{g}", key)) for g in geometries)
            + " |"
        )
    refs = [c for c in REFERENCES if values(rows, c, "val_acc_best")]
    if refs and not larger:
        lines += ["", "| reference | val/acc |", "|---|---|"]
        lines += [f"| {c} | {spread(values(rows, c, 'val_acc_best'))} |" for c in refs]
    return "\n".join(lines)


def pairs(rows: list[dict[str, str]], head: str, base: str) -> str:
    runs = {(r["cell"], seed_of(r)): r for r in rows}
    seeds = sorted({seed_of(r) for r in rows}, key=int)
    size = next((r["larger_size"] for r in rows if r.get("larger_size")), "?")
    geometries = [g for g in GEOMETRIES if any((f"{head}/{g}", s) in runs for s in seeds)]
    lines = [f"| geometry | {head} − {base} at the trained size | at {size} px |", "|---|---|---|"]
    for geometry in [*geometries, "all"]:
        diffs: dict[str, list[float]] = {"val_acc_best": [], "val_acc_larger": []}
        for seed in seeds:
            for g in geometries if geometry == "all" else [geometry]:
                a, b = runs.get((f"{head}/{g}", seed)), runs.get((f"{base}/{g}", seed))
                for key in diffs:
                    if a and b and a.get(key) and b.get(key):
                        diffs[key].append(float(a[key]) - float(b[key]))
        lines.append(
            f"| {geometry} | {spread(diffs['val_acc_best'], '+')} | {spread(diffs['val_acc_larger'], '+')} |"
        )
    return "\n".join(lines)


def runs_table(rows: list[dict[str, str]], cells: list[str]) -> str:
    order = cells or list(dict.fromkeys(r["cell"] for r in rows))
    larger = any(r.get("val_acc_larger") for r in rows)
    test = any(r.get("test_acc") for r in rows)
    head = ["run", "seeds", "best val/acc per seed", "mean ± sd"]
    head += ["val/acc, larger size"] if larger else []
    head += ["test/acc"] if test else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in order:
        runs = [r for r in rows if r["cell"] == cell]
        if not runs:
            raise SystemExit(f"no cell {cell!r}")
        accs = [float(r["val_acc_best"]) for r in runs]
        cols = [cell, ", ".join(seed_of(r) for r in runs), ", ".join(f"{a:.3f}" for a in accs)]
        cols.append(spread(accs, n=False) if len(accs) > 1 else "–")
        cols += [spread(values(runs, cell, "val_acc_larger"), n=False)] if larger else []
        cols += [spread(values(runs, cell, "test_acc"), n=False)] if test else []
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


TEST_CELLS = {
    "default": "resflex, today's defaults (keep_aspect, pyramid head, 3 warm-up epochs, no flip)",
    "avg": "resflex, `pooling=avg`",
    "squash": "resflex, `resolution.geometry=squash`",
    "warmup1": "resflex, `scheduler.warmup_epochs=1`",
    "flip": "resflex, `data.augment.hflip=true` (flip 0.5)",
    "plain_own": "plain loop, its own recipe (squash, no augmentation, one-cycle, no smoothing)",
    "plain_resflex": "plain loop, resflex's recipe (squash + jitter, warm-up 3 + cosine, smoothing 0.1)",
    "timm_own": "timm train.py, its own defaults (SGD, crop 0.08-1, flip, jitter 0.4, warm-up 5)",
    "timm_resflex": "timm train.py, resflex's recipe (crop 0.35-1, no flip, AdamW, warm-up 3)",
}


def test_table(rows: list[dict[str, str]]) -> str:
    lines = [
        "| cell | recipe | seeds | val/acc (chosen on) | test/acc | test − default, paired | reading |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {r["seed"]: float(r["test_acc"]) for r in rows if r["cell"] == "default" and r.get("test_acc")}
    cells = [c for c in TEST_CELLS if any(r["cell"] == c for r in rows)]
    cells += [c for c in dict.fromkeys(r["cell"] for r in rows) if c not in TEST_CELLS]
    for cell in cells:
        runs = [r for r in rows if r["cell"] == cell and r.get("test_acc")]
        diffs = [float(r["test_acc"]) - base[r["seed"]] for r in runs if r["seed"] in base]
        reading = "–"
        if cell != "default" and len(diffs) > 1:
            mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
            reading = "level" if abs(mean) <= sd else ("ahead" if mean > 0 else "behind")
        cols = [
            cell,
            TEST_CELLS.get(cell, ""),
            ", ".join(r["seed"] for r in runs),
            spread(values(runs, cell, "val_acc"), n=False),
            spread(values(runs, cell, "test_acc"), n=False),
            "–" if cell == "default" else spread(diffs, "+"),
            reading,
        ]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def regime_table(rows: list[dict[str, str]]) -> str:
    lines = [
        "| epochs | threads | geometry | seeds | final val/acc | − square, paired by seed | worst seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for epochs, threads in dict.fromkeys((r["epochs"], r["threads"]) for r in rows):
        group = [r for r in rows if (r["epochs"], r["threads"]) == (epochs, threads)]
        square = {r["seed"]: float(r["val_acc_final"]) for r in group if r["geometry"] == "square"}
        for geometry in [g for g in GEOMETRIES if any(r["geometry"] == g for r in group)]:
            runs = [r for r in group if r["geometry"] == geometry]
            accs = [float(r["val_acc_final"]) for r in runs]
            gaps = [float(r["val_acc_final"]) - square[r["seed"]] for r in runs if r["seed"] in square]
            paired = geometry != "square" and len(gaps) > 1
            cols = [
                epochs,
                threads,
                geometry,
                str(len(runs)),
                spread(accs, n=False),
                spread(gaps, "+", n=False) if paired else "–",
                f"{min(gaps):+.3f}" if paired else "–",
            ]
            lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["grid", "pairs", "runs", "test", "regime"])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--larger", action="store_true", help="grid: val/acc at the larger size")
    parser.add_argument("--head", default="pyramid")
    parser.add_argument("--base", default="avg")
    parser.add_argument("--cells", nargs="*", default=[])
    args = parser.parse_args()
    rows = read(args.csv)
    if args.what == "grid":
        print(grid(rows, args.larger))
    elif args.what == "pairs":
        print(pairs(rows, args.head, args.base))
    elif args.what == "test":
        print(test_table(rows))
    elif args.what == "regime":
        print(regime_table(rows))
    else:
        print(runs_table(rows, args.cells))


if __name__ == "__main__":
    main()
