"""The LightningModule: normalise on device, classify, log loss/accuracy, cosine LR with warm-up."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from torchmetrics.classification import MulticlassAccuracy

from resflex.models.classifier import ImageClassifier

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up then cosine decay to ``min_lr_ratio * lr``, stepped per batch (torch schedulers)."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps - 1)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, total_steps - warmup_steps), eta_min=min(base_lrs) * min_lr_ratio
    )
    if warmup_steps == 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup_steps
    )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


class ClassificationModule(pl.LightningModule):
    """Trains an :class:`ImageClassifier` on uint8 batches of any (h, w).

    Batches arrive as uint8 ``(B, 3, h, w)``; :meth:`on_after_batch_transfer`
    converts them to float, normalises with the backbone's mean/std and switches
    to channels-last, all on the device (cheaper than on CPU workers, and 4×
    less host-to-device traffic).
    """

    def __init__(
        self,
        model: ImageClassifier,
        optimizer: OptimizerFactory,
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer"], logger=False)
        self.model = model
        self.optimizer_factory = optimizer
        self.warmup_epochs = warmup_epochs
        self.min_lr_ratio = min_lr_ratio
        self.label_smoothing = label_smoothing
        self.use_channels_last = channels_last
        mean = torch.tensor(model.backbone.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(model.backbone.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        num_classes = model.num_classes
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.top5 = num_classes >= 5
        if self.top5:
            self.val_acc5 = MulticlassAccuracy(num_classes, top_k=5, average="micro")
            self.test_acc5 = MulticlassAccuracy(num_classes, top_k=5, average="micro")

    # ---- data on device -------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, h, w) -> normalised float32, channels-last if enabled."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        if self.use_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        if images.dtype == torch.uint8:
            images = self.normalize(images)
        return images, labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ---- steps ------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=False)
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        acc = getattr(self, f"{stage}_acc")
        acc(logits, labels)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(labels))
        self.log(f"{stage}/acc", acc, on_epoch=True, prog_bar=stage == "val", batch_size=len(labels))
        if self.top5:
            acc5 = getattr(self, f"{stage}_acc5")
            acc5(logits, labels)
            self.log(f"{stage}/acc_top5", acc5, on_epoch=True, batch_size=len(labels))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    # ---- optimisation ----------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        weight_decay = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.0)
        # no weight decay on biases and norm layers (timm's helper)
        groups = param_groups_weight_decay(self.model, weight_decay=weight_decay)
        optimizer = self.optimizer_factory(groups)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = round(self.warmup_epochs * total / epochs)
        scheduler = warmup_cosine(optimizer, total, warmup, self.min_lr_ratio)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }
