"""summarize.py on a fixture sweep: metrics.json files written here, in every state a job can be in; the
robustness columns (worst, mean over sizes, range) as logged, or computed from the per-size tags."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest

from resflex.summarize import main, summarize
from resflex.sweep_jobs import add_robustness
from resflex.training.robustness import summarize_sizes
from tests.conftest import REPO, run_cli


def write_job(sweep: Path, name: str, overrides: list[str], record: dict | None, age_s: float = 0) -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if record is not None:
        (job / "metrics.json").write_text(json.dumps({"overrides": overrides, **record}))
    if age_s:
        old = time.time() - age_s
        for path in [job, *job.rglob("*")]:
            os.utime(path, (old, old))
    return job


def completed(val: float, best: float, at32: float, at64: float, ips: float, wall: float) -> dict:
    return {
        "status": "completed",
        "wall_time_s": wall,
        "best": {"val/acc": best, "checkpoint": "x.ckpt"},
        "metrics": {
            "val/acc": val,
            "test/acc": val - 0.01,
            "val/acc@32": at32,
            "val/acc@64": at64,
            "train/images_per_sec": ips,
        },
    }


def make_sweep(root: Path) -> Path:
    sweep = root / "sweep"
    write_job(
        sweep,
        "pooling=avg",
        ["pooling=avg", "trainer.max_epochs=2"],
        completed(0.71, 0.75, 0.6, 0.71, 900.0, 61.0),
    )
    write_job(
        sweep,
        "pooling=max",
        ["pooling=max", "trainer.max_epochs=2"],
        completed(0.83, 0.83, 0.5, 0.83, 800.5, 65.5),
    )
    write_job(
        sweep,
        "pooling=pyramid",
        ["pooling=pyramid", "trainer.max_epochs=2"],
        {
            "status": "failed",
            "error": "ConfigError: pooling.levels must be positive (hint: e.g. [1,2,4])",
            "wall_time_s": 3.2,
            "metrics": {},
        },
    )
    write_job(sweep, "pooling=gem", ["pooling=gem", "trainer.max_epochs=2"], None)  # still writing
    write_job(sweep, "pooling=avgmax", ["pooling=avgmax", "trainer.max_epochs=2"], None, age_s=3600)  # killed
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def test_summary_table_rows_order_and_files(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    text = summarize(sweep, sort="val/acc")
    assert "5 job(s), 2 completed, 1 failed, 1 missing, 1 running" in text
    assert "common overrides: trainer.max_epochs=2" in text
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == [
        "pooling=max",
        "pooling=avg",
        "pooling=pyramid",
        "pooling=gem",
        "pooling=avgmax",
    ]
    assert [r["status"] for r in rows] == ["completed", "completed", "failed", "running", "missing"]
    assert list(rows[0]) == [
        "job", "pooling", "status", "val/acc", "best val/acc", "test/acc",
        "val/acc_worst", "val/acc_mean_sizes", "val/acc_range", "val/acc@32", "val/acc@64",
        "img/s", "time_s", "error",
    ]  # fmt: skip
    # the csv is for programs: numbers as recorded, a missing one empty (the printed table rounds)
    assert rows[0]["val/acc"] == "0.83" and rows[1]["best val/acc"] == "0.75"
    assert rows[1]["val/acc@32"] == "0.6" and rows[0]["img/s"] == "800.5" and rows[0]["time_s"] == "65.5"
    assert rows[2]["val/acc"] == "" and rows[2]["error"].startswith("ConfigError: pooling.levels")
    markdown = (sweep / "summary.md").read_text()
    assert "| pooling=max | max | completed | 0.8300 |" in markdown
    assert (sweep / "summary.png").stat().st_size > 5000


def test_the_folders_of_eval_predict_and_export_under_logs_are_no_training_jobs(tmp_path: Path) -> None:
    """``summarize.py logs`` listed every eval.py, predict.py and export.py folder as a job "running"."""
    logs = tmp_path / "logs"
    make_sweep(logs / "multirun")
    for task in ("eval", "predict", "export"):
        folder = logs / task / "runs" / "2026-12-07_10-00-00" / ".hydra"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("ckpt_path: run\neval: {}\n")
    trained = logs / "train" / "runs" / "one"
    write_job(trained.parent, "one", [], completed(0.5, 0.5, 0.4, 0.5, 100.0, 10.0))
    (trained / ".hydra" / "config.yaml").write_text("backbone: {}\nmodel: {}\n")
    text = summarize(logs, sort="val/acc")
    assert "6 job(s), 3 completed, 1 failed, 1 missing, 1 running" in text


def test_sort_by_other_metric_and_ascending(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    by_32 = summarize(sweep, sort="val/acc@32", write=False).splitlines()
    table = [line.split()[0] for line in by_32 if line.startswith("pooling=")]
    assert table[:2] == ["pooling=avg", "pooling=max"]
    by_ips = summarize(sweep, sort="img/s", ascending=True, write=False)
    rows = [line.split()[0] for line in by_ips.splitlines() if line.startswith("pooling=")]
    assert rows[:2] == ["pooling=max", "pooling=avg"]
    assert not (sweep / "summary.csv").exists()


def test_sort_puts_numbers_then_text_then_jobs_without_the_key() -> None:
    """A key whose values are words in some jobs (an override such as optimizer.name): numbers first,
    then the words, then the jobs that do not have it, by status."""
    from resflex.summarize import sort_jobs
    from resflex.sweep_jobs import Job

    def job(name: str, status: str, value: str | None) -> Job:
        return Job(name, Path(name), status, overrides={} if value is None else {"k": value})

    jobs = [job("none", "failed", None), job("word", "completed", "lion"), job("num", "completed", "0.5")]
    assert [j.name for j in sort_jobs(jobs, "k")] == ["num", "word", "none"]


def test_words_follow_the_direction_asked_and_the_sort_key_is_a_column(tmp_path: Path) -> None:
    """``--sort pooling --ascending`` and ``--sort pooling`` gave the same order (words were always
    a-z), and a key that is no column (val/loss) sorted the table by numbers nobody could see (found by a
    sweep audit)."""
    from resflex.summarize import sort_jobs
    from resflex.sweep_jobs import Job

    jobs = [Job(n, Path(n), "completed", overrides={"k": n}) for n in ("max", "avg", "pyramid")]
    assert [j.name for j in sort_jobs(jobs, "k", ascending=True)] == ["avg", "max", "pyramid"]
    assert [j.name for j in sort_jobs(jobs, "k")] == ["pyramid", "max", "avg"]
    for name, loss in (("pooling=avg", 0.9), ("pooling=max", 0.7)):
        record = completed(0.5, 0.5, 0.4, 0.5, 100.0, 10.0)
        record["metrics"]["val/loss"] = loss
        write_job(tmp_path, name, [name], record)
    lines = summarize(tmp_path, sort="val/loss", ascending=True, write=False).splitlines()
    header = next(line.split() for line in lines if "img/s" in line)
    assert header.index("val/loss") == header.index("img/s") - 1
    assert [line.split()[0] for line in lines if line.startswith("pooling=")] == [
        "pooling=max",
        "pooling=avg",
    ]


def test_single_run_folder_and_bar_plot(tmp_path: Path) -> None:
    record = {"status": "completed", "wall_time_s": 10.0, "metrics": {"val/acc": 0.5}}
    run = write_job(tmp_path, "run", ["data=fashion_mnist"], record)
    text = summarize(run)
    assert "1 job(s), 1 completed" in text and "fashion_mnist" in text
    assert (run / "summary.png").is_file()  # no per-resolution metrics: a bar chart of val/acc


def test_cli_errors_in_one_line(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    assert "error: no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no runs under" in capsys.readouterr().err


def test_script_runs_as_a_user_types_it(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    result = run_cli(
        [str(sweep), "--sort", "val/acc"], cwd=tmp_path, script=REPO / "scripts" / "summarize.py"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    assert lines[rule + 1].startswith("pooling=max") and "0.8300" in lines[rule + 1]
    assert "wrote" in lines[-1] and (sweep / "summary.md").is_file()


def test_robustness_columns_equal_summarize_sizes_of_the_per_size_tags(tmp_path: Path) -> None:
    """A run from before the summary was logged gets it computed from its ``acc@<size>`` tags (val and
    test, square and non-square); a run that logged it shows what it logged."""
    sweep = tmp_path / "sweep"
    curve = {"32": 0.55, "48": 0.80, "64": 0.82, "96": 0.81, "128": 0.60}
    test_curve = {"32": 0.5, "48x80": 0.7, "64": 0.72}
    old = {f"val/acc@{tag}": acc for tag, acc in curve.items()}
    old |= {f"test/acc@{tag}": acc for tag, acc in test_curve.items()}
    write_job(sweep, "seed=1", ["seed=1"], {"status": "completed", "metrics": {"val/acc": 0.82, **old}})
    logged = {"val/acc_worst": 0.4, "val/acc_mean_sizes": 0.5, "val/acc_range": 3.0, "val/acc@64": 0.6}
    write_job(sweep, "seed=2", ["seed=2"], {"status": "completed", "metrics": {"val/acc": 0.6, **logged}})
    text = summarize(sweep, sort="val/acc")
    rows = {r["job"]: r for r in csv.DictReader((sweep / "summary.csv").read_text().splitlines())}
    expected = summarize_sizes({(int(t), int(t)): a for t, a in curve.items()}, main=(64, 64))
    row = rows["seed=1"]
    assert float(row["val/acc_worst"]) == expected.worst == 0.55
    assert float(row["val/acc_mean_sizes"]) == pytest.approx(expected.mean, abs=1e-12)
    assert float(row["val/acc_range"]) == expected.range == 2.0  # 48 to 96 px hold up
    sizes = {(32, 32): 0.5, (48, 80): 0.7, (64, 64): 0.72}
    expected_test = summarize_sizes(sizes, main=(64, 64))
    assert float(row["test/acc_worst"]) == 0.5 and float(row["test/acc_range"]) == expected_test.range
    assert float(row["test/acc_mean_sizes"]) == pytest.approx(expected_test.mean, abs=1e-12)
    assert (rows["seed=2"]["val/acc_worst"], rows["seed=2"]["val/acc_range"]) == ("0.4", "3.0")
    assert rows["seed=2"]["test/acc_worst"] == ""  # never tested
    header = next(line for line in text.splitlines() if line.startswith("job"))
    assert "val/acc_worst" in header and "test/acc_range" in header
    assert "| val/acc_worst | val/acc_mean_sizes | val/acc_range |" in (sweep / "summary.md").read_text()
    by_worst = summarize(sweep, sort="val/acc_worst", write=False)
    assert [line.split()[0] for line in by_worst.splitlines() if line.startswith("seed=")] == [
        "seed=1",
        "seed=2",
    ]


def test_sweep_figure_has_one_accuracy_vs_size_curve_per_job_and_mean_worst_bars(tmp_path: Path) -> None:
    from resflex.summarize import draw, find_jobs, size_curves

    sweep = tmp_path / "sweep"
    per_size = {
        "pooling=avg": {"test/acc@32": 0.5, "test/acc@64": 0.8, "test/acc@96": 0.6},
        "pooling=pyramid": {"test/acc@32": 0.6, "test/acc@64": 0.82, "test/acc@128": 0.7},
        "pooling=max": {"test/acc@48x80": 0.7},  # non-square: drawn at the side of equal area (62)
    }
    for name, metrics in per_size.items():
        record = {"status": "completed", "metrics": {"val/acc": 0.8, "val/acc@64": 0.8, **metrics}}
        write_job(sweep, name, [name, "trainer.max_epochs=4"], record)
    write_job(sweep, "pooling=gem", ["pooling=gem", "trainer.max_epochs=4"], None, age_s=3600)  # no curve
    jobs = find_jobs(sweep)
    split, curves = size_curves(jobs)
    assert split == "test"  # tested: the test curve, not val's
    assert curves == {
        "pooling=avg": [(32, 0.5), (64, 0.8), (96, 0.6)],
        "pooling=max": [(62, 0.7)],
        "pooling=pyramid": [(32, 0.6), (64, 0.82), (128, 0.7)],
    }
    fig = draw(jobs, "val/acc")
    curve_axes, bar_axes = fig.axes
    lines = {line.get_label(): list(zip(*line.get_data(), strict=True)) for line in curve_axes.get_lines()}
    assert lines == {k: [(float(s), v) for s, v in points] for k, points in curves.items()}
    widths = sorted(round(bar.get_width(), 4) for bar in bar_axes.patches)
    means = [round(sum(v for _, v in p) / len(p), 4) for p in curves.values()]
    worst = [min(v for _, v in p) for p in curves.values()]
    assert widths == sorted(means + worst)
    summarize(sweep)
    assert (sweep / "summary.png").stat().st_size > 0


def test_a_sort_key_no_job_has_is_refused_with_the_closest_names(tmp_path: Path, capsys) -> None:
    sweep = make_sweep(tmp_path)
    assert main([str(sweep), "--sort", "val/acc_mean", "--no-write"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --sort val/acc_mean: no job has this column or metric")
    assert "(hint: the closest: val/acc_mean_sizes," in err[0]  # computed from the per-size tags: known
    assert main([str(sweep), "--sort", "val/acc_foo", "--no-write"]) == 2
    assert "the closest: val/acc" in capsys.readouterr().err
    # an override, a metric some job has, and the fixed columns are all accepted
    for key in ("pooling", "val/acc@64", "best val/acc", "time_s"):
        assert main([str(sweep), "--sort", key, "--no-write"]) == 0, key
    # a sweep whose jobs have not written metrics yet still sorts by the default
    running = tmp_path / "running"
    write_job(running, "a", ["pooling=avg"], None)
    assert main([str(running), "--no-write"]) == 0


def test_a_run_that_logged_part_of_the_summary_gets_the_rest_from_its_curve() -> None:
    """What was logged stays as logged; only the missing columns are computed from ``acc@<size>``."""
    metrics = {"val/acc@32": 0.79, "val/acc@64": 0.80, "val/acc@128": 0.5, "val/acc_worst": 0.123}
    filled = add_robustness(dict(metrics))
    assert filled["val/acc_worst"] == 0.123
    assert filled["val/acc_mean_sizes"] == (0.79 + 0.80 + 0.5) / 3
    assert filled["val/acc_range"] == 2.0  # 32 and 64 px within 0.03 of the best
    assert "test/acc_worst" not in filled  # no test curve
