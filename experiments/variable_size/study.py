"""The variable-size study: {avg, max, pyramid} x {square, squash, pad, keep_aspect, auto}, 3 seeds,
against a plain whole-image loop and timm's ``train.py`` at the same model, size, batch and epochs.

    python experiments/variable_size/study.py --data /tmp/vs_data [--timm-train PATH/train.py]

Runs every cell that has no completed result yet (re-running continues a stopped study),
``--jobs`` at a time with ``--threads`` compute threads each, then writes
``results.csv`` (one row per run) and ``summary.md`` (mean and spread over seeds)
into ``--out``. Build the data first with ``make_data.py`` (same folder).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
POOLINGS = ("avg", "max", "pyramid")
GEOMETRIES = ("square", "squash", "pad", "keep_aspect", "auto")


def resflex_command(
    args: argparse.Namespace, pooling: str, geometry: str, seed: int, run_dir: Path
) -> list[str]:
    if args.fashion_mnist:  # the official images (28x28, square): a seeded subset, no test split
        train, val = args.fashion_mnist
        data = ["data=fashion_mnist", f"data.source.num_train={train}", f"data.source.num_val={val}",
                "data.source.num_test=0"]  # fmt: skip
    else:
        data = ["data=imagefolder", f"data.root={args.data}"]
    return [
        sys.executable, str(REPO / "scripts/train.py"), *data,
        f"pooling={pooling}", f"resolution.geometry={geometry}", f"resolution.size={args.size}",
        f"data.batch_size={args.batch_size}", f"trainer.max_epochs={args.epochs}", f"seed={seed}",
        f"data.num_workers={args.workers}", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip


def plain_command(args: argparse.Namespace, seed: int, run_dir: Path) -> list[str]:
    return [
        sys.executable, str(HERE / "plain_loop.py"), str(args.data), "--size", str(args.size),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(seed),
        "--workers", str(args.workers), "--out", str(run_dir / "result.json"),
    ]  # fmt: skip


def timm_command(args: argparse.Namespace, seed: int, run_dir: Path) -> list[str]:
    """timm's train.py at the recipe of issue #13 (resflex's imagefolder defaults)."""
    return [
        sys.executable, str(args.timm_train), "--data-dir", str(args.data), "--train-split", "train",
        "--val-split", "val", "--model", "resnet18", "--num-classes", "10", "--img-size", str(args.size),
        "--crop-pct", "1.0", "--scale", "0.35", "1.0", "--ratio", "0.75", "1.3333", "--hflip", "0.5",
        "--color-jitter", "0", "--opt", "adamw", "--lr", "2e-3", "--weight-decay", "0.05",
        "--sched", "cosine", "--warmup-epochs", "1", "--smoothing", "0.1", "--epochs", str(args.epochs),
        "-b", str(args.batch_size), "--workers", str(args.workers), "--seed", str(seed), "--device", "cpu",
        "--output", str(run_dir), "--experiment", "run", "--checkpoint-hist", "1", "--log-interval", "1000",
    ]  # fmt: skip


def result_of(kind: str, run_dir: Path) -> float | None:
    """Best val accuracy of a finished run, or None."""
    if kind == "resflex":
        path = run_dir / "metrics.json"
        if path.is_file():
            record = json.loads(path.read_text())
            if record.get("status") == "completed":
                return float(record["best"]["val/acc"])
    elif kind == "plain":
        path = run_dir / "result.json"
        if path.is_file():
            return float(json.loads(path.read_text())["val_acc_best"])
    elif kind == "timm":
        path = run_dir / "run" / "summary.csv"
        if path.is_file():
            rows = list(csv.DictReader(path.open()))
            if rows:
                return max(float(r["eval_top1"]) for r in rows) / 100.0
    return None


def larger_size_acc(run_dir: Path) -> tuple[str, float] | None:
    """(size tag, final val accuracy) at the largest evaluated size, for resflex runs."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text()).get("metrics", {})
    sized = [(k.split("@", 1)[1], float(v)) for k, v in metrics.items() if k.startswith("val/acc@")]
    if not sized:
        return None
    return max(sized, key=lambda item: int(item[0].split("x")[0]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="the folder make_data.py wrote")
    parser.add_argument("--fashion-mnist", type=int, nargs=2, metavar=("TRAIN", "VAL"),
                        help="a Fashion-MNIST subset instead of --data (no reference runs)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--poolings", nargs="+", default=list(POOLINGS))
    parser.add_argument("--geometries", nargs="+", default=list(GEOMETRIES))
    parser.add_argument("--timm-train", type=Path, help="timm's train.py (fetched, not in this repo)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/resflex_variable_size_runs"))
    parser.add_argument("--summary-only", action="store_true", help="run nothing; tabulate what exists")
    parser.add_argument("--no-references", action="store_true", help="skip the plain loop and timm runs")
    args = parser.parse_args()
    if args.fashion_mnist:
        args.no_references = True
    elif args.data is None:
        parser.error("--data or --fashion-mnist is required")
    else:
        args.data = args.data.resolve()

    runs: list[tuple[str, str, int, Path, list[str]]] = []
    for seed in args.seeds:
        if not args.no_references:
            run_dir = args.runs_dir / f"plain-s{seed}"
            runs.append(("plain", "plain loop (squash)", seed, run_dir, plain_command(args, seed, run_dir)))
            if args.timm_train:
                run_dir = args.runs_dir / f"timm-s{seed}"
                command = timm_command(args, seed, run_dir)
                runs.append(("timm", "timm train.py (square)", seed, run_dir, command))
        for pooling in args.poolings:
            for geometry in args.geometries:
                run_dir = args.runs_dir / f"{pooling}-{geometry}-s{seed}"
                runs.append(("resflex", f"{pooling}/{geometry}", seed, run_dir,
                             resflex_command(args, pooling, geometry, seed, run_dir)))  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}

    def run(item: tuple[str, str, int, Path, list[str]]) -> None:
        kind, cell, seed, run_dir, command = item
        if result_of(kind, run_dir) is not None:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / "command.txt").open("w") as f:
            f.write(" ".join(command) + "\n")
        with (run_dir / "stdout.log").open("w") as log:
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        print(f"{cell} seed {seed}: exit {code}, val/acc {result_of(kind, run_dir)}", flush=True)

    if not args.summary_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(run, runs))

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind, cell, seed, run_dir, command in runs:
        if not run_dir.exists():
            continue
        large = larger_size_acc(run_dir) if kind == "resflex" else None
        rows.append({"kind": kind, "cell": cell, "seed": seed, "val_acc_best": result_of(kind, run_dir),
                     "larger_size": large[0] if large else None,
                     "val_acc_larger": large[1] if large else None,
                     "command": " ".join(command)})  # fmt: skip
    with (args.out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_summary(rows, args)


def write_summary(rows: list[dict], args: argparse.Namespace) -> None:
    by_cell: dict[str, list[float]] = {}
    larger: dict[str, list[float]] = {}
    for row in rows:
        if row["val_acc_best"] is not None:
            by_cell.setdefault(row["cell"], []).append(float(row["val_acc_best"]))
        if row["val_acc_larger"] is not None:
            larger.setdefault(row["cell"], []).append(float(row["val_acc_larger"]))

    def fmt(cell: str, table: dict[str, list[float]] = by_cell) -> str:
        values = table.get(cell, [])
        if not values:
            return "-"
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.3f}{spread} (n={len(values)})"

    lines = [
        f"Best val/acc, mean ± standard deviation over seeds; resnet18 from scratch, {args.size} px, "
        f"batch {args.batch_size}, {args.epochs} epochs.",
        "",
        "| pooling | " + " | ".join(args.geometries) + " |",
        "|---|" + "---|" * len(args.geometries),
    ]
    for pooling in args.poolings:
        lines.append(f"| {pooling} | " + " | ".join(fmt(f"{pooling}/{g}") for g in args.geometries) + " |")
    size = next((row["larger_size"] for row in rows if row["larger_size"]), "?")
    lines += [
        "",
        f"Tested larger than trained: final val/acc at {size} px (trained at {args.size} px).",
        "",
        "| pooling | " + " | ".join(args.geometries) + " |",
        "|---|" + "---|" * len(args.geometries),
    ]
    for pooling in args.poolings:
        cells = [fmt(f"{pooling}/{g}", larger) for g in args.geometries]
        lines.append(f"| {pooling} | " + " | ".join(cells) + " |")
    lines += pairwise_lines(rows, args, "pyramid", "avg", size)
    lines += ["", "| reference | val/acc |", "|---|---|"]
    for cell in ("plain loop (squash)", "timm train.py (square)"):
        if cell in by_cell:
            lines.append(f"| {cell} | {fmt(cell)} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def pairwise_lines(rows: list[dict], args: argparse.Namespace, head: str, base: str, size: str) -> list[str]:
    """``head`` minus ``base``, run by run (same geometry and seed), at the trained and the larger size:
    a paired comparison, so the seed-to-seed spread that both heads share drops out."""
    runs = {(row["cell"], row["seed"]): row for row in rows}
    lines = ["", f"{head} minus {base}, paired by geometry and seed (mean ± sd of the differences):", "",
             f"| geometry | at {args.size} px | at {size} px |", "|---|---|---|"]  # fmt: skip
    for geometry in [*args.geometries, "all"]:
        diffs: dict[str, list[float]] = {"trained": [], "larger": []}
        for seed in args.seeds:
            for g in args.geometries if geometry == "all" else [geometry]:
                a, b = runs.get((f"{head}/{g}", seed)), runs.get((f"{base}/{g}", seed))
                if not a or not b:
                    continue
                for key, column in (("trained", "val_acc_best"), ("larger", "val_acc_larger")):
                    if a[column] is not None and b[column] is not None:
                        diffs[key].append(float(a[column]) - float(b[column]))

        def fmt(values: list[float]) -> str:
            if not values:
                return "-"
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            return f"{statistics.mean(values):+.3f}{spread} (n={len(values)})"

        lines.append(f"| {geometry} | {fmt(diffs['trained'])} | {fmt(diffs['larger'])} |")
    return lines


if __name__ == "__main__":
    main()
