"""``accuracy.png`` and ``accuracy.csv``: resflex's Fashion-MNIST test accuracy beside the published
benchmark (the CSV: every bar's label, test accuracy, sd over seeds, seeds and source).

    python experiments/fashion_mnist/plot_accuracy.py

The blue bar is the mean ± sd over seeds of the pooling study's ``pyramid_fixed64`` cell (resflex's
defaults at 64 px; ``../pooling_resolution/results_cpu.csv``); the grey bars are the Fashion-MNIST
project's benchmark table (https://github.com/zalandoresearch/fashion-mnist#benchmark). The GPU run
of the README's history section is not drawn: it has no result file (issue 28).
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
BENCHMARK_SOURCE = "https://github.com/zalandoresearch/fashion-mnist#benchmark"
BENCHMARK = [("ResNet18", 0.949), ("MobileNet", 0.950), ("WRN-28-10", 0.959), ("WRN40-4", 0.967)]


def main() -> None:
    cpu_file = HERE.parent / "pooling_resolution" / "results_cpu.csv"
    with cpu_file.open() as f:
        accs = [float(r["test_acc"]) for r in csv.DictReader(f) if r["cell"] == "pyramid_fixed64"]
    bars = [
        (f"resflex resnet18 64px, 6 ep, 5k imgs (2-core CPU, {len(accs)} seeds)", statistics.mean(accs),
         statistics.stdev(accs), "tab:blue"),
        *((f"benchmark: {name}", acc, 0.0, "grey") for name, acc in BENCHMARK),
    ]  # fmt: skip
    sources = [f"{cpu_file.relative_to(HERE.parent)}, pyramid_fixed64"]
    sources += [BENCHMARK_SOURCE] * len(BENCHMARK)
    seeds = [len(accs)] + [""] * len(BENCHMARK)  # the benchmark table does not say
    with (HERE / "accuracy.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "test_acc", "sd", "seeds", "source"])
        for (label, acc, error, _), n, source in zip(bars, seeds, sources, strict=True):
            writer.writerow([label, f"{acc:.4f}", f"{error:.4f}" if error else "", n, source])
    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    shown = bars[::-1]  # barh draws bottom-up
    labels, values, errors, colours = zip(*shown, strict=True)
    ax.barh(labels, values, xerr=errors, color=colours)
    for y, (_, acc, error, _) in enumerate(shown):
        ax.text(acc + error + 0.002, y, f"{acc:.4f}", va="center", fontsize=9)
    ax.set_xlim(0.8, 0.98)
    ax.set_xlabel("Fashion-MNIST test accuracy")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(HERE / "accuracy.png", dpi=100)


if __name__ == "__main__":
    main()
