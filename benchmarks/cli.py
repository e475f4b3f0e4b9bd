"""``python scripts/benchmark.py [options]``: every figure side by side in one process; table + JSON.

Examples::

    python scripts/benchmark.py --quick --json bench.json            # < 2 min on 2 CPU cores
    python scripts/benchmark.py --backbone resnet18 --size 64         # the CPU table
    python scripts/benchmark.py --backbone resnet50 --size 224 --device cuda --precision bf16-mixed
    python scripts/benchmark.py --study --sections ''                 # time-to-accuracy (long)
    python scripts/benchmark.py --sections loader                     # data path alone, per core
    python scripts/benchmark.py --sections views                      # a scale-consistency view's cost
    python scripts/benchmark.py --quick --sections views              # the same with a toy model: ~20 s

--sections views times 4 cells (2 view factors x 2 batch shares, each against the plain step): about
2 minutes on 2 CPU cores (resnet18 at 64 px, batch 32; over 3 under load), one progress line per cell.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import loader, sections, views
from benchmarks.machine import machine_info
from benchmarks.runners import Setup, build_model, quiet
from resflex.errors import ConfigError
from resflex.runtime import resolve_precision

SECTIONS = ("overhead", "pipeline", "mixed", "memory")
#: sections run only when named in --sections (they measure something other than the training loop
#: against a plain one: the data path alone, what a scale-consistency view costs a step)
EXTRA_SECTIONS = ("loader", "views")
#: Keys every JSON report has (tests check them); a skipped section is ``null``.
REQUIRED_KEYS = ("machine", "config", "wall_seconds", *SECTIONS, *EXTRA_SECTIONS, "study")
QUICK = {"backbone": "test_resnet", "size": 64, "sizes": [48, 64, 80], "batch_size": 16,
         "warmup": 2, "steps": 6, "repeats": 3, "windows": 2,
         "loader_images": 64, "loader_sizes": [128, 224]}  # fmt: skip
DEFAULTS = {
    "cpu": {"backbone": "resnet18", "size": 64, "sizes": [48, 64, 80], "batch_size": 32,
            "warmup": 3, "steps": 8, "repeats": 4, "windows": 2,
            "loader_images": 320, "loader_sizes": [128, 160, 192, 224]},
    "cuda": {"backbone": "resnet50", "size": 224, "sizes": [160, 192, 224, 256, 288], "batch_size": 256,
             "warmup": 10, "steps": 20, "repeats": 3, "windows": 1,
             "loader_images": 320, "loader_sizes": [128, 160, 192, 224]},
}  # fmt: skip


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text} is below {least}")
    return value


def _positive(text: str) -> int:
    """A count or a side: argparse's one-line error for 0, -1 or "big", not a traceback from a conv."""
    return _whole(text, 1)


def _count(text: str) -> int:
    return _whole(text, 0)


def _int_list(text: str) -> list[int]:
    return [_positive(v) for v in text.replace(" ", "").split(",") if v]


