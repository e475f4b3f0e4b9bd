"""The LightningModule's side of NaFlex token batches (:mod:`resflex.data.naflex`).

Written here rather than in :mod:`resflex.training.module` so that the hooks there stay two lines:
the padding share of every training step (``train/padding_share``: token slots computed on padding,
the cost of batching images of different aspects) and timm's loss scaling for batches whose image
count follows the sequence length (``resolution.loss_scale``). The scale itself is the data layer's
(:func:`resflex.data.naflex.step_loss_scale`: the schedule and the batch size are the data module's);
this module only hands it the trainer's data module.

The padding share's epoch mean is kept in a metric of its own (:class:`EpochPaddingShare`) whose
state goes into checkpoints: Lightning does not save its ``on_epoch`` accumulators, so a run
resumed mid-epoch logged the mean of the steps after the resume only, not the uninterrupted run's.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning import LightningModule
from torchmetrics import MeanMetric

from resflex.compat import attached_trainer
from resflex.data.naflex import step_loss_scale
from resflex.types import TokenBatch

#: the checkpoint key of :class:`EpochPaddingShare`'s state
PADDING_SHARE_KEY = "naflex_padding_share"


class EpochPaddingShare(MeanMetric):
    """The epoch mean of the training steps' padding shares, weighted by their images, that survives a
    mid-epoch resume: :meth:`save` puts the epoch's running sums in the checkpoint and :meth:`resume`
    (at the fit's start) takes them back when the run resumes inside that same epoch. Lightning calls
    no ``on_train_epoch_start`` for an epoch it resumes in the middle of, so the reset there
    (:meth:`start_epoch`) only clears epochs that start from their first step. Rank 0's own steps
    (``sync_on_compute=False``): the checkpoint holds rank 0's state, and rank 0 is the one that logs."""

    # MeanMetric's states (add_state), which torchmetrics 1.3 (the lower bound) does not declare
    mean_value: torch.Tensor
    weight: torch.Tensor

    def __init__(self) -> None:
        super().__init__(sync_on_compute=False)
        self._resumed: dict[str, Any] | None = None

    def save(self, checkpoint: dict[str, Any], epoch: int) -> None:
        if float(self.weight) > 0:  # a token run that has trained this epoch
            checkpoint[PADDING_SHARE_KEY] = {
                "epoch": int(epoch),
                "mean_value": self.mean_value.detach().cpu().clone(),
                "weight": self.weight.detach().cpu().clone(),
            }

    def load(self, checkpoint: dict[str, Any]) -> None:
        self._resumed = checkpoint.get(PADDING_SHARE_KEY)

    def resume(self, epoch: int) -> None:
        state, self._resumed = self._resumed, None
        if state is not None and int(state["epoch"]) == epoch:
            self.reset()
            self.mean_value.copy_(state["mean_value"])
            self.weight.copy_(state["weight"])

    def start_epoch(self) -> None:
        self.reset()


def token_training_loss(module: LightningModule, batch: TokenBatch, loss: torch.Tensor) -> torch.Tensor:
    """Log the step's padding share; return ``loss`` scaled as ``resolution.loss_scale`` says."""
    # the epoch mean of the steps' shares (the per-step value is one batch's luck)
    padding = module.train_padding_share  # the ClassificationModule's
    if not isinstance(padding, EpochPaddingShare):
        raise TypeError(f"{type(module).__name__} keeps no EpochPaddingShare (train_padding_share)")
    padding.update(batch.padding_share, len(batch))
    module.log("train/padding_share", padding, on_step=False, on_epoch=True)
    trainer = attached_trainer(module)
    scale = step_loss_scale(getattr(trainer, "datamodule", None), len(batch))
    return loss if scale == 1.0 else loss * scale
