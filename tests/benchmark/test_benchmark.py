"""scripts/benchmark.py: the pieces it is built from (fast) and the --quick run with every JSON key (slow).

No test asserts a wall-clock figure: machines differ and are shared; the
benchmark prints ratios, the tests check that they are measured and reported.
"""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import cli, sections
from benchmarks.machine import PeakMemory, machine_info
from benchmarks.runners import Setup, build_model, plain_windows, random_batch
from tests.conftest import REPO, run_cli

BENCHMARK = REPO / "scripts" / "benchmark.py"


def _is_def(node: ast.AST) -> bool:
    if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
        return True  # imports for type checkers only never run
    return isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)


def _imports(module: str, seen: set[str]) -> set[str]:
    """Modules imported by ``module`` and, through it, by resflex's modules: every import of the
    benchmark's own files (its lazy ones run too), module-level imports elsewhere (a lazy import in a
    function the benchmark never calls, e.g. reading a run's Hydra config, does not count)."""
    own = module.startswith("benchmarks")
    base = (REPO if own else REPO / "src") / Path(*module.split("."))
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if module in seen or not path.is_file():
        return set()
    seen.add(module)
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if own else (n for top in tree.body for n in ast.walk(top) if not _is_def(top))
    for node in nodes:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            if name.startswith(("resflex", "benchmarks")):
                found |= _imports(name, seen)
                if name in seen:
                    found.add(name)
            else:
                found.add(name)
    return found


def report_head() -> dict[str, Any]:
    """The machine and config a report to render starts with (what the table's header reads), fresh for
    each test: a test may change them."""
    return {
        "machine": {"cpu_model": "X", "cpu_cores": 2, "torch": "t", "timm": "m", "pytorch_lightning": "l"},
        "config": {"backbone": "b", "batch_size": 8, "precision": "32-true", "channels_last": True,
                   "compile": False},
    }  # fmt: skip


def test_benchmark_needs_neither_hydra_nor_omegaconf() -> None:
    """The GPU machines have torch/timm/Lightning but no Hydra: nothing the benchmark runs may import it."""
    imported = _imports("benchmarks.cli", set())
    assert "resflex.training.module" in imported and "resflex.data.datamodule" in imported
    offending = sorted(n for n in imported if n.split(".")[0] in ("hydra", "omegaconf"))
    assert not offending, offending


def test_quick_defaults_fill_only_what_is_not_given() -> None:
    args = cli.fill_defaults(cli.parse_args(["--quick", "--batch-size", "4"]), torch.device("cpu"))
    assert args.backbone == "test_resnet"
    assert args.batch_size == 4
    assert args.sizes == [48, 64, 80]
    args = cli.fill_defaults(cli.parse_args(["--sizes", "32,40", "--size", "40"]), torch.device("cpu"))
    assert args.sizes == [32, 40] and args.size == 40 and args.backbone == "resnet18"