def _kwarg(text: str) -> tuple[str, Any]:
    key, _, raw = text.partition("=")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = {"true": True, "false": False}.get(raw.lower(), raw)
    return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmark.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backbone", help="timm model name (default: resnet18 on CPU, resnet50 on GPU)")
    p.add_argument(
        "--model-kwarg", action="append", default=[], metavar="KEY=VALUE", type=_kwarg,
        help="timm create_model argument, e.g. dynamic_img_size=True (repeatable)",
    )  # fmt: skip
    p.add_argument("--size", type=_positive, help="side of the fixed size (default 64 CPU / 224 GPU)")
    p.add_argument("--sizes", type=_int_list, help="multi-scale sides, comma separated (mixed + memory)")
    p.add_argument("--batch-size", type=_positive)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--precision", default="auto",
        help="auto (bf16-mixed on a GPU, 32-true on CPU), 32-true, bf16-mixed, 16-mixed",
    )  # fmt: skip
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (both sides)")
    p.add_argument(
        "--compile-dynamic", default="auto", choices=("auto", "true", "false"),
        help="auto: torch's automatic dynamic shapes (recompile once, then symbolic sizes)",
    )  # fmt: skip
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--workers", type=_count, help="data loader workers for the pipeline figure")
    p.add_argument("--format", default="jpeg", choices=("jpeg", "png"), help="image files of the pipeline")
    p.add_argument("--warmup", type=_count, help="warm-up steps before each timed window")
    p.add_argument("--steps", type=_positive, help="steps per timed window")
    p.add_argument("--repeats", type=_positive, help="runs per side, alternating with the other side")
    p.add_argument("--windows", type=_positive, help="timed windows per run (median over all windows)")
    p.add_argument(
        "--sections", default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS + EXTRA_SECTIONS)} (default: all but "
        f"{','.join(EXTRA_SECTIONS)}: the loader figure is the data path alone, no model)",
    )  # fmt: skip
    p.add_argument("--loader-images", type=_positive, help="JPEG files of the loader figure (320; quick 64)")
    p.add_argument("--loader-sizes", type=_int_list, help="loader sides (128,160,192,224; quick 128,224)")
    p.add_argument("--study", action="store_true", help="also time-to-accuracy: progressive vs fixed (long)")
    p.add_argument("--study-epochs", type=_positive, default=16)
    p.add_argument(
        "--study-progressive", action="append", default=[], metavar="KEY=VALUE,...",
        type=sections.parse_progressive,
        help="a progressive schedule to compare (ProgressiveResolution arguments, e.g. "
        "start_size=32,start_epoch=8,end_epoch=13); repeatable; default: start_size=3/4 of --size",
    )  # fmt: skip
    p.add_argument("--target-acc", type=float, help="study target (default: the fixed run's final val/acc)")
    p.add_argument("--quick", action="store_true", help="tiny model and few steps: < 2 min on 2 CPU cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--json", type=Path, help="write every figure and the machine here")
    args = p.parse_args(argv)
    unknown = {name for name in args.sections.split(",") if name} - set(SECTIONS + EXTRA_SECTIONS)
    if unknown:
        p.error(f"unknown --sections {sorted(unknown)}; choose from {','.join(SECTIONS + EXTRA_SECTIONS)}")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def fill_defaults(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    base = {**DEFAULTS[device.type], **(QUICK if args.quick else {})}
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.workers is None:
        args.workers = sections.default_workers(device)
    return args


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float | int) else str(value)


#: the verdict of every target in --quick: its toy model and short windows are not what the targets
#: (resnet18 at batch 32 on a CPU, resnet50 on a GPU) were set for
QUICK_VERDICT = "n/a (quick: a toy model; targets are for the full run)"
#: the sections graded against a target (sections.TARGETS), and whether theirs is an upper bound
GRADED = {"overhead": False, "pipeline": False, "mixed": False, "study": True}


def _verdict(ratio: float | None, goal: float, at_most: bool = False, quick: bool = False) -> str:
    if quick:
        return QUICK_VERDICT
    if ratio is None:
        return "n/a"
    return "met" if (ratio <= goal if at_most else ratio >= goal) else "NOT met"


def add_verdicts(report: dict[str, Any]) -> dict[str, Any]:
    """Each graded section's ``verdict`` in the JSON, as the table prints it (``QUICK_VERDICT`` in --quick;
    the study's per variant)."""
    quick = bool(report["config"].get("quick"))
    for name, at_most in GRADED.items():
        record = report.get(name)
        if not record:
            continue
        if name == "study":
            for variant in record.get("variants") or []:
                variant["verdict"] = _verdict(variant.get("ratio"), record["target"], at_most, quick)
        else:
            record["verdict"] = _verdict(record.get("ratio"), record["target"], at_most, quick)
    return report


