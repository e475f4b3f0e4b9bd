"""``model.ema=true``: validate, test and checkpoint an exponential moving average of the weights.

Lightning's ``WeightAveraging`` callback does the work: it keeps a ``torch.optim.swa_utils.
AveragedModel`` of the LightningModule, updates it after every optimizer step, swaps the
averaged weights in for each validation, writes them as the checkpoint's ``state_dict``
(the live weights go to ``current_model_state``, the averaging counter to
``averaging_state``) and restores both on resume. So :func:`resflex.inference.load_classifier`,
``scripts/eval.py``, prediction, export and ``backbone.init_from`` all read the EMA weights
without knowing about it. At the end of the fit the live weights are replaced by the EMA.

:class:`ModelEma` is the glue around it, for reasons Lightning's ``EMAWeightAveraging``
does not cover:

- timm's EMA warm-up (``model.ema_warmup``, timm's ``ModelEmaV3(use_warmup=True)``): the
  decay at optimizer step t is ``min(ema_decay, 1 - (1 + t) ** -2/3)``, so the average
  follows the live weights early on. Without it the average keeps a share
  ``ema_decay ** steps`` of the random initial weights: a quarter after 1400 steps at
  0.999, a fine-tuning run on a few thousand images;
- the average is kept on the training device (Lightning builds it before the module is
  moved there, i.e. on the CPU, and would copy the weights over every step);
- a checkpoint written inside a validation (Ctrl-C there; the weights are swapped) still
  has the EMA as ``state_dict``;
- ``trainer.test(ckpt_path=...)`` after a fit uses the checkpoint's EMA weights (Lightning's
  callback would load the checkpoint's live weights for the test);
- no warning about ``configure_model`` (resflex overrides it only for ``model.compile``,
  which compiles the model in place before the average is copied: the copy is never
  called, only its tensors are swapped, so compiled graphs are kept).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from resflex.errors import ConfigError
from resflex.validation import check_value


class ModelEma(WeightAveraging):
    """An EMA of all weights and buffers (BatchNorm statistics too), updated after every optimizer step."""

    def __init__(self, decay: float = 0.999, warmup: bool = True) -> None:
        self.decay = check_value("model.ema_decay", decay, float, lambda v: 0 < v < 1, "a number in (0, 1)")
        if not isinstance(warmup, bool):
            raise ConfigError(f"model.ema_warmup must be true or false, got {warmup!r}")
        self.warmup = warmup
        self._step = 0
        self._in_validation = False
        super().__init__(use_buffers=True, multi_avg_fn=self._average)

    def decay_at(self, step: int) -> float:
        """The decay of the update after optimizer step ``step`` (1, 2, ...)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, 1 - (1 + step) ** (-2 / 3))

    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: Any) -> None:
        """``averaged = decay * averaged + (1 - decay) * current`` (torch's EMA update, this step's decay)."""
        get_ema_multi_avg_fn(self.decay_at(self._step))(averaged, current, n_averaged)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # Lightning moves the module after this hook; the copy goes where the module is
            pl_module.to(trainer.strategy.root_device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*model that overrides the configure_model")
            super().setup(trainer, pl_module, stage)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self._in_validation = True

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        self._in_validation = False

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """The EMA as ``state_dict``, the live weights as ``current_model_state``, also when a Ctrl-C
        inside a validation (the weights swapped) has the run saved there (``SaveOnInterrupt``)."""
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._in_validation and "current_model_state" in checkpoint:
            checkpoint["state_dict"], checkpoint["current_model_state"] = (
                checkpoint["current_model_state"],
                checkpoint["state_dict"],
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._step = trainer.global_step
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Resume (fit): the live weights and the average from the checkpoint. Test or validate: the module
        keeps the checkpoint's ``state_dict``, i.e. the EMA weights, already loaded."""
        if trainer.state.fn == "fit":
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def __repr__(self) -> str:
        return f"ModelEma(decay={self.decay:g}, warmup={self.warmup})"
