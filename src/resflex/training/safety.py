"""Nothing lost: atomic checkpoints, a checkpoint on SIGTERM/Ctrl-C, a stop on NaN loss, saved RNG state.

Lightning already turns SIGTERM into a clean stop (``SIGTERMException`` after
the current batch) and Ctrl-C into a graceful shutdown, but saves nothing
then; :class:`SaveOnInterrupt` writes ``last.ckpt`` at that moment so
``ckpt_path=last`` resumes from it. Lightning's checkpoint IO writes through an
fsspec transaction; :class:`AtomicCheckpointIO` makes the guarantee explicit
and local (temp file in the same folder, fsync, ``os.replace``), so a crash
while saving never leaves a truncated ``last.ckpt``, and it loads through
:func:`resflex.models.checkpoint.safe_load` (``weights_only=True`` always; a file
cut short some other way is a one-line error naming it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from resflex.errors import DataError, ResflexError, find_in_chain
from resflex.models.checkpoint import safe_load
from resflex.training.run_record import FillsRunRecord

log = logging.getLogger("resflex")


class NonFiniteLossError(ResflexError, FloatingPointError):
    """Training produced a NaN/inf loss; the run is marked failed, no checkpoint written after it."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``<path>.tmp`` in the same folder, fsync, then rename over ``<path>``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        try:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except (OSError, RuntimeError) as exc:
            interrupt = interruption_within(exc)
            if interrupt is not None:  # Ctrl-C mid-write: torch's zip writer fails on the way out
                raise interrupt from None  # the interruption, so the run saves on it and says resume
            # a full disk reaches torch's zip writer as "unexpected pos ..." (a RuntimeError): name it
            written = tmp.stat().st_size if tmp.exists() else 0
            tmp.unlink(missing_ok=True)
            free = shutil.disk_usage(target.parent).free
            if written and free < max(written, 1 << 20):
                raise DataError(
                    f"disk full while saving {target} ({free / 2**20:.0f} MB free, {written / 2**20:.0f} MB "
                    "written before it stopped); the checkpoints saved before it are intact",
                    hint=f"free space on {target.parent}, then resume with ckpt_path=last",
                ) from None
            raise exc
        finally:
            tmp.unlink(missing_ok=True)  # only left behind when saving failed

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = True
    ) -> dict[str, Any]:
        """Through :func:`~resflex.models.checkpoint.safe_load`: tensors only, and a file that is cut
        short or not a checkpoint is one line naming it (remote ``s3://``-style paths: Lightning's reader)."""
        if "://" in str(path):
            location = map_location or "cpu"  # torch.load's; Lightning annotates the argument as a callable
            return super().load_checkpoint(path, map_location=location, weights_only=True)  # type: ignore[arg-type]
        return safe_load(path, what="checkpoint", map_location=map_location or "cpu")


def interruption_within(exc: BaseException) -> BaseException | None:
    """The Ctrl-C or SIGTERM ``exc`` was raised while handling, if any: torch's zip writer, stopped by a
    KeyboardInterrupt mid-write, raises "unexpected pos" on the way out, and that RuntimeError hid the
    interruption (the run was then "failed", its epoch's checkpoint lost, no resume line)."""
    return find_in_chain(exc, lambda e: isinstance(e, KeyboardInterrupt | SIGTERMException))


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None)
    return Path(dirpath) if dirpath else Path(trainer.default_root_dir) / "checkpoints"


class SaveOnInterrupt(FillsRunRecord, pl.Callback):
    """On SIGTERM (clusters send it before killing) or Ctrl-C: save ``checkpoints/last.ckpt`` and stop."""

    def __init__(self) -> None:
        super().__init__()
        self.saved_path: str | None = None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, KeyboardInterrupt | SIGTERMException):
            return
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        path = checkpoint_dir(trainer) / "last.ckpt"
        # weights_only=False: save the whole training state (optimizer, loops, callbacks), which a resume
        # needs. This is Trainer.save_checkpoint's "save only the weights" switch, not torch.load's safety
        # flag; left unset, Lightning says "`weights_only` was not set, defaulting to `False`" on the
        # console. Loading stays weights_only=True (AtomicCheckpointIO.load_checkpoint, safe_load).
        trainer.save_checkpoint(path, weights_only=False)
        self.saved_path = str(path)
        if self.run_record is not None:
            self.run_record.checkpoint = self.saved_path
        log.warning("interrupted at step %d: checkpoint saved to %s", trainer.global_step, path)


