"""Loggers: TensorBoard (default), CSV, MLflow, or several; figures and text reach each that takes them.

Scalars reach every logger through Lightning (``self.log``, ``logger.log_metrics``).
Figures and text have no common Lightning API, so :func:`log_figure` and
:func:`log_text` write them the way each logger stores them:

============  ===================================  ==================================
logger        figures                              text
============  ===================================  ==================================
TensorBoard   IMAGES tab (``add_figure``)          TEXT tab (``add_text``, markdown)
MLflow        run artifact ``<tag>/step_N.png``    run artifact ``<tag>.md``
CSV           ``<log_dir>/images/<tag>_step_N.png`` ``<log_dir>/text/<tag>.md``
============  ===================================  ==================================

Thin subclasses adapt Lightning's loggers to resflex's tags and resumes:

- :class:`TensorBoardLogger` drops Lightning's ``epoch`` scalar: a chart of the
  epoch counter against the step was the first thing SCALARS showed, ahead of
  every training curve (the step axis already says where an epoch ends).
- :class:`MLFlowLogger` keeps per-size tags readable: MLflow refuses ``@`` in
  metric names and Lightning would silently delete it (``val/acc@64`` ->
  ``val/acc64``); resflex writes ``val/acc_at_64`` instead. The default store is
  a SQLite file in the run folder (``mlflow.db``), which needs no server and
  works offline; MLflow 3 refuses its old ``file:`` store unless
  ``MLFLOW_ALLOW_FILE_STORE=true``, which this logger sets when given a
  ``file:`` URI.
- :class:`ResumableCSVLogger` keeps a resumed run's earlier ``metrics.csv`` rows (Lightning's
  writer deletes the file when it starts).
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from matplotlib.figure import Figure
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.loggers import MLFlowLogger as _MLFlowLogger
from pytorch_lightning.loggers import TensorBoardLogger as _TensorBoardLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSV logger that keeps the rows a resumed run wrote before.

    Why: Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts (with a warning
    that it will), so ``ckpt_path=last`` left only the rows after the resume: a run stopped at step
    54 and resumed kept steps 55 onwards. TensorBoard and MLflow keep what was logged; this keeps
    the file and its header, and new columns are added as the writer adds them (rewriting the
    file with its rows). A new run never finds a file there: a folder that holds a run is refused.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rows_kept = False

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self.rows_kept:
            return super().experiment
        path = Path(self.log_dir) / "metrics.csv"
        kept = path.read_bytes() if path.is_file() else None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            writer = super().experiment
        self.rows_kept = True
        if kept is not None and not path.is_file():
            path.write_bytes(kept)
            with path.open(newline="") as file:
                writer.metrics_keys = list(csv.DictReader(file).fieldnames or [])
        return writer


class TensorBoardLogger(_TensorBoardLogger):
    """Lightning's TensorBoard logger without the ``epoch``-vs-step chart, and with chart titles.

    :attr:`titles` (``{tag: (title, description)}``, set by :func:`describe_tags`) go into the
    first point of each tag: TensorBoard keeps a tag's first metadata, shows the title above
    the tag name on its SCALARS card and the description behind the card's info button (and
    in TIME SERIES). That is how ``val/acc`` says at which size it is measured.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.titles: dict[str, tuple[str, str]] = {}

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        titled = {k: v for k, v in metrics.items() if k in self.titles}
        if titled:
            self._log_titled(titled, step)
            metrics = {k: v for k, v in metrics.items() if k not in titled}
        if metrics:
            super().log_metrics(metrics, step)

    def _log_titled(self, metrics: Mapping[str, Any], step: int | None) -> None:
        """The first point of a titled tag, with its title and description in the summary metadata."""
        from tensorboard.compat.proto.summary_pb2 import DATA_CLASS_SCALAR, Summary, SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.compat.proto.types_pb2 import DT_FLOAT

        from resflex.compat import tensorboard_file_writer

        values = []
        for tag, value in metrics.items():
            title, description = self.titles.pop(tag)
            # a tensor-style scalar: TensorBoard's data server keeps this metadata (it gives a
            # ``simple_value`` blank metadata); the tag's later points are plain scalars
            metadata = SummaryMetadata(
                display_name=title,
                summary_description=description,
                plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"),
                data_class=DATA_CLASS_SCALAR,
            )
            number = float(value.item() if hasattr(value, "item") else value)
            tensor = TensorProto(dtype=DT_FLOAT, float_val=[number], tensor_shape=TensorShapeProto())
            values.append(Summary.Value(tag=tag, metadata=metadata, tensor=tensor))
        tensorboard_file_writer(self.experiment).add_summary(Summary(value=values), step)


