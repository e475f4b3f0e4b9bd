"""Where resflex's loggers put scalars, text and figures (resflex.training.loggers), checked directly on
each logger without a run: the TensorBoard logger's dropped ``epoch`` chart, the CSV logger's text and
image files, and the MLflow logger's run name, tags and metric names."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from matplotlib.figure import Figure
from pytorch_lightning.loggers import CSVLogger

from resflex.training.loggers import MLFlowLogger, TensorBoardLogger, log_figure, log_text, mlflow_key
from tests.conftest import scalar_tags


def test_tensorboard_gets_every_scalar_but_the_epoch_counter(tmp_path: Path) -> None:
    """A chart of the epoch against the step was the first thing SCALARS showed, ahead of the curves."""
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="", version="")
    logger.log_metrics({"epoch": 3.0, "train/loss": 0.5, "val/acc@64": 0.25}, step=7)
    logger.experiment.flush()
    tags = scalar_tags(Path(logger.log_dir))
    assert set(tags) == {"train/loss", "val/acc@64"}
    assert tags["train/loss"] == [(7, 0.5)]


def test_csv_runs_get_text_and_figures_as_files_named_by_the_tag(tmp_path: Path) -> None:
    """A tag's ``/`` must not open sub-folders: ``summary/results`` is ``text/summary_results.md``."""
    logger = CSVLogger(save_dir=str(tmp_path), name="", version="")
    trainer = SimpleNamespace(loggers=[logger], global_step=12)
    log_text(trainer, "summary/results", "| size | acc |")  # type: ignore[arg-type]
    log_figure(trainer, "figures/acc_vs_resolution", Figure())  # type: ignore[arg-type]
    log_dir = Path(logger.log_dir)
    assert (log_dir / "text" / "summary_results.md").read_text() == "| size | acc |"
    assert [p.name for p in (log_dir / "images").iterdir()] == ["figures_acc_vs_resolution_step_12.png"]


def test_mlflow_metric_names_keep_the_size_readable() -> None:
    """MLflow refuses ``@``; Lightning would delete it (``val/acc64``), resflex spells it ``_at_``."""
    assert mlflow_key("val/acc@64") == "val/acc_at_64"
    assert mlflow_key("test/loss@48x80") == "test/loss_at_48x80"
    assert mlflow_key("train/lr-AdamW/pg1") == "train/lr-AdamW/pg1"


def test_an_mlflow_run_is_named_after_its_folder_unless_named_and_tagged_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    run_dir = str(tmp_path / "2026-12-07_08-00-00")
    named_by_folder = MLFlowLogger(run_dir=run_dir, tracking_uri=uri, tags={"team": "vision"})
    assert named_by_folder._run_name == "2026-12-07_08-00-00"
    assert named_by_folder.tags == {"resflex.run_dir": run_dir, "team": "vision"}
    assert (tmp_path / "store").is_dir()  # SQLite creates the file, resflex its folder
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # a real database: no file store
    named = MLFlowLogger(run_dir=run_dir, tracking_uri=uri, run_name="baseline")
    assert named._run_name == "baseline"


def test_an_mlflow_store_leaves_no_empty_mlruns_folder_where_the_run_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow < 3.9 makes ``./mlruns`` on opening a database store (real under ``make test-min``)."""
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    MLFlowLogger(run_dir=str(tmp_path / "run"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("before", ["absent", "empty", "in use"])
def test_only_an_mlruns_folder_the_store_made_and_left_empty_is_removed(
    before: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the installed MLflow does, a user's own ``mlruns/`` (empty or not) is never touched."""
    from pytorch_lightning.loggers import MLFlowLogger as LightningMLFlowLogger

    monkeypatch.chdir(tmp_path)
    if before != "absent":
        (tmp_path / "mlruns").mkdir()
    if before == "in use":
        (tmp_path / "mlruns" / "0").mkdir()

    def opening_a_store_makes_mlruns(self: object, *args: object, **kwargs: object) -> None:
        Path("mlruns").mkdir(exist_ok=True)

    monkeypatch.setattr(LightningMLFlowLogger, "__init__", opening_a_store_makes_mlruns)
    MLFlowLogger(run_dir=str(tmp_path / "run"), tracking_uri="http://localhost:5000")
    assert (tmp_path / "mlruns").is_dir() == (before != "absent")
    assert (tmp_path / "mlruns" / "0").is_dir() == (before == "in use")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["logger=csv", "logger.csv.save_dir={file}/csv"], "cannot write logger.csv.save_dir={file}/csv: "),
        (["logger=mlflow", "logger.mlflow.tracking_uri=foo://bar"], "the mlflow logger cannot start: "),
    ],
    ids=["csv save_dir", "mlflow uri"],
)
def test_a_logger_that_cannot_start_is_one_line_naming_it(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    """The CSV logger makes its folder at fit's start (a traceback from inside Lightning then), and
    Hydra wraps a logger's own error two causes deep: both are one line before any work."""
    from resflex.build import build_loggers
    from resflex.errors import ResflexError
    from tests.test_configs import compose_train

    file = tmp_path / "file"
    file.write_text("in the way")
    cfg = compose_train([o.format(file=file) for o in overrides], tmp_path / "run")
    with pytest.raises(ResflexError) as info:
        build_loggers(cfg)
    line = info.value.one_line()
    assert line.startswith(message.format(file=file)) and "(hint: " in line and "\n" not in line


def test_a_resumed_csv_run_keeps_the_rows_it_wrote_before(tmp_path: Path) -> None:
    """Lightning's CSV writer deletes metrics.csv when it starts: a resumed run kept only the steps
    after the resume (166 rows became 35)."""
    import csv

    from tests.conftest import RESUME_RUN, train_run

    run_dir = tmp_path / "run"
    base = [*RESUME_RUN, "logger=csv", "trainer.max_epochs=1", "eval.resolutions=[32]"]
    train_run(base, run_dir)
    path = run_dir / "csv" / "metrics.csv"
    before = list(csv.DictReader(path.open()))
    steps = sorted({int(r["step"]) for r in before if r.get("train/loss")})
    assert steps == [0, 1, 2, 3, 4]
    train_run([*base[:-2], "trainer.max_epochs=2", "eval.resolutions=[32]", "ckpt_path=last"], run_dir)
    after = list(csv.DictReader(path.open()))
    assert after[: len(before)] == [{**row, **{k: "" for k in after[0] if k not in row}} for row in before]
    assert sorted({int(r["step"]) for r in after if r.get("train/loss")}) == list(range(10))
