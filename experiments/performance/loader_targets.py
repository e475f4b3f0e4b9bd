"""The issue #18 targets across several ``--sections loader`` runs: one row per run and decoder.

Why a table over runs: on the shared dev VM one pipeline's samples spread by +-10 % within a run,
so a target near its bound is judged on every run, not on the best one.

    python experiments/performance/loader_targets.py RUN1.json RUN2.json ... --csv loader_targets_cpu.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path


def rows(paths: list[Path]) -> list[dict[str, object]]:
    out = []
    for path in paths:
        record = json.loads(path.read_text())["loader"]
        for size, target in record["targets"].items():
            for decoder, ratio in target["by_decoder"].items():
                out.append(
                    {
                        "run": path.name,
                        "size": int(size),
                        "target": target["target"],
                        "decoder": decoder,
                        "default": decoder == record["default_decoder"],
                        "ratio_vs_timm": ratio,
                        "load_start": record["load_average"]["start"][0],
                        "load_end": record["load_average"]["end"][0],
                    }
                )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="JSON files of scripts/benchmark.py --json")
    parser.add_argument("--csv", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    table = rows(args.runs)
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    for size in sorted({r["size"] for r in table}):
        for decoder in dict.fromkeys(r["decoder"] for r in table):
            ratios = [r["ratio_vs_timm"] for r in table if (r["size"], r["decoder"]) == (size, decoder)]
            goal = next(r["target"] for r in table if r["size"] == size)
            met = sum(r >= goal for r in ratios)
            print(
                f"train square @{size} {decoder:<12} ratio vs timm: "
                f"{', '.join(f'{r:.3f}' for r in ratios)} (median {statistics.median(ratios):.3f}); "
                f">= {goal} in {met}/{len(ratios)} runs"
            )


if __name__ == "__main__":
    sys.exit(main())
