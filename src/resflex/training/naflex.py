"""The LightningModule's side of NaFlex token batches (:mod:`resflex.data.naflex`).

Written here rather than in :mod:`resflex.training.module` so that the hooks there stay two lines:
the padding share of every training step (``train/padding_share``: token slots computed on padding,
the cost of batching images of different aspects) and timm's loss scaling for batches whose image
count follows the sequence length (``resolution.loss_scale``). The scale itself is the data layer's
(:func:`resflex.data.naflex.step_loss_scale`: the schedule and the batch size are the data module's);
this module only hands it the trainer's data module.
"""

from __future__ import annotations

import torch
from pytorch_lightning import LightningModule

from resflex.compat import attached_trainer
from resflex.data.naflex import step_loss_scale
from resflex.types import TokenBatch


def token_training_loss(module: LightningModule, batch: TokenBatch, loss: torch.Tensor) -> torch.Tensor:
    """Log the step's padding share; return ``loss`` scaled as ``resolution.loss_scale`` says."""
    # the epoch mean of the steps' shares (the per-step value is one batch's luck)
    share = batch.padding_share
    module.log("train/padding_share", share, on_step=False, on_epoch=True, batch_size=len(batch))
    trainer = attached_trainer(module)
    scale = step_loss_scale(getattr(trainer, "datamodule", None), len(batch))
    return loss if scale == 1.0 else loss * scale
