"""Accuracy vs test resolution: the plot at the end of fit, and the same plot across runs.

:class:`AccuracyVsResolution` reads the per-size metrics that the module logs
(``val/acc@64``, ``test/acc@96``; see ``eval.resolutions``), draws accuracy
against the evaluation side with the training size(s) marked, writes
``<run>/acc_vs_resolution.png`` and logs the figure to TensorBoard
(``figures/acc_vs_resolution``). It redraws after ``trainer.test`` so the test
curve joins the validation one.

The PNG has its own y-scale per run, so runs cannot be laid over each other.
For that the same callback also logs the per-size numbers as scalars whose
*step is the size in pixels* (:func:`size_curve_points`): ``eval/val_acc_vs_size``,
``eval/val_loss_vs_size`` at the end of fit (the last validation) and
``eval/test_acc_vs_size``, ``eval/test_loss_vs_size`` at the end of test.
TensorBoard draws every run of a logdir on one accuracy-vs-size chart
(x axis: step = pixels per side; ``round(sqrt(h*w))`` for a non-square size).

Across runs (one curve per run, e.g. per pooling head)::

    python scripts/plot_resolution.py logs/multirun/<time>/* --out fig.png --stage test

The figure is built on matplotlib's Agg canvas directly (no pyplot, no global
backend switch), so it works on headless machines and inside data workers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_lightning.utilities import rank_zero_only

from resflex.models.bn_calibration import has_batchnorm
from resflex.training.loggers import log_figure

_TAG = re.compile(r"^(val|test)/acc@(\d+)$")
_SIZED = re.compile(r"^(val|test)/(acc|loss)@(\d+)(?:x(\d+))?$")  # val/acc@64, test/loss@48x80

Curve = dict[int, float]


def curve_from_metrics(metrics: Mapping[str, Any], stage: str) -> Curve:
    """``{side: accuracy}`` from ``{stage}/acc@<side>`` entries (square sizes only)."""
    curve: Curve = {}
    for key, value in metrics.items():
        match = _TAG.match(key)
        if match and match.group(1) == stage and value is not None:
            curve[int(match.group(2))] = float(value)
    return dict(sorted(curve.items()))


def equivalent_side(h: int, w: int) -> int:
    """The side of the square with the area of ``h x w`` (``64`` for 64x64): one x axis for every geometry."""
    return w if h == w else round(math.sqrt(h * w))


def parse_sized_tag(key: str) -> tuple[str, str, tuple[int, int]] | None:
    """A per-size metric name as (stage, metric, (h, w)): ``test/loss@48x80`` -> (test, loss, (48, 80))."""
    match = _SIZED.match(key)
    if not match:
        return None
    h = int(match.group(3))
    w = h if match.group(4) is None else int(match.group(4))
    return match.group(1), match.group(2), (h, w)


def size_curve_points(metrics: Mapping[str, Any], stage: str) -> dict[int, dict[str, float]]:
    """``{side: {"eval/<stage>_acc_vs_size": acc, "eval/<stage>_loss_vs_size": loss}}`` from the per-size
    metrics (``<stage>/acc@64``, ``<stage>/loss@48x80``): one logging call per side, the side as its step."""
    points: dict[int, dict[str, float]] = {}
    for key, value in metrics.items():
        parsed = parse_sized_tag(key)
        if parsed is None or parsed[0] != stage or value is None:
            continue
        _, metric, size = parsed
        points.setdefault(equivalent_side(*size), {})[f"eval/{stage}_{metric}_vs_size"] = float(value)
    return dict(sorted(points.items()))


@rank_zero_only
def log_size_curves(trainer: pl.Trainer, stage: str) -> None:
    """Log :func:`size_curve_points` of the trainer's latest ``stage`` metrics to every logger.

    Scalars reach every logger the same way (TensorBoard, CSV rows whose ``step`` is the side,
    MLflow), so nothing here is TensorBoard-specific.
    """
    for side, values in size_curve_points(trainer.callback_metrics, stage).items():
        for logger in trainer.loggers:
            logger.log_metrics(values, step=side)


def draw_accuracy_vs_resolution(
    curves: Mapping[str, Curve], train_sides: Sequence[int] = (), title: str = "accuracy vs test resolution"
) -> Figure:
    """One line per curve; vertical dashed lines at the training side(s) (a band if there are many)."""
    figure = Figure(figsize=(5.0, 3.4), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    for label, curve in curves.items():
        if curve:
            sides = sorted(curve)
            ax.plot(sides, [curve[s] for s in sides], marker="o", label=label)
    sides = sorted(set(train_sides))
    if len(sides) > 3:
        ax.axvspan(sides[0], sides[-1], color="grey", alpha=0.15, label=f"train {sides[0]}-{sides[-1]}")
    for k, side in enumerate(sides if len(sides) <= 3 else ()):
        ax.axvline(side, color="grey", linestyle="--", linewidth=1, label="train size" if k == 0 else None)
    ax.set_xlabel("test resolution (pixels per side)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


class AccuracyVsResolution(pl.Callback):
    """At the end of fit (and again after test): PNG in the run folder + TensorBoard image, and the
    per-size accuracy and loss as scalars stepped by size (:func:`log_size_curves`)."""

    def __init__(
        self, output_dir: str | None = None, filename: str = "acc_vs_resolution.png", calibrated: bool = False
    ) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.filename = filename
        #: ``eval.bn_calibration``: a CNN's final validation comes after fit, with per-size BatchNorm
        #: statistics (``trainer.validate`` in resflex.train); the val curve is that one, not the last epoch's
        self.calibrated = calibrated
        self.curves: dict[str, Curve] = {}
        self.path: Path | None = None

    def _after_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """True when resflex.train validates again after fit (calibrated statistics, or extra sizes
        deferred to then): that validation, not the last epoch's, gives the val curve."""
        model = getattr(pl_module, "model", None)
        deferred = getattr(getattr(trainer, "datamodule", None), "extra_sizes_after_fit", False)
        return deferred or (self.calibrated and model is not None and has_batchnorm(model))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.curves["val"] = curve_from_metrics(trainer.callback_metrics, "val")
        if trainer.state.fn == "validate":
            self.save(trainer)
            log_size_curves(trainer, "val")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._after_fit(trainer, pl_module):
            return  # the calibrated validation that follows draws and logs the val curve
        self.save(trainer)
        if "val" in self.curves:  # callback_metrics still hold the last validation's numbers
            log_size_curves(trainer, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.curves["test"] = curve_from_metrics(trainer.callback_metrics, "test")
        self.save(trainer)
        log_size_curves(trainer, "test")

    def save(self, trainer: pl.Trainer) -> Path | None:
        """Draw what has been collected; nothing unless some curve has two sizes (one point is no curve)."""
        if not trainer.is_global_zero or not any(len(curve) >= 2 for curve in self.curves.values()):
            return None
        schedule = getattr(getattr(trainer, "datamodule", None), "schedule", None)
        train_sides = [w for _, w in schedule.train_sizes()] if schedule is not None else []
        figure = draw_accuracy_vs_resolution(self.curves, train_sides, title=_title(schedule))
        folder = Path(self.output_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / self.filename
        figure.savefig(self.path)
        log_figure(trainer, "figures/acc_vs_resolution", figure)  # every logger (resflex.training.loggers)
        return self.path


def _title(schedule: object) -> str:
    name = type(schedule).__name__ if schedule is not None else ""
    return f"accuracy vs test resolution ({name})" if name else "accuracy vs test resolution"
