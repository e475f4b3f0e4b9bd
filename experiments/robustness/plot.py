"""``accuracy_vs_size.png``: test accuracy against test size, one curve per schedule, one panel per
data set, drawn from the study's result files (never typed).

    python experiments/robustness/plot.py [--out experiments/robustness/accuracy_vs_size.png]

Each curve is a cell's mean over its seeds (the band: ± sd where there are several; the number at
its right end: how many). The x axis is the test size as a multiple of the trained size (log
scale: ½× is as far from 1× as 2×), so the data sets, trained at 64 or 40 px, share it. The tables
in the README are the numbers; the figure is for the shape of the curves. One colour per schedule
in every panel, the default's line thick, timm's dashed.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent

#: (title, result files, trained size, cells in drawing order); a cell without rows is skipped
PANELS = [
    ("embedded shapes (64 px, 6 epochs)", ["results_shapes.csv"], 64,
     ["fixed_nocal", "fixed", "ms50", "sc_budget", "sc_up_budget", "sc_up_075", "sc_small2_075"]),
    ("variable-size folder (40 px, 10 epochs)", ["results_folder.csv", "timm_folder.csv"], 40,
     ["fixed", "random", "multiscale", "progressive", "multigrid", "fixres", "sc_budget", "sc_up_budget",
      "sc_up_075", "sc_small2_075", "timm_sizes"]),
    ("shapes folder, the issue's difficulty (40 px)", ["results_folder_shapes.csv", "timm_folder_shapes.csv"],
     40, ["fixed", "fixed24", "random", "sc_budget", "sc_up_budget", "sc_up_075", "sc_small2_075",
          "timm_fixed", "timm_sizes"]),
    ("easier folder (40 px, 10 epochs)", ["results_folder_easy.csv"], 40,
     ["fixed", "fixed24", "sc_budget", "sc_up_budget", "sc_up_075", "sc_small2_075"]),
    ("Fashion-MNIST (64 px, 6 epochs)", ["results_fmnist.csv"], 64,
     ["fixed_nocal", "fixed", "default", "random", "sc_up_budget", "sc_up_075", "sc_small2_075"]),
]  # fmt: skip

#: today's default, drawn thick
DEFAULT = "sc_small2_075"

#: what a cell is, for the legend (the README's tables name the cells alike)
LABELS = {
    "fixed_nocal": "one size, before the study",
    "fixed": "one size, BN calibrated",
    "default": "0.6x view, 1/4 steps (the default before)",
    "sc_budget": "0.6x view, 1/4 steps (the default before)",
    "sc_up_budget": "0.6x/1.4x views, 1/8 steps, weight 1 (the default before)",
    "sc_up_075": "0.6x/1.4x views alike, 1/8 steps, weight 0.75 (the default before)",
    "sc_small2_075": "default: 0.6x (2 in 3)/1.4x views, 16 % of steps, weight 0.75",
    "ms50": "multiscale 0.5-1.5x",
    "multiscale": "multiscale 0.5-1.5x",
    "random": "random size per batch",
    "progressive": "progressive",
    "multigrid": "multigrid",
    "fixres": "fixres",
    "fixed24": "24 px specialist",
    "timm_sizes": "timm train.py, per-batch sizes",
    "timm_fixed": "timm train.py, one size",
}


def curves(paths: list[Path], cells: list[str]) -> dict[str, dict[int, list[float]]]:
    """cell -> size -> the test accuracies of its completed runs."""
    found: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in paths:
        if not path.exists():
            continue
        for row in csv.DictReader(path.open()):
            if row["cell"] not in cells or row.get("status", "completed") != "completed":
                continue
            for key, value in row.items():
                if key.startswith("test_acc@") and value:
                    found[row["cell"]][int(key.split("@")[1])].append(float(value))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "accuracy_vs_size.png")
    args = parser.parse_args()
    panels = [(t, [HERE / f for f in files], main, cells) for t, files, main, cells in PANELS]
    panels = [p for p in panels if any(path.exists() for path in p[1])]
    # one colour per schedule in every panel (the default's thick, timm's the last two), one legend
    palette = [*plt.get_cmap("tab10").colors, "darkgoldenrod", "teal", "black", "dimgrey"]
    colours = {label: palette[k % len(palette)] for k, label in enumerate(dict.fromkeys(LABELS.values()))}
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(4.6 * columns, 4.0 * rows + 0.8), sharey=True, squeeze=False
    )
    flat = list(axes.flat)
    for spare in flat[len(panels) :]:  # an empty slot of the grid holds the legend
        spare.axis("off")
    drawn: dict[str, object] = {}
    for ax, (title, paths, main, cells) in zip(flat, panels, strict=False):
        found = curves(paths, cells)
        for cell in cells:
            if cell not in found:
                continue
            sizes = sorted(found[cell])
            x = [s / main for s in sizes]
            means = [statistics.mean(found[cell][s]) for s in sizes]
            seeds = max(len(found[cell][s]) for s in sizes)
            label, default = LABELS[cell], cell == DEFAULT
            (line,) = ax.plot(x, means, "--" if cell.startswith("timm") else "-", marker="o", ms=3,
                              lw=2.6 if default else 1.4, color=colours[label])  # fmt: skip
            drawn.setdefault(label, line)
            ax.annotate(f"{seeds}", (x[-1], means[-1]), xytext=(3, 0), textcoords="offset points",
                        fontsize=6, color=colours[label], va="center")  # fmt: skip
            if seeds > 1:
                sds = [statistics.stdev(found[cell][s]) if len(found[cell][s]) > 1 else 0.0 for s in sizes]
                lower = [m - d for m, d in zip(means, sds, strict=True)]
                upper = [m + d for m, d in zip(means, sds, strict=True)]
                ax.fill_between(x, lower, upper, color=colours[label], alpha=0.12, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks([0.5, 0.75, 1, 1.5, 2], ["½×", "¾×", "1×", "1½×", "2×"])
        ax.axvline(1, color="grey", lw=0.8, alpha=0.5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("test size / trained size")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("test accuracy (mean ± sd over seeds)")
    fig.text(
        0.995, 0.01, "the small number at a curve's end: its seeds", ha="right", fontsize=7, color="grey"
    )
    if len(flat) > len(panels):
        fig.tight_layout()
        flat[-1].legend(list(drawn.values()), list(drawn), loc="center", fontsize=8, frameon=False)
    else:
        fig.legend(list(drawn.values()), list(drawn), loc="lower center", ncol=5, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(args.out, dpi=100, metadata={"Software": None})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
