#!/usr/bin/env python
"""Accuracy vs resolution across runs, one curve per run folder, in one PNG:
``python scripts/plot_resolution.py logs/multirun/<time>/* --out fig.png --stage test [--train-size 32]``.

Reads each run's ``metrics.json`` (the per-size ``val/acc@<size>`` / ``test/acc@<size>``) and draws
them with :func:`resflex.training.resolution_eval.draw_accuracy_vs_resolution`, the plot each run
also writes for itself (``<run>/acc_vs_resolution.png``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resflex.training.resolution_eval import curve_from_metrics, draw_accuracy_vs_resolution


def run_label(run: Path, record: Mapping[str, Any]) -> str:
    """The curve's name: the run's pooling choice when it has one (the sweep this plot was made for)."""
    choices = record.get("choices") or {}
    if choices.get("pooling"):
        return f"{choices['pooling']} pooling"
    return run.name


def main(argv: Sequence[str] | None = None) -> None:
    """Plot one curve per run folder (each with a ``metrics.json``) into one PNG."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding metrics.json")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--stage", default="test", choices=("val", "test"))
    parser.add_argument("--train-size", type=int, action="append", default=[], help="mark a training side")
    args = parser.parse_args(argv)
    curves = {}
    for run in args.runs:
        record = json.loads((run / "metrics.json").read_text())
        curves[run_label(run, record)] = curve_from_metrics(record.get("metrics", {}), args.stage)
    title = f"{args.stage} accuracy vs resolution"
    figure = draw_accuracy_vs_resolution(curves, args.train_size, title=title)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
