"""scripts/plot_resolution.py: a sweep folder's glob (with multirun.yaml and summary.*) and one
curve per run, named by what differs between the runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import load_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(
    folder: Path, overrides: list[str], accs: tuple[float, float], record_overrides: bool = True
) -> Path:
    folder.mkdir(parents=True)
    record: dict[str, Any] = {
        "status": "completed",
        "choices": {"pooling": "avg"},
        "metrics": {"test/acc@32": accs[0], "test/acc@64": accs[1], "val/acc@32": accs[0]},
    }
    if record_overrides:
        record["overrides"] = overrides
    else:  # an older record: the overrides only in .hydra/overrides.yaml
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder


def _sweep(root: Path) -> Path:
    """A 2 x 2 sweep folder as Hydra and summarize.py leave it."""
    sweep = root / "sweep"
    jobs = [(p, b) for p in ("avg", "pyramid") for b in ("resnet18", "convnext_atto")]
    for k, (pooling, backbone) in enumerate(jobs):
        overrides = [f"pooling={pooling}", f"backbone={backbone}", "trainer.max_epochs=2"]
        _run(sweep / str(k), overrides, (0.1 * k, 0.2 + 0.1 * k), record_overrides=k != 3)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (sweep / "summary.csv").write_text("job\n")
    (sweep / "summary.png").write_bytes(PNG_MAGIC)
    (sweep / "not_a_run").mkdir()
    return sweep


@pytest.fixture
def plot(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The script, with the curves it draws kept in ``plot.drawn``."""
    module = load_script("plot_resolution")  # scripts/plot_resolution.py
    module.drawn = {}
    draw = module.draw_accuracy_vs_resolution

    def spy(curves: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        module.drawn = dict(curves)
        return draw(curves, *args, **kwargs)

    monkeypatch.setattr(module, "draw_accuracy_vs_resolution", spy)
    return module


def test_the_documented_glob_skips_what_is_not_a_run_and_draws_every_run(
    plot: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _sweep(tmp_path)
    out = tmp_path / "fig.png"
    paths = [str(p) for p in sorted(sweep.glob("*"))]  # what the shell makes of logs/multirun/<time>/*
    assert plot.main([*paths, "--out", str(out), "--stage", "test", "--train-size", "32"]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    err = capsys.readouterr().err
    for name in ("multirun.yaml", "summary.csv", "summary.png", "not_a_run"):
        assert f"skipped {sweep / name}:" in err, name
    assert "Traceback" not in err
    # four runs, four curves, each named by the two overrides that differ (not the shared epochs)
    assert set(plot.drawn) == {
        "pooling=avg,backbone=resnet18",
        "pooling=avg,backbone=convnext_atto",
        "pooling=pyramid,backbone=resnet18",
        "pooling=pyramid,backbone=convnext_atto",  # read from .hydra/overrides.yaml
    }
    assert plot.drawn["pooling=avg,backbone=convnext_atto"] == {32: 0.1, 64: pytest.approx(0.3)}


def test_a_sweep_over_anything_but_pooling_keeps_one_curve_per_run(plot: Any, tmp_path: Path) -> None:
    runs = [
        _run(tmp_path / f"lr{k}", ["pooling=avg", f"optimizer.lr={lr}"], (0.1, 0.2 + k))
        for k, lr in enumerate((0.01, 0.001))
    ]
    assert plot.main([*map(str, runs), "--out", str(tmp_path / "fig.png")]) == 0
    assert list(plot.drawn) == ["optimizer.lr=0.01", "optimizer.lr=0.001"]


def test_runs_with_the_same_overrides_keep_apart_by_folder(plot: Any, tmp_path: Path) -> None:
    runs = [_run(tmp_path / name, ["pooling=avg"], (0.1, 0.2)) for name in ("first", "second")]
    runs.append(_run(tmp_path / "other" / "first", ["pooling=avg"], (0.3, 0.4)))
    runs.append(_run(tmp_path / "pyr", ["pooling=pyramid"], (0.3, 0.4)))
    assert plot.main([*map(str, runs), "--out", str(tmp_path / "fig.png")]) == 0
    assert list(plot.drawn) == [
        f"pooling=avg ({runs[0]})",
        "pooling=avg (second)",
        f"pooling=avg ({runs[2]})",
        "pooling=pyramid",
    ]


def test_nothing_to_plot_is_one_line(plot: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    out = tmp_path / "fig.png"
    assert plot.main([str(tmp_path / "multirun.yaml"), str(tmp_path / "gone"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no run folder among the 2 path(s) given (hint:")
    assert len(err) == 3 and not out.exists()  # two 'skipped' lines, then the error


def test_an_unwritable_out_is_one_line_before_any_run_is_read(
    plot: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("a file where the folder should be")
    out = tmp_path / "file" / "fig.png"
    assert plot.main([str(tmp_path / "gone"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # no "skipped .../gone" line: no run was read
    assert err[0].startswith(f"error: cannot write --out={out}: ")
    assert err[0].endswith("(hint: --out=<a writable folder>/fig.png)")
