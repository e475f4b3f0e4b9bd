"""What a person opens TensorBoard for, as callbacks: the charts, figures and text of a run.

:class:`CustomScalarsLayout` (curves that belong together in one chart), :class:`TrainingSamples`
(a labelled batch at each training size), :class:`ConfusionMatrixFigure`, :class:`RunText` (the
composed config and the command that reproduces the run) and :class:`HeadlineTitles` (``val/acc``
titled with its size). Figures and text go to every logger through :mod:`resflex.training.loggers`.
The callbacks that measure (throughput, learning rates) are :mod:`resflex.training.callbacks`; the
data profile's figure, drawn once per sweep, :mod:`resflex.training.profile_view`.
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from resflex.data.eval_sizes import loader_sizes
from resflex.runtime import size_tag
from resflex.training.callbacks import scheduled_size
from resflex.validation import check_value

log = logging.getLogger("resflex")


def custom_scalars_layout() -> dict[str, dict[str, list[Any]]]:
    """TensorBoard CUSTOM SCALARS layout: the curves that belong together, each chart's tags as regexes.

    Per-size tags (``val/acc@32``, ``val/acc@64``, ...) are separate charts in
    SCALARS; here accuracy across evaluation sizes, train vs val loss, images/s
    per training size and the resolution schedule are one chart each. The first
    chart is accuracy against the evaluation size itself (``eval/*_acc_vs_size``,
    whose step is the size in pixels), val and test of every run together.
    """
    return {
        "resflex: across sizes": {
            "accuracy vs evaluation size (x axis: pixels per side)": [
                "Multiline",
                [r"^eval/(val|test)_acc_vs_size$"],
            ],
            "val accuracy at each evaluation size (val/acc@<side>)": ["Multiline", [r"^val/acc@"]],
            "val loss at each evaluation size (val/loss@<side>)": ["Multiline", [r"^val/loss@"]],
            "training images/s at each training size": ["Multiline", [r"^train/images_per_sec@"]],
            # the scheduled size only: keep_aspect's bucket h x w (train/batch_h, _w) would make a fixed
            # schedule look like it jumps between sizes
            "resolution schedule (scheduled side of the training batches)": [
                "Multiline",
                [r"^train/resolution$"],
            ],
        },
        "resflex: train vs val": {
            "loss: train vs val": ["Multiline", [r"^train/loss$", r"^val/loss$"]],
            "accuracy: train vs val": ["Multiline", [r"^train/acc$", r"^val/acc$"]],
            "learning rate": ["Multiline", [r"^train/lr"]],
        },
    }


class CustomScalarsLayout(pl.Callback):
    """Writes :func:`custom_scalars_layout` once per run (TensorBoard only: no other logger has layouts)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from resflex.training.loggers import tensorboard_writers

        for writer in tensorboard_writers(trainer):
            writer.add_custom_scalars(custom_scalars_layout())
            writer.flush()


def _to_uint8(images: torch.Tensor, pl_module: pl.LightningModule) -> torch.Tensor:
    """Undo the module's on-device normalisation (``pixel_mean``/``pixel_std``) for display."""
    if images.dtype == torch.uint8:
        return images
    mean, std = getattr(pl_module, "pixel_mean", None), getattr(pl_module, "pixel_std", None)
    images = images.float()
    if mean is not None and std is not None:
        images = images * std.to(images.device) + mean.to(images.device)
    return images.clamp(0, 255).to(torch.uint8)


def draw_batch(
    images: torch.Tensor, labels: Sequence[int], classes: Sequence[str], title: str, max_images: int = 16
) -> Figure:
    """A grid of uint8 ``(B, 3, h, w)`` images, each titled with its class name."""
    n = min(max_images, int(images.shape[0]))
    cols = min(8, n)
    rows = max(1, math.ceil(n / cols))
    figure = Figure(figsize=(1.5 * cols, 1.6 * rows + 0.4), dpi=100)
    FigureCanvasAgg(figure)
    pixels = images[:n].detach().cpu().permute(0, 2, 3, 1).numpy()
    for k in range(n):
        ax = figure.add_subplot(rows, cols, k + 1)
        ax.imshow(pixels[k])
        label = int(labels[k])
        ax.set_title(classes[label] if 0 <= label < len(classes) else str(label), fontsize=8)
        ax.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


class TrainingSamples(pl.Callback):
    """IMAGES: the first training batch at each training size, as the network gets it, with its labels.

    What goes in is what the schedule and augmentation made of the data: the
    crop, the scale and the size; one figure per size, the first time it occurs
    (``samples/train@64``).
    """

    def __init__(self, max_images: int = 16) -> None:
        super().__init__()
        self.max_images = check_value(
            "callbacks.training_samples.max_images", max_images, int, lambda v: v >= 1, "a positive integer"
        )
        self.seen: set[tuple[int, ...]] = set()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        images, labels = batch[0], batch[1]
        if not isinstance(images, torch.Tensor):  # NaFlex token batches have no image grid to draw
            return
        shape = tuple(images.shape[-2:])
        size = scheduled_size(trainer, batch_idx, shape)
        if size in self.seen:
            return
        self.seen.add(size)
        from resflex.training.loggers import log_figure

        classes = list(getattr(getattr(trainer, "datamodule", None), "classes", []) or [])
        h, w = shape
        title = f"training batch at {h}x{w} (epoch {trainer.current_epoch}, step {trainer.global_step})"
        figure = draw_batch(_to_uint8(images, pl_module), labels.tolist(), classes, title, self.max_images)
        log_figure(trainer, f"samples/train@{size_tag(*size)}", figure)


def draw_confusion_matrix(matrix: torch.Tensor, classes: Sequence[str], title: str) -> Figure:
    """Rows: true class, columns: predicted; colour = fraction of the row, numbers = counts (≤ 20 classes)."""
    counts = matrix.detach().cpu().double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = counts.shape[0]
    side = min(12.0, 2.5 + 0.45 * n)
    figure = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    shown = ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 30:
        names = [str(c) for c in classes] if len(classes) == n else [str(k) for k in range(n)]
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                value = int(counts[i, j])
                if value:
                    color = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


class ConfusionMatrixFigure(pl.Callback):
    """IMAGES: the validation confusion matrix at the main evaluation size, drawn at the end of fit
    (``figures/confusion_matrix_val``, the size in its title).

    Counted on every validation epoch from the predictions ``validation_step``
    returns (a bincount on the device, synced across ranks), so the figure at
    the end is the last epoch's; saved as ``<run>/confusion_matrix.png`` too.
    """

    def __init__(self, output_dir: str | None = None, filename: str = "confusion_matrix.png") -> None:
        super().__init__()
        self.output_dir = output_dir
        self.filename = filename
        self.metric: Any = None
        self.matrix: torch.Tensor | None = None
        self.epoch = -1

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from torchmetrics.classification import MulticlassConfusionMatrix

        num_classes = getattr(getattr(pl_module, "model", None), "num_classes", None)
        if trainer.sanity_checking or not num_classes:
            self.metric = None
            return
        if self.metric is None:
            self.metric = MulticlassConfusionMatrix(num_classes, validate_args=False)
        self.metric = self.metric.to(pl_module.device)
        self.metric.reset()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.metric is None or dataloader_idx != 0 or not isinstance(outputs, torch.Tensor):
            return
        # the step returns the counted samples' predictions, the batch's first (DDP padding repeats last)
        self.metric.update(outputs.to(pl_module.device), batch[1][: len(outputs)].to(pl_module.device))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.metric is not None and self.metric.update_count:
            self.matrix = self.metric.compute()  # every rank: the sum across ranks
            self.epoch = trainer.current_epoch

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.matrix is None or not trainer.is_global_zero:
            return
        from resflex.training.loggers import log_figure

        datamodule = getattr(trainer, "datamodule", None)
        classes = list(getattr(datamodule, "classes", []) or [])
        sizes = loader_sizes(trainer) or [(0, 0)]
        h, w = sizes[0]
        accuracy = float(self.matrix.diag().sum() / self.matrix.sum().clamp(min=1))
        title = f"val confusion matrix at {h}x{w}, epoch {self.epoch} (accuracy {accuracy:.3f})"
        figure = draw_confusion_matrix(self.matrix, classes, title)
        folder = Path(self.output_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(folder / self.filename)
        # one tag for every run (the size is in the title): runs line up in IMAGES whatever their size
        log_figure(trainer, "figures/confusion_matrix_val", figure)


def reproduce_command(overrides: Sequence[str], script: str = "scripts/train.py") -> str:
    """The shell command that reruns a run: the script and its overrides, each quoted for the shell."""
    return " ".join(["python", script, *(shlex.quote(str(o)) for o in overrides)])


def command_markdown(
    overrides: Sequence[str], folder: str | Path, sizes: Sequence[tuple[int, int]] = ()
) -> str:
    """TEXT ``run/command``: the command one override per line (a long line is cut at the right edge of
    TensorBoard's TEXT tab), the evaluation sizes as used (``eval.resolutions: auto`` resolved; the
    main size first) and the run folder."""
    parts = ["python scripts/train.py", *(shlex.quote(str(o)) for o in overrides)]
    command = " \\\n        ".join(parts)
    lines = [f"Reproduce this run (from the repository root):\n\n    {command}\n"]
    if sizes:
        shown = [size_tag(*size) + (" (main)" if k == 0 else "") for k, size in enumerate(sizes)]
        lines.append(f"Evaluated at {', '.join(shown)} px (eval.resolutions, resolution.eval_size).\n")
    lines.append(f"Run folder: `{folder}`")
    return "\n".join(lines)


def config_markdown(config_text: str, path: str | Path, sizes: Sequence[tuple[int, int]] = ()) -> str:
    """TEXT ``run/config``: the composed config as Hydra wrote it, with ``resolutions: auto`` under
    ``eval:`` followed by the sizes it resolved to (the file keeps what was asked; a reader of the TEXT
    tab wants what ran)."""
    lines, section = [], ""
    for line in config_text.splitlines():
        if line and not line.startswith(" "):
            section = line.split(":", 1)[0]
        if section == "eval" and sizes and line.strip() == "resolutions: auto":
            used = ", ".join(size_tag(*size) for size in sizes)
            line = f"{line}  # used: {used} px"
        lines.append("    " + line)
    return f"Composed config (`{path}`):\n\n" + "\n".join(lines)


class RunText(pl.Callback):
    """TEXT: the composed config and the command that reproduces the run (from ``<run>/.hydra/``).

    Read from the files Hydra wrote before the task started, so what is shown
    is exactly what ran; a run without them (composed in a test, no Hydra)
    logs nothing.
    """

    def __init__(self, output_dir: str | None = None, hydra_subdir: str = ".hydra") -> None:
        super().__init__()
        self.output_dir = output_dir
        self.hydra_subdir = hydra_subdir

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        folder = Path(self.output_dir or trainer.default_root_dir) / self.hydra_subdir
        config, overrides = folder / "config.yaml", folder / "overrides.yaml"
        if not config.is_file():
            return
        from omegaconf import OmegaConf  # not at import: the benchmark imports this module without Hydra

        from resflex.training.loggers import log_text

        command = [str(o) for o in OmegaConf.load(overrides)] if overrides.is_file() else []
        sizes = loader_sizes(trainer) or []
        log_text(trainer, "run/command", command_markdown(command, folder.parent, sizes))
        log_text(trainer, "run/config", config_markdown(config.read_text(), config, sizes))


def headline_titles(size: tuple[int, int]) -> dict[str, tuple[str, str]]:
    """``{tag: (title, description)}`` for the headline tags, naming the main evaluation size."""
    h, w = size
    shown = f"{w} px" if h == w else f"{h}x{w} px (h x w)"
    titles = {}
    for stage, split in (("val", "validation"), ("test", "test")):
        for kind, word in (("acc", "accuracy"), ("loss", "loss")):
            titles[f"{stage}/{kind}"] = (
                f"{stage}/{kind} at {shown}",
                f"{split.capitalize()} {word} at this run's main evaluation size, {shown} "
                "(resolution.eval_size; the HPARAMS column `eval size`). Runs at other sizes: compare "
                f"them on eval/{stage}_{kind}_vs_size (every size) or {stage}/acc_mean_sizes.",
            )
    return titles


class HeadlineTitles(pl.Callback):
    """SCALARS: ``val/acc``, ``val/loss``, ``test/acc`` and ``test/loss`` titled with the size they are
    measured at (``val/acc at 64 px``; :func:`headline_titles`), through the TensorBoard logger's
    chart titles (:class:`resflex.training.loggers.TensorBoardLogger`)."""

    def _describe(self, trainer: pl.Trainer) -> None:
        sizes = loader_sizes(trainer)
        if not sizes or not trainer.is_global_zero:
            return
        from resflex.training.loggers import describe_tags

        h, w = sizes[0]
        describe_tags(trainer, headline_titles((int(h), int(w))))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._describe(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._describe(trainer)  # a test without fit (eval.py); tags already written keep their title