class NonFiniteLossGuard(pl.Callback):
    """Stops training when the loss becomes NaN/inf, naming the step, before a bad checkpoint is written.

    The check runs on the device without a host sync per step: the first bad
    step is remembered in a device tensor and read once per logging interval and
    before each validation (checkpoints are written after validation).
    """

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        super().__init__()
        self.check_every_n_steps = check_every_n_steps
        self._first_bad: torch.Tensor | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        # global_step already counts this batch's optimizer step: the batch ran at step global_step - 1
        step = torch.tensor(max(trainer.global_step - 1, 0), device=loss.device)
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad_now = ~torch.isfinite(loss.detach()) & (self._first_bad < 0)
        self._first_bad = torch.where(bad_now, step, self._first_bad)
        # set by Lightning's logger connector; the Trainer class does not declare it
        every = self.check_every_n_steps or trainer.log_every_n_steps  # type: ignore[attr-defined]
        if loss.device.type == "cpu" or trainer.global_step % max(1, every) == 0:
            self._raise_if_bad()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._raise_if_bad()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._raise_if_bad()

    def _raise_if_bad(self) -> None:
        if self._first_bad is None:
            return
        step = int(self._first_bad)
        if step >= 0:
            raise NonFiniteLossError(
                f"training loss became NaN/inf at step {step}; no checkpoint was written after it",
                hint="lower optimizer.lr, set trainer.gradient_clip_val, or check the data",
            )


class RngStateCheckpoint(pl.Callback):
    """Saves and restores the torch / numpy / Python RNG states, so a resumed run draws the same numbers.

    Stored as tensors and plain tuples so that ``weights_only=True`` loading accepts them.
    """

    def state_dict(self) -> dict[str, Any]:
        import random

        np_state = np.random.get_state()
        assert isinstance(np_state, tuple)  # legacy=True (the default): the tuple form, not the dict
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        import random

        torch.set_rng_state(state_dict["torch"])
        if state_dict.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        name, keys, *rest = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))


class BadImageCounter(pl.Callback):
    """Logs ``data/bad_images`` (images skipped so far, by every worker) after each epoch and at the end,
    whenever the count changed: a run without unreadable images gets no chart (a single 0 was the first
    card TensorBoard showed)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def _update(self, trainer: pl.Trainer) -> None:
        source = getattr(getattr(trainer, "datamodule", None), "source", None)
        policy = getattr(source, "bad_images", None)
        if policy is None:
            return
        count = len(policy.skipped())
        if count != self.count:
            self.count = count
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics({"data/bad_images": float(count)}, step=trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._update(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._update(trainer)


class SigtermOutsideLightning:
    """SIGTERM as Lightning's ``SIGTERMException`` while Lightning does not handle it itself.

    Why: Lightning's signal handler is installed only inside ``trainer.fit/validate/test``; a SIGTERM
    before them (the data scan and profile of a large folder) or between them (the BatchNorm
    calibration after fit) killed the process at once: no record, no model card, no resume command,
    where Ctrl-C at the same point gets all three. Inside Lightning's calls (:meth:`lightning`) this
    handler does nothing: Lightning chains the handler it finds to its own, which stops after the
    current batch and saves (:class:`SaveOnInterrupt`). Installed from the main thread only (a
    signal handler can be set nowhere else).
    """

    def __init__(self) -> None:
        self.inside_lightning = False

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.inside_lightning:
            raise SIGTERMException()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGTERM, self)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    @contextlib.contextmanager
    def lightning(self) -> Iterator[None]:
        """Lightning's own handling, for the length of a ``trainer.fit/validate/test`` call."""
        self.inside_lightning = True
        try:
            yield
        finally:
            self.inside_lightning = False