def test_model_kwargs_and_sections_are_parsed() -> None:
    args = cli.parse_args(["--model-kwarg", "dynamic_img_size=True", "--model-kwarg", "name=abc"])
    assert dict(args.model_kwarg) == {"dynamic_img_size": True, "name": "abc"}
    with pytest.raises(SystemExit):
        cli.parse_args(["--sections", "overhead,nonsense"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--size", "0"], "argument --size: 0 is below 1"),
        (["--sizes", "32,abc"], "argument --sizes: 'abc' is not a whole number"),
        (["--warmup", "-1"], "argument --warmup: -1 is below 0"),
        (["--repeats", "x"], "argument --repeats: 'x' is not a whole number"),
    ],
)
def test_a_bad_number_is_argparses_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a traceback from a convolution at size 0, or a loop that never runs."""
    with pytest.raises(SystemExit) as info:
        cli.parse_args(argv)
    assert info.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
    assert cli.parse_args(["--warmup", "0"]).warmup == 0  # no warm-up is allowed


@pytest.mark.parametrize(("argv", "flag"), [(["--size", "8"], "--size"), (["--sizes", "8,64"], "--sizes")])
def test_a_size_the_backbone_cannot_take_stops_before_any_section(argv: list[str], flag: str) -> None:
    with pytest.raises(SystemExit) as info:
        cli.run(cli.parse_args(["--quick", "--sections", "overhead", *argv]))
    assert str(info.value.code).startswith(
        f"error: {flag}=8x8 is too small for test_resnet (total stride 32)"
    )


def test_precision_auto_is_fp32_on_cpu() -> None:
    assert cli.resolve_precision("auto", torch.device("cpu")) == "32-true"
    assert cli.resolve_precision("bf16-mixed", torch.device("cpu")) == "bf16-mixed"


def test_equal_pixel_side_matches_the_mean_pixel_count() -> None:
    assert sections.equal_pixel_side([48, 64, 80], 8) == 64  # sqrt(4266.7) = 65.3
    side = sections.equal_pixel_side([160, 192, 224, 256, 288], 16)
    assert side % 16 == 0 and abs(side * side - 52224) / 52224 < 0.05


def test_cpu_peak_memory_is_reset_and_sees_a_new_allocation() -> None:
    meter = PeakMemory(torch.device("cpu"))
    meter.reset()
    if not meter.resettable:
        pytest.skip("/proc/self/clear_refs is not writable here")
    before = meter.peak_mb()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    grown = meter.peak_mb()
    del block
    assert grown - before > 48, (before, grown)


def test_machine_info_names_the_machine_and_versions() -> None:
    info = machine_info(torch.device("cpu"))
    for key in ("cpu_model", "cpu_cores", "torch", "timm", "pytorch_lightning", "load_average"):
        assert info[key], key


def test_plain_loop_reports_one_figure_per_window_and_trains() -> None:
    setup = Setup("test_resnet", torch.device("cpu"), batch_size=4)
    model = build_model(setup)
    before = [p.detach().clone() for p in model.parameters()]
    batch = random_batch(4, (32, 32), 10)
    windows = plain_windows(setup, model, [batch] * 5, warmup=1, steps=2, windows=2)
    assert len(windows) == 2
    assert all(
        w.images_per_sec > 0 and w.pixels_per_sec == pytest.approx(w.images_per_sec * 32 * 32)
        for w in windows
    )
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_table_renders_every_section_and_verdict() -> None:
    report = {
        **report_head(),
        "overhead": {"size": 64, "resflex_images_per_sec": 96.0, "plain_images_per_sec": 100.0,
                     "ratio": 0.96, "target": 0.95},
        "pipeline": {"size": 64, "full_images_per_sec": 80.0, "compute_only_images_per_sec": 100.0,
                     "ratio": 0.8, "target": 0.9, "workers": 2, "format": "jpeg"},
        "mixed": {"sizes": [48, 64], "fixed_size": 56, "mixed_pixels_per_sec": 1e6,
                  "fixed_pixels_per_sec": 1e6, "ratio": 1.0, "target": 0.95},
        "memory": {"kind": "cpu_peak_rss", "batch_size": 8,
                   "per_size": {"48": {"peak_mb": 1.0, "above_start_mb": 0.5}}},
        "study": None,
        "wall_seconds": 1.0,
    }  # fmt: skip
    table = cli.render_table(report)
    assert "1 overhead" in table and "met" in table
    assert "2 pipeline" in table and "NOT met" in table
    assert "3 mixed" in table and "4 memory" in table and "48px" in table
    graded = cli.add_verdicts(copy.deepcopy(report))
    assert [graded[k]["verdict"] for k in ("overhead", "pipeline", "mixed")] == ["met", "NOT met", "met"]
    # --quick: a toy model in short windows, graded against nothing (the targets are resnet18's at batch 32)
    report["config"]["quick"] = True
    table = cli.render_table(report)
    rows = [line for line in table.splitlines() if line[:2] in ("1 ", "2 ", "3 ")]
    assert len(rows) == 3 and all(cli.QUICK_VERDICT in line for line in rows)
    assert "met" not in table.replace(cli.QUICK_VERDICT, "")
    graded = cli.add_verdicts(report)
    assert all(graded[k]["verdict"] == cli.QUICK_VERDICT for k in ("overhead", "pipeline", "mixed"))
    assert cli.QUICK_VERDICT == "n/a (quick: a toy model; targets are for the full run)"


@pytest.mark.slow
def test_quick_benchmark_produces_every_json_key(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_cli(["--quick", "--json", str(out)], cwd=tmp_path, script=BENCHMARK, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in cli.REQUIRED_KEYS:
        assert key in report, key
    for key in cli.SECTIONS:
        assert report[key] is not None, key
    for section, a, b in (
        ("overhead", "resflex_images_per_sec", "plain_images_per_sec"),
        ("pipeline", "full_images_per_sec", "compute_only_images_per_sec"),
        ("mixed", "mixed_pixels_per_sec", "fixed_pixels_per_sec"),
    ):
        record = report[section]
        assert record[a] > 0 and record[b] > 0, section
        assert record["ratio"] == pytest.approx(record[a] / record[b], rel=1e-2), section
        assert len(record["samples"][a]) == report["config"]["repeats"] * report["config"]["windows"], section
        assert "target" in record and record["verdict"] == cli.QUICK_VERDICT
    assert set(report["memory"]["per_size"]) == {"48", "64", "80"}
    assert report["machine"]["cpu_cores"] >= 1 and report["machine"]["torch"]
    assert "1 overhead" in result.stdout and "ratio" in result.stdout


def test_views_section_times_each_view_against_the_plain_step_and_prices_the_default_draw(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks import views

    # through the command line, as --sections views runs it: one progress line per measured cell
    tiny = ["--size", "32", "--batch-size", "4", "--warmup", "1", "--steps", "1", "--repeats", "1"]
    report = cli.run(cli.parse_args(["--quick", "--sections", "views", "--windows", "1", *tiny]))
    record = report["views"]
    progress = [line for line in capsys.readouterr().err.splitlines() if "views cell" in line]
    assert [line.split("]", 1)[1].strip().split(":")[0] for line in progress] == [
        f"views cell {k}/4" for k in range(1, 5)
    ]
    assert progress[0].startswith("[") and "s]" in progress[0]  # the elapsed time, as the sections' lines
    assert "share 1, 0.6x view, step time" in progress[0] and "share 0.5, 1.4x view" in progress[3]
    assert report["config"]["backbone"] == "test_resnet" and report["overhead"] is None
    assert set(record["step_cost"]) == {"share 1", "share 0.5"} and record["plain_step_s"] > 0
    assert all(set(per) == {"0.6x", "1.4x"} for per in record["step_cost"].values())
    assert all(ratio > 0 for per in record["step_cost"].values() for ratio in per.values())
    for share, per in record["step_cost"].items():  # 0.16 * mean(cost - 1) over 0.6x, 0.6x, 1.4x
        expected = 0.16 * (2 * (per["0.6x"] - 1) + (per["1.4x"] - 1)) / 3
        assert record["default_draw"]["extra_step_time"][share] == pytest.approx(expected, abs=1e-4)
    text = "\n".join(views.render(record))
    assert "6 scale-consistency views @32 px" in text and "share 0.5: 0.6x view" in text
    assert "views" in cli.parse_args(["--sections", "views"]).sections and "views" in cli.REQUIRED_KEYS
