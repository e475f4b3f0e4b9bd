"""The performance study's tables, generated from its committed result files (never typed):

    python experiments/performance/table.py figures cpu_resnet18.json cpu_pipeline.json ...
    python experiments/performance/table.py study cpu_study16_variants.json cpu_study16_seed1.json ...
    python experiments/performance/table.py crosscheck crosscheck_64.txt crosscheck_250.txt
    python experiments/performance/table.py loader loader_targets_cpu.csv
    python experiments/performance/table.py summary     # the top README's table, from the files above
    python experiments/performance/table.py cases loader_cpu.json          # every loader case of one run
    python experiments/performance/table.py cores loader_cpu.json loader_cpu_2.json loader_cpu_3.json
    python experiments/performance/table.py steps loader_cpu.json       # the decode/resample steps alone
    python experiments/performance/table.py items item_cost.txt         # item_cost.py's printed table
    python experiments/performance/table.py hostmem host_memory_cpu.txt # host_memory_ab.sh's pairs
    python experiments/performance/table.py workers loader_workers1_cpu.json loader_workers2_cpu.json
    python experiments/performance/table.py markdown decode_vs_file_size.txt   # a table a script printed

(paths relative to experiments/performance/ or the repository root.)

``figures``: one row per figure (1 overhead, 2 input pipeline, 3 mixed resolution) of each
``scripts/benchmark.py --json`` file: both sides' rates (the median over the timed windows), the
ratio, the best-window ratio, the target and the 1-minute load average when the run started.
``study``: every schedule of each ``--study`` file against its fixed run. ``crosscheck``: the
``cpu_run.sh`` cross-check's printed rates per pair (``plain_loop.py`` and ``tb_rate.py``), their
ratio and its median. ``loader``: ``loader_targets.py``'s CSV, the default decoder's ratio to timm
per run. ``summary``: one line per figure, as the top README shows them, from the same files.
``cases``: a ``--sections loader`` JSON's images per CPU-second for every loader and case;
``cores``: the train/square per-core rates, median over several such runs (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIGURES = {
    "overhead": ("1 overhead", "resflex_images_per_sec", "plain_images_per_sec", "img/s"),
    "pipeline": ("2 input pipeline (JPEG files vs batches in memory)", "full_images_per_sec",
                 "compute_only_images_per_sec", "img/s"),
    "mixed": ("3 mixed sizes vs fixed", "mixed_pixels_per_sec", "fixed_pixels_per_sec", "kpx/s"),
}  # fmt: skip


def path_of(name: str) -> Path:
    path = Path(name)
    return path if path.exists() else HERE / name


def layout(config: dict) -> str:
    text = "channels_last" if config.get("channels_last") else "NCHW"
    return text + (", compile" if config.get("compile") else "")


def figures(files: list[str]) -> str:
    lines = [
        "| figure | layout | resflex | baseline | ratio (median) | best-window ratio | target | load (1 min) "
        "| file |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in files:
        report = json.loads(path_of(name).read_text())
        load = report.get("machine", {}).get("load_average") or ["–"]
        for key, (label, side_a, side_b, unit) in FIGURES.items():
            figure = report.get(key)
            if not figure:
                continue
            scale = 1000 if unit == "kpx/s" else 1
            if key == "mixed":
                label = f"{label} ({report['config']['sizes']} vs {figure['fixed_size']} px)"
            met = "met" if figure["ratio"] >= figure["target"] else "**not met**"
            cols = [label, layout(report["config"]), f"{figure[side_a] / scale:.1f} {unit}",
                    f"{figure[side_b] / scale:.1f} {unit}", f"**{figure['ratio']:.3f}**",
                    f"{figure['best_ratio']:.3f}" if figure.get("best_ratio") else "–",
                    f"≥ {figure['target']} {met}", str(load[0]), f"`{Path(name).name}`"]  # fmt: skip
            lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def study(files: list[str]) -> str:
    lines = [
        "| seed | fixed 64 px: final val/acc, training s | schedule (sizes per epoch) "
        "| reaches the target at epoch, s | ratio | its final val/acc, total s | file |",
        "|---|---|---|---|---:|---|---|",
    ]
    for name in files:
        report = json.loads(path_of(name).read_text())
        result, seed = report["study"], report["config"]["seed"]
        fixed = f"{result['fixed_final_val_acc']:.3f}, {result['fixed_seconds']:.1f}"
        for variant in result["variants"]:
            sizes = variant["sizes_per_epoch"].split()
            runs: list[list] = []
            for size in sizes:
                if runs and runs[-1][0] == size:
                    runs[-1][1] += 1
                else:
                    runs.append([size, 1])
            schedule = ", ".join(f"{size} ×{n}" for size, n in runs)
            if variant["schedule"].get("batch_scaling"):
                schedule += ", `batch_scaling=true`"
            reached = variant.get("epoch_reached")
            cols = [str(seed), fixed, schedule,
                    f"{reached}, {variant['seconds_to_target']:.1f}" if reached is not None else "never",
                    f"**{variant['ratio']:.3f}**" if variant.get("ratio") else "—",
                    f"{variant['final_val_acc']:.3f}, {variant['seconds']:.1f}",
                    f"`{Path(name).name}`"]  # fmt: skip
            lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def crosscheck(files: list[str]) -> str:
    lines = [
        "| files | plain loop (per pair) | resflex (TensorBoard, per pair) | resflex / plain per pair "
        "| **median** |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in files:
        text = path_of(name).read_text()
        side = re.search(r"files (\d+-\d+ px)", text)
        plain = [
            float(x) for x in re.findall(r"plain loop: .* epochs after the first ([\d.]+) images/s", text)
        ]
        resflex = [float(x) for x in re.findall(r"resflex: epochs after the first ([\d.]+) images/s", text)]
        ratios = [r / p for r, p in zip(resflex, plain, strict=True)]
        cols = [side[1] if side else name, ", ".join(f"{p:.1f}" for p in plain),
                ", ".join(f"{r:.1f}" for r in resflex), ", ".join(f"{r:.2f}" for r in ratios),
                f"**{statistics.median(ratios):.2f}×**"]  # fmt: skip
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def loader(file: str) -> str:
    with path_of(file).open() as f:
        rows = [r for r in csv.DictReader(f) if r["default"] == "True"]
    lines = [
        "| train, square, per core | target | resflex `auto` / timm, per run | met |",
        "|---|---:|---|---|",
    ]
    for size in sorted({r["size"] for r in rows}, key=int):
        runs = [r for r in rows if r["size"] == size]
        ratios = [float(r["ratio_vs_timm"]) for r in runs]
        target = float(runs[0]["target"])
        met = sum(r >= target for r in ratios)
        lines.append(
            f"| {size} px | ≥ {target} | {', '.join(f'{r:.3f}' for r in ratios)} | {met}/{len(ratios)} runs |"
        )
    return "\n".join(lines)


def ratio(name: str, key: str) -> float:
    return json.loads(path_of(name).read_text())[key]["ratio"]


def summary() -> str:
    studies = [
        json.loads(path_of(f"cpu_study16_{n}.json").read_text())["study"]
        for n in ("variants", "seed1", "seed2")
    ]
    default = [next(v for v in s["variants"] if v["schedule"] == {"start_size": 48}) for s in studies]
    ahead = sum(v["final_val_acc"] > s["fixed_final_val_acc"] for v, s in zip(default, studies, strict=True))
    cross = {}
    for side in ("64", "250"):
        text = path_of(f"crosscheck_{side}.txt").read_text()
        plain = [
            float(x) for x in re.findall(r"plain loop: .* epochs after the first ([\d.]+) images/s", text)
        ]
        resflex = [float(x) for x in re.findall(r"resflex: epochs after the first ([\d.]+) images/s", text)]
        cross[side] = statistics.median(r / p for r, p in zip(resflex, plain, strict=True))
    with path_of("loader_targets_cpu.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["default"] == "True"]
    span = {
        size: (min(float(r["ratio_vs_timm"]) for r in rows if r["size"] == size),
               max(float(r["ratio_vs_timm"]) for r in rows if r["size"] == size))
        for size in ("128", "224")
    }  # fmt: skip
    lines = [
        "| figure | measured | file | target |",
        "|---|---|---|---|",
        f"| framework overhead vs a plain loop | **{ratio('cpu_resnet18.json', 'overhead'):.3f}×** / "
        f"{ratio('cpu_resnet18_overhead.json', 'overhead'):.3f}× (channels-last), "
        f"**{ratio('cpu_resnet18_nchw.json', 'overhead'):.3f}×** (contiguous, the CPU default) | "
        "`cpu_resnet18.json`, `cpu_resnet18_overhead.json`, `cpu_resnet18_nchw.json` | ≥ 0.95 |",
        "| input pipeline from JPEG files vs batches in memory | "
        f"**{ratio('cpu_pipeline.json', 'pipeline'):.3f}×** "
        f"(8 runs × 3 windows), {ratio('cpu_resnet18.json', 'pipeline'):.3f}× (4 × 2) | `cpu_pipeline.json`, "
        "`cpu_resnet18.json` | ≥ 0.90 |",
        "| mixed sizes [48, 64, 80] vs fixed 64 px, pixels/s | "
        f"**{ratio('cpu_resnet18.json', 'mixed'):.3f}×** | "
        "`cpu_resnet18.json` | ≥ 0.95 |",
        "| progressive 48→64 px to the fixed run's final accuracy (16 epochs, 3 seeds) | **"
        + ", ".join(f"{v['ratio']:.3f}×" for v in default)
        + f"** of the fixed run's time; ends more accurate in {ahead}/{len(default)} seeds | "
        "`cpu_study16_{variants,seed1,seed2}.json` | ≤ 0.75 |",
        "| resflex's training rate vs an independent PyTorch + timm loop, same JPEG folder and framing, "
        "images over wall time on both sides (median of 3 alternating pairs) | "
        f"{cross['64']:.2f}× (64–128 px files), {cross['250']:.2f}× (250–500 px files) | "
        "`crosscheck_{64,250}.txt` | |",
        "| the data path alone, per core, vs timm's `create_loader` (photo-sized JPEGs, train, square; "
        f"3 runs) | **{span['128'][0]:.3f}–{span['128'][1]:.3f}×** at 128 px, "
        f"**{span['224'][0]:.3f}–{span['224'][1]:.3f}×** "
        "at 224 px | `loader_targets_cpu.csv` | ≥ 1.5 / ≥ 1.0 |",
    ]
    return "\n".join(lines)


LOADERS = ["resflex_auto", "resflex_simplejpeg", "resflex_torchvision", "resflex_pil", "timm", "torchvision"]


def cases(name: str) -> str:
    report = json.loads(path_of(name).read_text())["loader"]
    lines = [
        "| split | geometry | size | batch h×w | resflex `auto` | resflex `simplejpeg` "
        "| resflex `torchvision` | resflex `pil` | timm | torchvision | **auto / timm** | torchvision / timm "
        "| pil / timm |",
        "|---|---|---:|---|" + "---:|" * 9,
    ]
    for case in report["cases"]:
        rates = [f"{case['per_core'][k]:,.0f}" for k in LOADERS]
        ratio = case["ratio_vs_timm"]
        shape = "×".join(map(str, case["out_hw"]))
        cols = [case["split"], case["geometry"], str(case["size"]), shape, *rates,
                f"**{ratio['resflex_auto']:.2f}**", f"{ratio['resflex_torchvision']:.2f}",
                f"{ratio['resflex_pil']:.2f}"]  # fmt: skip
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def cores(files: list[str]) -> str:
    runs = [json.loads(path_of(name).read_text())["loader"]["cases"] for name in files]
    sizes = sorted({c["size"] for c in runs[0] if c["split"] == "train" and c["geometry"] == "square"})
    lines = [
        "| size | resflex `data.source.decoder=auto` (default; simplejpeg) | resflex `pil` (first) "
        "| timm `create_loader` | torchvision `decode_jpeg` + v2 |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        cols = [str(size)]
        for key in ("resflex_auto", "resflex_pil", "timm", "torchvision"):
            train = [c for run in runs for c in run if c["split"] == "train" and c["geometry"] == "square"]
            values = [c["per_core"][key] for c in train if c["size"] == size]
            cols.append(
                f"{statistics.median(values):,.0f}"
                + (" img/s" if size == sizes[0] and len(cols) == 1 else "")
            )
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


STEPS = [
    ("PIL decode, full (500×375)", ["pil_full"]),
    ("PIL decode at 1/2 / 1/4 / 1/8 scale", ["pil_1/2", "pil_1/4", "pil_1/8"]),
    ("`torchvision.io.decode_jpeg`, full", ["decode_jpeg"]),
    ("simplejpeg, full", ["simplejpeg_full"]),
    ("simplejpeg at 1/2 / 1/4 / 1/8 scale", ["simplejpeg_1/2", "simplejpeg_1/4", "simplejpeg_1/8"]),
    ("resample the decoded image to cover 224 px: PIL / torch", ["resample_pil_224", "resample_torch_224"]),
    ("resample to cover 128 px: PIL / torch", ["resample_pil_128", "resample_torch_128"]),
]


def steps(name: str) -> str:
    rates = json.loads(path_of(name).read_text())["loader"]["steps_per_core"]
    lines = ["| step | images/s per core | ms per image |", "|---|---:|---:|"]
    for label, keys in STEPS:
        per_core = " / ".join(f"{rates[k]:,.0f}" for k in keys)
        ms = " / ".join(f"{1000 / rates[k]:.2f}" for k in keys)
        lines.append(f"| {label} | {per_core} | {ms} |")
    return "\n".join(lines)


def items(name: str) -> str:
    rows = [
        line.split() for line in path_of(name).read_text().splitlines() if re.match(r"\s+\d+-\d+ px", line)
    ]
    lines = ["| files | size | split | before ms | now ms | speed-up |", "|---|---:|---|---:|---:|---:|"]
    for files, _, size, split, before, now, speedup in rows:
        lines.append(
            f"| {files.replace('-', '–')} px | {size} | {split} | {before} | {now} | {speedup[:-1]}× |"
        )
    return "\n".join(lines)


def hostmem(name: str) -> str:
    lines = [
        "| pair | malloc | wall s | user s | system s | minor page faults | peak RSS | test/acc |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    pair = 0
    for line in path_of(name).read_text().splitlines():
        if line.startswith("#") and ("pair" in line):
            pair += 1
            quiet = "quiet" in line
            continue
        fields = line.split()
        if not fields or fields[0] not in ("system", "retain"):
            continue
        values = dict(zip(fields[1::2], fields[2::2], strict=False))
        malloc = "glibc default" if fields[0] == "system" else "retained (the CPU default now)"
        cols = [f"{pair} ({'quiet' if quiet else 'loaded'})", malloc, values["wall_s"], values["user_s"],
                values["sys_s"], f"{int(values['minor_faults']) / 1e6:.1f} M",
                f"{int(values['maxrss_kb']) / 1e6:.2f} GB", f"{float(values['test/acc:']):.4f}"]  # fmt: skip
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def workers(one: str, two: str) -> str:
    runs = [json.loads(path_of(name).read_text())["rows"] for name in (one, two)]
    lines = [
        "| loader | size | in-process, images per CPU-s | 1 worker | 2 workers "
        "| 2 workers, images per wall-s | cost (1 / 2 workers) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for a, b in zip(*runs, strict=True):
        name = "resflex `auto`" if a["loader"] == "resflex" else a["loader"]
        cols = [name, str(a["size"]), f"{a['inproc_per_cpu_s']:,.0f} / {b['inproc_per_cpu_s']:,.0f}",
                f"{a['workers_per_cpu_s']:,.0f}", f"{b['workers_per_cpu_s']:,.0f}",
                f"{b['workers_per_wall_s']:,.0f}",
                f"{a['cost']:.2f} / {b['cost']:.2f}"]  # fmt: skip
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def markdown(name: str) -> str:
    """The markdown table a script printed into its log (the log's other lines dropped)."""
    return "\n".join(line for line in path_of(name).read_text().splitlines() if line.startswith("|"))


def main() -> None:
    one_file = {"loader": loader, "cases": cases, "steps": steps, "items": items, "hostmem": hostmem,
                "markdown": markdown}  # fmt: skip
    many_files = {"figures": figures, "study": study, "crosscheck": crosscheck, "cores": cores}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=[*one_file, *many_files, "workers", "summary"])
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()
    if args.what == "summary":
        print(summary())
    elif args.what == "workers":
        print(workers(*args.files))
    elif args.what in one_file:
        print(one_file[args.what](args.files[0]))
    else:
        print(many_files[args.what](args.files))


if __name__ == "__main__":
    main()