def render_table(report: dict[str, Any]) -> str:
    m, c = report["machine"], report["config"]
    where = m.get("gpu_name") or f"{m['cpu_model']} ({m['cpu_cores']} cores)"
    lines = [
        f"resflex benchmark: {c['backbone']} bs={c['batch_size']} {c['precision']} "
        f"channels_last={c['channels_last']} compile={c['compile']} on {where}",
        f"torch {m['torch']}, timm {m['timm']}, lightning {m['pytorch_lightning']}; "
        f"load average {m.get('load_average')}",
        "",
        f"{'figure':<34}{'resflex / test':>16}{'baseline':>16}{'ratio':>9}{'target':>9}  verdict",
    ]

    quick = bool(c.get("quick"))

    def row(name: str, a: Any, b: Any, ratio: Any, goal: float, unit: str, at_most: bool = False) -> None:
        sign = "<=" if at_most else ">="
        lines.append(
            f"{name:<34}{_fmt(a):>16}{_fmt(b):>16}{_fmt(ratio, 3):>9}{sign + _fmt(goal, 2):>9}  "
            f"{_verdict(ratio, goal, at_most, quick)}  ({unit})"
        )

    if report.get("overhead"):
        o = report["overhead"]
        row(f"1 overhead @{o['size']}: Lightning vs plain", o["resflex_images_per_sec"],
            o["plain_images_per_sec"], o["ratio"], o["target"], "images/s")  # fmt: skip
    if report.get("pipeline"):
        p = report["pipeline"]
        row(f"2 pipeline @{p['size']}: files vs memory", p["full_images_per_sec"],
            p["compute_only_images_per_sec"], p["ratio"], p["target"],
            f"images/s, {p['workers']} workers, {p['format']}")  # fmt: skip
    if report.get("mixed"):
        x = report["mixed"]
        row(f"3 mixed {x['sizes']} vs {x['fixed_size']}", x["mixed_pixels_per_sec"] / 1e3,
            x["fixed_pixels_per_sec"] / 1e3, x["ratio"], x["target"], "kpixels/s")  # fmt: skip
    if report.get("study"):
        s = report["study"]
        for i, v in enumerate(s.get("variants") or []):
            row(f"5{'abcdefgh'[i % 8]} progressive to acc {s['target_val_acc']:.3f}",
                v["seconds_to_target"], s["fixed_seconds"], v["ratio"], s["target"],
                f"training s; sizes {v['sizes_per_epoch']}; final acc {v['final_val_acc']:.3f}",
                at_most=True)  # fmt: skip
    if report.get("memory"):
        mem = report["memory"]
        lines += ["", f"4 memory ({mem['kind']}, batch {mem['batch_size']}):"]
        for size, v in mem["per_size"].items():
            lines.append(
                f"  {size:>5}px  peak {v['peak_mb']:>9,.1f} MiB"
                f"   above start {v['above_start_mb']:>9,.1f} MiB"
            )
    if report.get("loader"):
        lines += loader.render(report["loader"])
    if report.get("views"):
        lines += views.render(report["views"])
    lines.append(f"\nwall time {report['wall_seconds']:.1f} s")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args = fill_defaults(args, device)
    setup = Setup(
        backbone=args.backbone,
        device=device,
        batch_size=args.batch_size,
        precision=resolve_precision(args.precision, device),
        channels_last=args.channels_last,
        compile=args.compile,
        compile_dynamic={"auto": None, "true": True, "false": False}[args.compile_dynamic],
        model_kwargs=dict(args.model_kwarg),
        cudnn_benchmark=args.cudnn_benchmark,
    )
    chosen = args.sections.split(",")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(precision=setup.precision, model_kwarg=dict(args.model_kwarg))
    report: dict[str, Any] = {"machine": machine_info(device), "config": config, "wall_seconds": 0.0}
    for key in (*SECTIONS, *EXTRA_SECTIONS, "study"):
        report[key] = None
    model = build_model(setup)
    for flag, side in [("--size", args.size), *(("--sizes", side) for side in args.sizes)]:
        try:  # below half the total stride the last feature map is padding
            model.backbone.check_input_size((side, side), flag)
        except ConfigError as exc:
            raise SystemExit(f"error: {exc.one_line()}") from None
    multiple = model.backbone.reduction if model.backbone.patch_embed is not None else 8
    w, s, r = args.warmup, args.steps, args.repeats

    def announce(name: str) -> None:
        """Progress on stderr; the JSON so far is saved, so a run cut off by a timeout keeps its figures."""
        report["wall_seconds"] = round(time.perf_counter() - started, 1)
        if args.json:
            write_json(args.json, report)
        print(f"[{report['wall_seconds']:6.1f}s] {name} ...", file=sys.stderr, flush=True)

    def note(text: str) -> None:
        """A step inside a long section (one line per measured cell), on stderr with the elapsed time."""
        print(f"[{time.perf_counter() - started:6.1f}s]   {text}", file=sys.stderr, flush=True)

    if "overhead" in chosen:
        announce("overhead")
        report["overhead"] = sections.overhead(setup, model, args.size, w, s, r, args.windows)
    if "pipeline" in chosen:
        announce("pipeline")
        report["pipeline"] = sections.pipeline(
            setup, model, args.size, args.workers, w, s, r, args.format, args.windows
        )
    if "mixed" in chosen:
        announce("mixed")
        report["mixed"] = sections.mixed(setup, model, args.sizes, multiple, w, s, r, args.seed, args.windows)
    if "memory" in chosen:
        announce("memory")
        report["memory"] = sections.memory(setup, model, sorted({*args.sizes, args.size}))
    if "loader" in chosen:
        announce("loader")
        report["loader"] = loader.loader(
            args.loader_sizes, args.loader_images, args.repeats, seed=args.seed, device=device
        )
    if "views" in chosen:
        announce("views")
        report["views"] = views.views(setup, model, args.size, w, s, r, args.windows, progress=note)
    if args.study:
        announce("study")
        report["study"] = sections.study(
            setup, args.size, args.study_epochs, args.workers, args.seed, args.target_acc,
            args.study_progressive,
        )  # fmt: skip
    announce("done")
    return add_verdicts(report)


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(render_table(report))
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0