def describe_tags(trainer: pl.Trainer, titles: Mapping[str, tuple[str, str]]) -> None:
    """Give ``titles`` (``{tag: (title, description)}``) to every resflex TensorBoard logger, for the
    tags' first points (loggers without chart titles ignore them)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.titles.update(titles)


def mlflow_key(tag: str) -> str:
    """A resflex tag as an MLflow metric name: ``val/acc@64`` -> ``val/acc_at_64`` (MLflow refuses ``@``)."""
    return re.sub(r"[^a-zA-Z0-9_/. \-]+", "_", tag.replace("@", "_at_"))


@contextlib.contextmanager
def _no_stray_mlruns_folder() -> Iterator[None]:
    """Remove the empty ``./mlruns`` that MLflow < 3.9 makes when it opens a database store.

    Those versions create the store's default artifact root, ``./mlruns`` in the working
    directory, even when every experiment has its own ``artifact_location`` (resflex's: in
    the run folder), and the client gives no way to pass another root. So a run with
    ``logger=mlflow`` left an empty ``mlruns/`` wherever it was started. Only a folder
    that was not there before and is still empty is removed.
    """
    stray = Path("mlruns")
    existed = stray.exists()
    try:
        yield
    finally:
        if not existed and stray.is_dir() and not any(stray.iterdir()):
            stray.rmdir()


class MLFlowLogger(_MLFlowLogger):
    """Lightning's MLflow logger with resflex's tag names mapped and MLflow 3's ``file:`` store allowed."""

    def __init__(self, *args: Any, run_dir: str | None = None, **kwargs: Any) -> None:
        if run_dir and not kwargs.get("run_name"):  # name the MLflow run as TensorBoard names it: its folder
            kwargs["run_name"] = Path(run_dir).name
        if run_dir:
            kwargs["tags"] = {"resflex.run_dir": str(run_dir), **(kwargs.get("tags") or {})}
        uri = str(kwargs.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or "")
        if not uri or uri.startswith("file:") or "://" not in uri:  # Lightning falls back to file:<save_dir>
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        if uri.startswith("sqlite:///"):  # SQLite creates the file, not its folder
            Path(uri[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        with _no_stray_mlruns_folder():
            super().__init__(*args, **kwargs)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({mlflow_key(k): v for k, v in metrics.items()}, step)


def _figure_name(tag: str, step: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.@-]+', '_', tag)}_step_{step}.png"


@rank_zero_only
def log_figure(trainer: pl.Trainer, tag: str, figure: Figure, step: int | None = None) -> None:
    """Send a matplotlib figure to every logger (see the module docstring for where it lands)."""
    step = trainer.global_step if step is None else step
    for logger in trainer.loggers:
        _log_figure(logger, tag, figure, step)


def _log_figure(logger: Logger, tag: str, figure: Figure, step: int) -> None:
    if isinstance(logger, _TensorBoardLogger):
        logger.experiment.add_figure(tag, figure, global_step=step, close=False)
        logger.experiment.flush()
    elif isinstance(logger, _MLFlowLogger):
        logger.experiment.log_figure(logger.run_id, figure, f"{tag}/step_{step}.png")
    elif isinstance(logger, CSVLogger):
        folder = Path(logger.log_dir) / "images"
        folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(folder / _figure_name(tag, step))


@rank_zero_only
def log_text(trainer: pl.Trainer, tag: str, markdown: str, step: int = 0) -> None:
    """Send markdown text to every logger: TensorBoard's TEXT tab, an MLflow artifact, a file for CSV."""
    for logger in trainer.loggers:
        if isinstance(logger, _TensorBoardLogger):
            logger.experiment.add_text(tag, markdown, global_step=step)
            logger.experiment.flush()
        elif isinstance(logger, _MLFlowLogger):
            logger.experiment.log_text(logger.run_id, markdown, f"{tag}.md")
        elif isinstance(logger, CSVLogger):
            path = Path(logger.log_dir) / "text" / f"{tag.replace('/', '_')}.md"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(markdown)


def tensorboard_writers(trainer: pl.Trainer) -> list[Any]:
    """The ``SummaryWriter`` of every TensorBoard logger (for summaries only TensorBoard understands)."""
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, _TensorBoardLogger)]
