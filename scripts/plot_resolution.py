#!/usr/bin/env python
"""Accuracy vs resolution across runs, one curve per run folder, in one PNG:
``python scripts/plot_resolution.py logs/multirun/<time>/* --out fig.png --stage test [--train-size 32]``.

Reads each run's ``metrics.json`` (the per-size ``val/acc@<size>`` / ``test/acc@<size>``) and draws
them with :func:`resflex.training.resolution_eval.draw_accuracy_vs_resolution`, the plot each run
also writes for itself (``<run>/acc_vs_resolution.png``).

A sweep folder's glob also matches ``multirun.yaml`` and ``summary.*``: paths that are not run
folders (a file, a folder without ``metrics.json``) are skipped with one line each. Each curve is
named by the overrides that differ between the runs (``pooling=avg,backbone=resnet18``, read as
``scripts/summarize.py`` reads them: the run's record, else ``.hydra/overrides.yaml``), else by
its folder, so no two runs share a name and none is drawn over another.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from resflex.errors import ResflexError
from resflex.run_folder import METRICS_FILE
from resflex.sweep_jobs import Job, load_job, varying_overrides
from resflex.training.resolution_eval import curve_from_metrics, draw_accuracy_vs_resolution
from resflex.validation import check_writable


def load_runs(paths: Sequence[Path]) -> list[Job]:
    """The run folders among ``paths``, each read once; the others are skipped with one line each."""
    jobs: list[Job] = []
    seen: set[Path] = set()
    for path in paths:
        if not path.is_dir():
            reason = "no such file or folder" if not path.exists() else "a file, not a run folder"
        elif not (path / METRICS_FILE).is_file():
            reason = f"no {METRICS_FILE} (not a run folder, or a run still starting)"
        else:
            job = load_job(path)
            reason = "" if job.status != "unreadable" else job.error
            if not reason and path.resolve() in seen:
                reason = "given twice"
            if not reason:
                seen.add(path.resolve())
                jobs.append(job)
                continue
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not jobs:
        raise ResflexError(
            f"no run folder among the {len(paths)} path(s) given",
            hint="pass run folders holding metrics.json, e.g. logs/multirun/<time>/*/",
        )
    return jobs


def curve_labels(jobs: Sequence[Job]) -> list[str]:
    """One distinct name per run: the overrides that differ between the runs (not ``hydra.*``, which
    names folders), else the folder's name, else its path."""
    varying, _ = varying_overrides(jobs)
    keys = [k for k in varying if not k.startswith("hydra.")] if len(jobs) > 1 else []
    names = []
    for job in jobs:
        base = ",".join(f"{k}={job.overrides[k]}" for k in keys if k in job.overrides)
        names.append(
            [base, f"{base} ({job.path.name})", f"{base} ({job.path})"]
            if base
            else ["", job.path.name, str(job.path)]
        )
    level = [0 if name[0] else 1 for name in names]
    while True:
        labels = [name[k] for name, k in zip(names, level, strict=True)]
        clashes = [i for i, label in enumerate(labels) if labels.count(label) > 1 and level[i] < 2]
        if not clashes:
            return labels
        for i in clashes:
            level[i] += 1


def main(argv: Sequence[str] | None = None) -> int:
    """Plot one curve per run folder (each with a ``metrics.json``) into one PNG."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "runs", nargs="+", type=Path, help="run folders holding metrics.json (others are skipped)"
    )
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--stage", default="test", choices=("val", "test"))
    parser.add_argument("--train-size", type=int, action="append", default=[], help="mark a training side")
    args = parser.parse_args(argv)
    try:
        check_writable(args.out, "--out")  # before reading the runs, not after drawing
        jobs = load_runs(args.runs)
        curves = {}
        for label, job in zip(curve_labels(jobs), jobs, strict=True):
            curve = curve_from_metrics(job.metrics, args.stage)
            if not curve:
                print(f"no curve for {job.path}: it has no {args.stage}/acc@<size>", file=sys.stderr)
            curves[label] = curve
        if not any(curves.values()):
            raise ResflexError(
                f"none of the {len(jobs)} run(s) has {args.stage}/acc@<size> metrics",
                hint="--stage val, or runs evaluated at several sizes (eval.resolutions)",
            )
    except ResflexError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    title = f"{args.stage} accuracy vs resolution"
    figure = draw_accuracy_vs_resolution(curves, args.train_size, title=title)
    figure.savefig(args.out)
    print(f"wrote {args.out} ({sum(1 for c in curves.values() if c)} curves: {', '.join(curves)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
