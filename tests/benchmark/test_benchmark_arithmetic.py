"""The benchmark's arithmetic on injected timings: which side is the numerator, medians over repeats,
warm-up left out, the two sides alternating, and what the table and the JSON file say.

No wall-clock figure is asserted: the clock and the timed runs are replaced by fakes whose numbers the
expected ratios are computed from.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import cli, loader, runners, sections, views
from benchmarks.machine import machine_info
from benchmarks.runners import Setup, Window, build_model, lightning_windows
from tests.benchmark.test_benchmark import report_head


def _setup() -> Setup:
    return Setup("test_resnet", torch.device("cpu"), batch_size=4)


def test_a_window_counts_only_its_own_steps_after_the_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """images/s and pixels/s of a window: the images of its steps (not the warm-up's, not the previous
    window's) over the time between its boundaries; pixels are h * w per image."""
    ticks: Iterator[float] = iter([0.0, 2.0, 2.0, 6.0, 6.0])  # open, close (2 s), open, close (4 s), open
    monkeypatch.setattr(runners.time, "perf_counter", lambda: next(ticks))
    clock = runners._Clock(torch.device("cpu"), warmup=3, steps=2)
    for _ in range(3 + 2 * 2):
        clock.step_done(torch.zeros(4, 3, 2, 3))
    assert clock.windows == [Window(4.0, 24.0), Window(2.0, 12.0)]  # 8 images of 2x3 px per window


def _windows(rates: list[float]) -> Iterator[list[Window]]:
    return iter([[Window(r, r * 10)] for r in rates])


def test_overhead_is_the_median_of_resflex_over_the_median_of_the_plain_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The two sides alternate A B B A A B over the repeats, each side's figure is the median of its own
    windows, the ratio is resflex / plain and the best ratio is the fastest window of each."""
    calls: list[str] = []
    resflex, plain = _windows([90.0, 100.0, 300.0]), _windows([200.0, 250.0, 100.0])

    def fake_lightning(*args: Any) -> list[Window]:
        calls.append("resflex")
        return next(resflex)

    def fake_plain(*args: Any) -> list[Window]:
        calls.append("plain")
        return next(plain)

    monkeypatch.setattr(sections, "build_module", lambda setup, model: "module")
    monkeypatch.setattr(sections, "lightning_windows", fake_lightning)
    monkeypatch.setattr(sections, "plain_windows", fake_plain)
    record = sections.overhead(_setup(), None, 16, warmup=1, steps=1, repeats=3)
    assert calls == ["resflex", "plain", "plain", "resflex", "resflex", "plain"]
    assert record["samples"] == {
        "resflex_images_per_sec": [90.0, 100.0, 300.0],
        "plain_images_per_sec": [200.0, 250.0, 100.0],
    }
    assert record["resflex_images_per_sec"] == 100.0 and record["plain_images_per_sec"] == 200.0
    assert record["ratio"] == 0.5 and record["best_ratio"] == 1.2
    assert record["size"] == 16 and record["target"] == sections.TARGETS["overhead"]["cpu"]


def test_the_fixed_side_of_the_mixed_figure_has_the_mean_pixel_count_not_the_mean_side() -> None:
    """32 and 96 px: mean pixels 5120, a side of 71.6 -> 72 (the mean side would be 64)."""
    assert sections.equal_pixel_side([32, 96], 8) == 72


def test_memory_is_measured_smallest_size_first_and_above_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each size's peak and the peak less the resident memory at the reset."""

    class FakeMeter:
        kind, resettable, baseline_mb = "fake", True, 100.0

        def __init__(self, device: torch.device) -> None:
            self.peak = 140.0

        def reset(self) -> None:
            pass

        def peak_mb(self) -> float:
            self.peak += 10.0
            return self.peak

    monkeypatch.setattr(sections, "PeakMemory", FakeMeter)
    monkeypatch.setattr(sections, "plain_windows", lambda *args: [])
    record = sections.memory(_setup(), None, [24, 16, 24])
    assert list(record["per_size"]) == ["16", "24"]
    assert record["per_size"]["16"] == {"peak_mb": 150.0, "above_start_mb": 50.0}
    assert record["per_size"]["24"] == {"peak_mb": 160.0, "above_start_mb": 60.0}


def test_study_ratio_is_the_time_to_the_fixed_runs_final_accuracy_over_the_fixed_runs_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The target is the fixed run's final val/acc (not its best); a variant reaches it at the first epoch
    whose accuracy is at least the target; ratio = that epoch's training time / the fixed run's."""
    fixed = [{"epoch": 0, "train_seconds": 10.0, "val_acc": 0.5},
             {"epoch": 1, "train_seconds": 20.0, "val_acc": 0.8},
             {"epoch": 2, "train_seconds": 30.0, "val_acc": 0.7}]  # fmt: skip
    progressive = [{"epoch": 0, "train_seconds": 5.0, "val_acc": 0.6},
                   {"epoch": 1, "train_seconds": 12.0, "val_acc": 0.7},
                   {"epoch": 2, "train_seconds": 20.0, "val_acc": 0.9}]  # fmt: skip
    curves = iter([fixed, progressive])
    monkeypatch.setattr(sections, "_study_run", lambda *args: next(curves))
    record = sections.study(_setup(), 32, 3, workers=0)
    assert record["target_val_acc"] == 0.7 and record["fixed_seconds"] == 30.0
    (variant,) = record["variants"]
    assert variant["epoch_reached"] == 1 and variant["seconds_to_target"] == 12.0
    assert variant["ratio"] == 0.4 and record["ratio"] == 0.4


def test_lightning_windows_times_every_window_asked_for() -> None:
    """--windows: the Lightning side runs warm-up + steps * windows steps and reports each window."""
    setup = Setup("test_resnet", torch.device("cpu"), batch_size=2)
    model = build_model(setup)
    batches = [runners.random_batch(2, (16, 16), 10, i) for i in range(3)]
    windows = lightning_windows(setup, runners.build_module(setup, model), batches, 1, 1, windows=2)
    assert len(windows) == 2 and all(
        w.pixels_per_sec == pytest.approx(w.images_per_sec * 256) for w in windows
    )


def test_view_cost_is_the_plain_rate_over_the_view_rate_as_medians_of_alternating_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Per cell, plain and view runs alternate; the cost is median plain rate / median view rate (a step
    time ratio); the plain step's seconds are the batch over the median of the cells' plain rates."""
    calls: list[str] = []
    rates = {"plain": iter([100.0, 120.0, 400.0] * 2 + [400.0, 400.0, 400.0]),
             "view": iter([60.0, 60.0, 300.0] * 3)}  # fmt: skip

    def fake_module(setup: Setup, model: Any, **kwargs: Any) -> str:
        return "view" if kwargs.get("scale_consistency") else "plain"

    def fake_windows(setup: Setup, module: str, *args: Any) -> list[Window]:
        calls.append(module)
        return [Window(next(rates[module]), 0.0)]

    monkeypatch.setattr(views, "build_module", fake_module)
    monkeypatch.setattr(views, "lightning_windows", fake_windows)
    record = views.views(_setup(), None, 16, 1, 1, repeats=3, factors=(0.6, 1.0, 1.4), shares=(1.0,))
    assert calls[:6] == ["plain", "view", "view", "plain", "plain", "view"]
    assert record["step_cost"] == {"share 1": {"0.6x": 2.0, "1x": 2.0, "1.4x": 6.667}}
    assert record["plain_step_s"] == round(4 / 120.0, 4)  # median of 120, 120, 400 (the mean would be 213)


def test_loader_rates_are_images_per_cpu_second_medians_of_alternating_epochs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Per pipeline: images / CPU seconds of each epoch (wall seconds give the wall figure), the median
    over repeats; the pipelines run in order, then in reverse order, alternately."""
    order: list[str] = []
    cpu = {"timm": iter([1.0, 2.0, 8.0])}  # 64 images: 64, 32, 8 images/s -> median 32

    def fake_epoch(built: str, limit: int | None = None) -> tuple[int, float, float, list[int]]:
        if limit is not None:
            return 32, 1.0, 1.0, [16, 16]
        order.append(built)
        return 64, 0.5, next(cpu[built]) if built in cpu else 1.0, [16, 16]

    monkeypatch.setattr(loader, "resflex_loader", lambda root, d, *args: f"resflex_{d}")
    monkeypatch.setattr(loader, "timm_loader", lambda *args: "timm")
    monkeypatch.setattr(loader, "torchvision_loader", lambda *args: "torchvision")
    monkeypatch.setattr(loader, "_epoch", fake_epoch)
    case = loader._case(Path("."), "train", "square", 16, 3, [])
    names = [f"resflex_{d}" for d in loader.DECODERS] + ["timm", "torchvision"]
    assert order == names + names[::-1] + names
    assert case["per_core"]["timm"] == 32.0 and case["per_core"]["torchvision"] == 64.0
    assert case["wall"]["timm"] == 128.0
    assert case["ratio_vs_timm"]["torchvision"] == 2.0


def test_the_loader_target_is_the_default_decoders_train_square_ratio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The headline per target size is the train split's square case with the default decoder; the
    image count is rounded down to whole batches."""
    written: list[int] = []

    def fake_folder(root: Path, count: int, seed: int = 0) -> dict[str, Any]:
        written.append(count)
        return {"images": count}

    def fake_case(root: Path, split: str, geometry: str, size: int, *args: Any) -> dict[str, Any]:
        base = 1.0 if split == "train" else 3.0
        ratios = {f"resflex_{d}": base + (0.5 if d == "auto" else 0.0) for d in loader.DECODERS}
        return {"split": split, "geometry": geometry, "size": size, "ratio_vs_timm": ratios}

    monkeypatch.setattr(loader, "write_photo_folder", fake_folder)
    monkeypatch.setattr(loader, "decode_costs", lambda *args: {})
    monkeypatch.setattr(loader, "_case", fake_case)
    monkeypatch.setattr(loader, "device_decode_case", lambda *args: {})
    monkeypatch.setattr(loader, "default_decoder", lambda: "auto")
    record = loader.loader(sizes=[128], images=40, repeats=1, splits=("eval", "train"))
    assert written == [32]
    assert record["targets"]["128"]["ratio"] == 1.5 and record["targets"]["128"]["target"] == 1.5
    shown = {**record, "image_size": [1, 1], "quality": 90, "mean_file_kb": 1, "cases": [],
             "device_decode": None, "load_average": {"start": None, "end": None}}  # fmt: skip
    table = "\n".join(loader.render(shown))
    assert "target train square @128: resflex (auto) / timm 1.500 >= 1.5: met" in table


def test_a_ratio_on_its_target_meets_it_and_the_study_target_is_an_upper_bound() -> None:
    """Throughput ratios are met at or above the target; the study's time ratio at or below it."""
    report = {
        "config": {"quick": False},
        "overhead": {"ratio": 0.95, "target": 0.95},
        "study": {"target": 0.75, "variants": [{"ratio": 0.7}, {"ratio": 0.75}, {"ratio": 0.8}]},
    }
    graded = cli.add_verdicts(report)
    assert graded["overhead"]["verdict"] == "met"
    assert [v["verdict"] for v in graded["study"]["variants"]] == ["met", "met", "NOT met"]


def test_machine_info_records_the_intra_op_threads_the_figures_ran_on() -> None:
    """torch_threads is torch's intra-op thread count (what --threads sets)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert machine_info(torch.device("cpu"))["torch_threads"] == 3
    finally:
        torch.set_num_threads(threads)


def test_every_chosen_section_runs_with_the_options_and_the_json_file_has_the_verdicts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each section named in --sections gets --warmup, --steps, --repeats, --windows (memory: every
    --sizes and --size); the table prints resflex's figure before the baseline's; the file written at the
    end has every section and its verdict."""
    got: dict[str, tuple] = {}

    def record(name: str, result: dict[str, Any]) -> Any:
        def fake(*args: Any, **kwargs: Any) -> dict[str, Any]:
            got[name] = args[2:] if name != "loader" else args
            got[name + "_kwargs"] = tuple(sorted(kwargs))
            return result

        return fake

    monkeypatch.setattr(sections, "overhead", record("overhead", {
        "size": 40, "resflex_images_per_sec": 111.0, "plain_images_per_sec": 222.0, "ratio": 0.5,
        "target": 0.95}))  # fmt: skip
    monkeypatch.setattr(sections, "pipeline", record("pipeline", {
        "size": 40, "full_images_per_sec": 1.0, "compute_only_images_per_sec": 1.0, "ratio": 1.0,
        "target": 0.9, "workers": 0, "format": "jpeg"}))  # fmt: skip
    monkeypatch.setattr(sections, "mixed", record("mixed", {
        "sizes": [32, 48], "fixed_size": 40, "mixed_pixels_per_sec": 1e3, "fixed_pixels_per_sec": 1e3,
        "ratio": 1.0, "target": 0.95}))  # fmt: skip
    monkeypatch.setattr(sections, "memory", record("memory", {"kind": "k", "batch_size": 4, "per_size": {}}))
    monkeypatch.setattr(loader, "loader", record("loader", {"fake": "loader"}))
    monkeypatch.setattr(loader, "render", lambda rec: ["LOADER ROWS"])
    monkeypatch.setattr(views, "views", record("views", {"fake": "views"}))
    monkeypatch.setattr(views, "render", lambda rec: ["VIEWS ROWS"])
    out = tmp_path / "bench.json"
    argv = ["--backbone", "test_resnet", "--batch-size", "4", "--size", "40", "--sizes", "32,48",
            "--warmup", "1", "--steps", "2", "--repeats", "3", "--windows", "2", "--workers", "0",
            "--sections", "overhead,pipeline,mixed,memory,loader,views", "--json", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    assert got["overhead"] == (40, 1, 2, 3, 2)
    assert got["pipeline"] == (40, 0, 1, 2, 3, "jpeg", 2)
    assert got["mixed"][2:] == (1, 2, 3, 0, 2)  # after the multiple: warmup, steps, repeats, seed, windows
    assert got["memory"] == ([32, 40, 48],)
    assert got["loader"][:3] == ([128, 160, 192, 224], 320, 3)
    assert got["views"] == (40, 1, 2, 3, 2)
    table = capsys.readouterr().out
    assert "LOADER ROWS" in table and "VIEWS ROWS" in table
    row = next(line for line in table.splitlines() if line.startswith("1 overhead"))
    assert row.index("111.0") < row.index("222.0") and "NOT met" in row
    report = json.loads(out.read_text())
    assert report["overhead"]["verdict"] == "NOT met" and report["mixed"]["verdict"] == "met"
    assert report["loader"] == {"fake": "loader"} and report["views"] == {"fake": "views"}


def test_mixed_warms_up_on_every_size_and_compares_pixels_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both sides' warm-up is every size once plus --warmup draws (untimed); the ratio is in pixels/s (the
    two sides' images differ in size); the mixed side's mean pixels are those of its timed steps."""
    from resflex.data.resolution import RandomResolution

    warmups: list[int] = []
    shapes: list[list[int]] = []

    def fake_windows(setup: Setup, module: str, seq: list[Any], warmup: int, steps: int, windows: int):
        warmups.append(warmup)
        sides = [int(x.shape[-1]) for x, _ in seq]
        shapes.append(sides)
        fixed = len(set(sides)) == 1
        return [Window(100.0, 100.0 * (2000.0 if fixed else 1000.0))]

    monkeypatch.setattr(sections, "build_module", lambda setup, model: "module")
    monkeypatch.setattr(sections, "lightning_windows", fake_windows)
    record = sections.mixed(_setup(), None, [16, 32], 8, warmup=1, steps=3, repeats=2, windows=2)
    assert warmups == [3, 3, 3, 3] and all(len(s) == 3 + 3 * 2 for s in shapes)
    assert shapes[0][:2] == [16, 32] and record["fixed_size"] == 24 and set(shapes[1]) == {24}
    assert (
        record["ratio"] == 0.5 and record["mixed_images_per_sec"] == record["fixed_images_per_sec"] == 100.0
    )
    drawn = [RandomResolution(sizes=[16, 32], seed=0, geometry="square").size_at(0, i)[0] for i in range(6)]
    assert shapes[0][3:] == drawn
    assert record["mean_pixels_mixed"] == round(sum(s * s for s in drawn) / 6, 1)


def test_the_study_row_prints_the_variants_seconds_before_the_fixed_runs() -> None:
    """Row 5: seconds to the target of the progressive variant, then the fixed run's, then their ratio."""
    report = {
        **report_head(),
        "study": {"target_val_acc": 0.7, "fixed_seconds": 30.0, "target": 0.75,
                  "variants": [{"seconds_to_target": 12.0, "ratio": 0.4, "sizes_per_epoch": "48 64",
                                "final_val_acc": 0.9}]},
        "wall_seconds": 1.0,
    }  # fmt: skip
    row = next(line for line in cli.render_table(report).splitlines() if line.startswith("5a"))
    assert row.split()[5:9] == ["12.0", "30.0", "0.400", "<=0.75"] and "met" in row


def test_an_explicit_zero_is_kept_and_loader_and_views_are_sections() -> None:
    """--warmup 0 means no warm-up, not the default; the extra sections are accepted by --sections."""
    args = cli.fill_defaults(
        cli.parse_args(["--warmup", "0", "--sections", "loader,views"]), torch.device("cpu")
    )
    assert args.warmup == 0 and args.steps == cli.DEFAULTS["cpu"]["steps"]


def test_keep_aspect_borrows_the_baselines_of_its_own_split_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm and torchvision have no keep_aspect: that case takes their square figures of the same split
    and size; a square case of the other split is no substitute (they are measured); timm has no ratio
    to itself."""
    order: list[str] = []

    def fake_epoch(built: str, limit: int | None = None) -> tuple[int, float, float, list[int]]:
        if limit is None:
            order.append(built)
        return 32, 1.0, 1.0, [16, 21]

    monkeypatch.setattr(loader, "resflex_loader", lambda root, d, *args: f"resflex_{d}")
    monkeypatch.setattr(loader, "timm_loader", lambda *args: "timm")
    monkeypatch.setattr(loader, "torchvision_loader", lambda *args: "torchvision")
    monkeypatch.setattr(loader, "_epoch", fake_epoch)
    train_square = {"split": "train", "size": 16, "geometry": "square",
                    "per_core": {"timm": 64.0, "torchvision": 16.0},
                    "wall": {"timm": 1.0, "torchvision": 1.0}}  # fmt: skip
    case = loader._case(Path("."), "eval", "keep_aspect", 16, 1, [train_square])
    assert "timm" in order and "baseline" not in case and case["per_core"]["timm"] == 32.0
    case = loader._case(Path("."), "train", "keep_aspect", 16, 1, [train_square])
    assert case["per_core"]["timm"] == 64.0 and "baseline" in case
    assert set(case["ratio_vs_timm"]) == {f"resflex_{d}" for d in loader.DECODERS} | {"torchvision"}
    assert case["ratio_vs_timm"]["resflex_pil"] == 0.5 and case["out_hw"] == [16, 21]


def test_with_no_warm_up_the_first_window_opens_at_the_first_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """--warmup 0: no warm-up step's end opens the first window, so it opens when the first step starts
    (it used to count from perf_counter's arbitrary zero: a first window of ~0 images/s and a ratio of
    nothing); both sides, the plain loop and Lightning's timer."""
    now = iter(range(100, 200))
    monkeypatch.setattr(runners.time, "perf_counter", lambda: float(next(now)))
    setup = _setup()
    batch = runners.random_batch(4, (16, 16), 10)
    windows = runners.plain_windows(setup, build_model(setup), [batch] * 4, 0, 2, 2)
    assert windows == [Window(8.0, 8.0 * 256)] * 2  # 2 steps of 4 images; 1 tick from open to close
    timer = runners.WindowTimer(torch.device("cpu"), 0, 1)
    now = iter(range(100, 200))
    for i in range(2):
        timer.on_train_batch_start(None, None, batch, i)  # type: ignore[arg-type]
        timer.on_train_batch_end(None, None, None, batch, i)  # type: ignore[arg-type]
    assert timer.clock.windows == [Window(4.0, 4.0 * 256)] * 2


def test_a_loader_epoch_counts_every_batchs_images_and_reports_the_last_batchs_height_and_width() -> None:
    """The per-core rate's numerator is every image of the epoch; out_hw is (h, w) of a batch."""
    batches = [(torch.zeros(3, 3, 4, 5), 0), (torch.zeros(2, 3, 4, 5), 0)]
    images, wall_s, cpu_s, shape = loader._epoch(batches)
    assert images == 5 and shape == [4, 5] and wall_s >= 0 and cpu_s >= 0
    assert loader._epoch(batches, limit=1)[0] == 3  # the warm-up reads one batch


def test_the_table_prints_a_missing_figure_as_a_dash_and_each_sizes_peak_and_growth() -> None:
    """A figure that could not be measured (None, NaN) is '-', not 'nan'; the memory rows name the peak
    and what the steps added above the start."""
    assert cli._fmt(None) == cli._fmt(float("nan")) == "-" and cli._fmt(1234.5) == "1,234.5"
    report = {
        **report_head(),
        "memory": {"kind": "cpu_peak_rss", "batch_size": 8,
                   "per_size": {"48": {"peak_mb": 300.0, "above_start_mb": 20.0}}},
        "wall_seconds": 1.0,
    }  # fmt: skip
    row = next(line for line in cli.render_table(report).splitlines() if "48px" in line)
    assert row.split() == ["48px", "peak", "300.0", "MiB", "above", "start", "20.0", "MiB"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA has a device to give")
def test_device_cuda_without_a_gpu_is_an_error_naming_it() -> None:
    """--device cuda on a machine without CUDA stops at once with a one-line error."""
    with pytest.raises(SystemExit, match="--device cuda but no CUDA device"):
        cli.resolve_device("cuda")
    assert cli.resolve_device("auto") == torch.device("cpu")
