"""The LightningModule: normalise on device, classify, log loss/accuracy, LR schedule with warm-up.

Training batches can be regularised on the device, per batch, in :meth:`training_step`:
random erasing (``data.augment.random_erasing``, timm's ``RandomErasing``: per image, on
the normalised pixels) and then mixing (``model.mixup`` / ``model.cutmix``, timm's
``Mixup``: soft targets with the label smoothing folded in, one pairing per batch, any
(h, w)). Both draw from host RNGs (Python's ``random``, numpy) and the device's
generator; :func:`seeded_rngs` seeds them per batch from (seed, rank, epoch, batch
index) and restores them after, so the draws are the same after a resume and leave
every other random stream alone.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, TypedDict

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.data.random_erasing import RandomErasing
from torchmetrics.classification import MulticlassAccuracy

from resflex.compat import attached_trainer, is_compiled
from resflex.data.device_decode import EncodedBatch
from resflex.data.eval_sizes import loader_sizes
from resflex.data.naflex import TokenBatch
from resflex.data.sampler import batch_padding
from resflex.errors import ConfigError
from resflex.models.bn_calibration import BN_STATS_KEY, TrackedSizeStats, has_batchnorm, side_of
from resflex.models.classifier import ImageClassifier
from resflex.runtime import resolve_channels_last, size_tag
from resflex.training.callbacks import scheduled_size
from resflex.training.ema import ModelEma
from resflex.training.finetune import Finetuning
from resflex.training.lr_schedule import WarmupCosine, WarmupSchedule
from resflex.training.naflex import EpochPaddingShare, token_training_loss
from resflex.training.optim import OptimizerFactory
from resflex.training.out_of_memory import BatchSeen
from resflex.training.param_groups import FinetuneSpec, build_param_groups
from resflex.training.pixels import PixelCounter
from resflex.training.robustness import summarize_sizes
from resflex.training.scale_consistency import ScaleConsistency
from resflex.validation import check_value

log = logging.getLogger("resflex")


@contextmanager
def seeded_rngs(seed: int, device: torch.device) -> Iterator[None]:
    """Python's ``random``, numpy's global RNG, torch's CPU generator and, on a GPU, ``device``'s
    generator, all seeded with ``seed`` inside the block and restored after it."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    gpus = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=gpus, device_type="cuda"):
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)
        if gpus:
            torch.cuda.manual_seed(seed)  # the current device, which fork_rng restores
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _at_least_zero(value: float) -> bool:
    return value >= 0


def _probability(value: float) -> bool:
    return 0 <= value <= 1


#: torch.compile's modes (None: its default)
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class EmaArgs(TypedDict):
    """The :class:`ModelEma` arguments of ``model.ema=true``."""

    decay: float
    warmup: bool


class ClassificationModule(pl.LightningModule):
    """Trains an :class:`ImageClassifier` on uint8 batches of any (h, w).

    Batches arrive as uint8 ``(B, 3, h, w)``; :meth:`on_after_batch_transfer`
    converts them to float, normalises with the backbone's mean/std and switches
    to channels-last, all on the device (cheaper than on CPU workers, and 4×
    less host-to-device traffic). With ``data.source.decoder=device`` they arrive as
    JPEG bytes and framings, which that hook first decodes and frames on the device
    (:mod:`resflex.data.device_decode`).

    ``mixup`` / ``cutmix``: Beta(alpha, alpha) mixing of each batch with itself
    reversed (0 = off); ``mix_prob`` of the batches are mixed, and with both on,
    ``mix_switch_prob`` of the mixed ones use CutMix. ``random_erasing``: the
    probability that an image gets a rectangle of noise. ``seed`` keys their draws.
    """

    # buffers (register_buffer): the backbone's mean/std on the 0..255 scale, (1, 3, 1, 1)
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(
        self,
        net: ImageClassifier,
        optimizer: OptimizerFactory,
        lr_schedule: WarmupSchedule | None = None,
        label_smoothing: float = 0.1,
        channels_last: bool | str = "auto",
        finetune: Finetuning | Mapping[str, Any] | None = None,
        compile: bool = False,
        compile_mode: str | None = None,
        compile_dynamic: bool | None = None,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mix_prob: float = 1.0,
        mix_switch_prob: float = 0.5,
        random_erasing: float = 0.0,
        seed: int = 0,
        ema: bool = False,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        bn_stats_per_size: bool = False,
        scale_consistency: float = 0.75,
        scale_consistency_factors: Sequence[float] = (0.6, 0.6, 1.4),
        scale_consistency_prob: float = 0.16,
        scale_consistency_rampup: float = 0.0,
        scale_consistency_stop: float = 1.0,
        scale_consistency_max_pixels: float | None = None,
        scale_consistency_share: float = 1.0,
    ) -> None:
        super().__init__()
        self.last_batch: BatchSeen | None = None  # on_after_batch_transfer
        lr_schedule = lr_schedule or WarmupCosine()
        # the finetune group's callback carries the spec the parameter groups need
        finetune = FinetuneSpec.from_config(
            finetune.spec if isinstance(finetune, Finetuning) else finetune
        ).as_dict()
        label_smoothing = check_value(
            "model.label_smoothing", label_smoothing, float, lambda v: 0 <= v < 1, "a number in [0, 1)"
        )
        channels_last = resolve_channels_last(channels_last)  # auto: on a GPU only
        scale_consistency, scale_consistency_factors, scale_consistency_prob = ScaleConsistency.check(
            scale_consistency, scale_consistency_factors, scale_consistency_prob
        )
        scale_consistency_rampup, scale_consistency_stop = ScaleConsistency.check_schedule(
            scale_consistency_rampup, scale_consistency_stop
        )
        scale_consistency_max_pixels = ScaleConsistency.check_max_pixels(scale_consistency_max_pixels)
        scale_consistency_share = ScaleConsistency.check_share(scale_consistency_share)
        if not isinstance(ema, bool):
            raise ConfigError(f"model.ema must be true or false, got {ema!r}", hint="model.ema=true")
        # plain values: hyper-parameters are saved in checkpoints, which load with weights_only=True
        self.save_hyperparameters(ignore=["net", "optimizer", "lr_schedule"], logger=False)
        self.hparams["optimizer"] = optimizer.as_dict()
        self.hparams["lr_schedule"] = lr_schedule.as_dict()
        self.finetune = FinetuneSpec.from_config(finetune)
        self.model = net
        self.optimizer_factory = optimizer
        self.lr_schedule = lr_schedule
        self.label_smoothing = label_smoothing
        self.use_channels_last = channels_last
        mean = torch.tensor(net.backbone.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(net.backbone.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if not isinstance(compile, bool):
            raise ConfigError(
                f"model.compile must be true or false, got {compile!r}", hint="model.compile=true"
            )
        if compile_mode not in COMPILE_MODES:
            modes = ", ".join(str(m) for m in COMPILE_MODES)
            raise ConfigError(f"model.compile_mode={compile_mode!r} is not a torch.compile mode ({modes})")
        if compile_dynamic not in (None, True, False):
            raise ConfigError(f"model.compile_dynamic must be true, false or null, got {compile_dynamic!r}")
        self.compile_model = compile
        self.compile_mode = compile_mode
        self.compile_dynamic = compile_dynamic
        num_classes = net.num_classes
        # validate_args=False: the argument checks call torch.unique on the labels, a host sync per step
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.train_padding_share = EpochPaddingShare()  # token batches only (resflex.training.naflex)
        self.train_pixels = PixelCounter()  # train/megapixels: the run's compute (resflex.training.pixels)
        self.top5 = num_classes >= 5
        self.mixer = self._mixer(mixup, cutmix, mix_prob, mix_switch_prob, num_classes)
        erasing = check_value(
            "data.augment.random_erasing", random_erasing, float, _probability, "a probability in [0, 1]"
        )
        # timm's train.py recipe: per-pixel normal noise (the normalised data's scale), one box per image
        self.eraser = RandomErasing(erasing, mode="pixel", device="cpu") if erasing > 0 else None
        self.seed = int(seed)
        # a smaller view's predictions pulled to the main view's (resflex.training.scale_consistency)
        self.fit_steps: float | None = None  # the fit's optimizer steps (on_train_start)
        self.scale_view = ScaleConsistency.build(
            net,
            scale_consistency,
            scale_consistency_factors,
            scale_consistency_prob,
            self.seed,
            rampup=scale_consistency_rampup,
            stop=scale_consistency_stop,
            max_pixels=scale_consistency_max_pixels,
            share=scale_consistency_share,
        )
        # The EMA is a Lightning callback (it swaps weights around validation and checkpoints) that
        # this module hands to each fit, so the one `model` node says how the model trains. Built per
        # fit, not kept here: the averaged copy deep-copies the module, and would copy it too.
        if not isinstance(ema, bool):
            raise ConfigError(f"model.ema must be true or false, got {ema!r}", hint="model.ema=true")
        ModelEma(ema_decay, ema_warmup)  # bad values fail now (with the EMA off too: a typo waits for no one)
        self.ema_args: EmaArgs | None = {"decay": ema_decay, "warmup": ema_warmup} if ema else None
        if not isinstance(bn_stats_per_size, bool):
            raise ConfigError(
                f"model.bn_stats_per_size must be true or false, got {bn_stats_per_size!r}",
                hint="model.bn_stats_per_size=true",
            )
        if bn_stats_per_size and ema:
            raise ConfigError(
                "model.bn_stats_per_size cannot be combined with model.ema (the average would mix the sizes' "
                "BatchNorm statistics)",
                hint="model.bn_stats_per_size=false model.ema=true, or model.ema=false",
            )
        # BatchNorm statistics per size (resflex.models.bn_calibration.TrackedSizeStats): tracked per
        # training size when bn_stats_per_size, or calibrated per evaluation size after fit and read back
        # from the checkpoint (resflex.training.calibration); empty: one set, as trained
        self.size_stats = TrackedSizeStats(net) if has_batchnorm(net) else None
        if bn_stats_per_size and self.size_stats is None:  # a ViT or ConvNeXt with pooling=avg/max
            log.warning("model.bn_stats_per_size=true: the model has no BatchNorm, nothing is kept per size")
        self.track_bn_per_size = bn_stats_per_size
        # per evaluation loader: (size, [correct, seen]) for the robustness summary of the epoch
        self._size_counts: dict[str, dict[int, tuple[tuple[int, int], torch.Tensor]]] = {}
        if self.top5:
            self.val_acc5 = MulticlassAccuracy(num_classes, top_k=5, average="micro")
            self.test_acc5 = MulticlassAccuracy(num_classes, top_k=5, average="micro")

    def _mixer(
        self, mixup: float, cutmix: float, mix_prob: float, switch_prob: float, num_classes: int
    ) -> Mixup | None:
        mixup = check_value("model.mixup", mixup, float, _at_least_zero, "an alpha >= 0 (0: off)")
        cutmix = check_value("model.cutmix", cutmix, float, _at_least_zero, "an alpha >= 0 (0: off)")
        mix_prob = check_value("model.mix_prob", mix_prob, float, _probability, "a probability in [0, 1]")
        switch_prob = check_value(
            "model.mix_switch_prob", switch_prob, float, _probability, "a probability in [0, 1]"
        )
        if mixup == 0 and cutmix == 0:
            return None
        return Mixup(
            mixup_alpha=mixup,
            cutmix_alpha=cutmix,
            prob=mix_prob,
            switch_prob=switch_prob,
            mode="batch",
            label_smoothing=self.label_smoothing,
            num_classes=num_classes,
        )

    # ---- data on device -------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, h, w) -> normalised float32, channels-last if enabled."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        if self.use_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Device-side batch work: decode and frame (``data.source.decoder=device``), then normalise."""
        images, labels = batch
        if isinstance(images, TokenBatch):  # resolution=naflex: uint8 patches (resflex.data.naflex)
            self.last_batch = BatchSeen((len(images), images.seq_len), self.training)
            return images.normalized(self.pixel_mean, self.pixel_std), labels
        if isinstance(images, EncodedBatch):  # JPEG bytes + framings: resflex.data.device_decode
            images, labels = images.decode(labels)
        if images.dtype == torch.uint8:
            images = self.normalize(images)
        # what an out-of-memory failure names (resflex/training/out_of_memory.py): a shape, not the batch
        self.last_batch = BatchSeen(tuple(images.shape), self.training)
        return images, labels

    def configure_model(self) -> None:
        """``model.compile=true``: ``torch.compile`` the classifier in place (state-dict keys unchanged).

        ``compile_dynamic=null`` is torch's automatic dynamic shapes: the first
        input size compiles a static graph, the next one a graph with symbolic
        h/w. Graphs are cached per size class, so a size seen before never
        recompiles; but Inductor may guard on derived sizes (such as the final
        feature map's size), so each *new* size can compile once. Keep
        the number of training sizes below ``torch._dynamo.config.cache_size_limit``
        (8); ``true`` starts symbolic, ``false`` compiles per shape. Measured by
        ``scripts/benchmark.py --compile`` (experiments/performance/).
        """
        if self.compile_model and not is_compiled(self.model):
            self.model.compile(mode=self.compile_mode, dynamic=self.compile_dynamic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ---- steps ------------------------------------------------------------
    def regularize(
        self, images: torch.Tensor, labels: torch.Tensor, batch_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Random erasing, then mixing, of a normalised training batch (in place); soft targets or None.

        The draws are seeded by (seed, rank, epoch, batch index): see :func:`seeded_rngs`.
        """
        if self.eraser is None and self.mixer is None:
            return images, None
        trainer = attached_trainer(self)
        rank = trainer.global_rank if trainer is not None else 0
        key = hash((self.seed, rank, self.current_epoch, batch_idx)) & 0x7FFF_FFFF
        targets = None
        with seeded_rngs(key, images.device):
            if self.eraser is not None:
                self.eraser.device = images.device
                images = self.eraser(images)
            if self.mixer is not None:
                targets = self._mix(images, labels)
        return images, targets

    def _mix(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """timm's ``Mixup`` pairs image i with image B-1-i and needs an even batch: an odd batch
        mixes all but its last image, which keeps its (smoothed) label."""
        assert self.mixer is not None
        even = len(images) - len(images) % 2
        if even < 2:
            return mixup_target(labels, self.mixer.num_classes, 1.0, self.label_smoothing)
        _, targets = self.mixer(images[:even], labels[:even])  # mixes the view, i.e. images, in place
        if even < len(images):
            rest = mixup_target(labels[even:], self.mixer.num_classes, 1.0, self.label_smoothing)
            targets = torch.cat([targets, rest])
        return targets

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        images, targets = self.regularize(images, labels, batch_idx)
        tracking = self.size_stats is not None and self.track_bn_per_size
        side = self._training_side(batch_idx, images) if tracking else None
        if side is not None:
            assert self.size_stats is not None
            self.size_stats.before_step(side)
        logits = self(images)
        self.train_pixels.add(images)
        if side is not None:
            assert self.size_stats is not None
            self.size_stats.after_step(side)
        if targets is None:
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            self.train_acc(logits, labels)
        else:  # soft targets: mixed, label smoothing already in them (timm's Mixup)
            loss = F.cross_entropy(logits, targets)
            self.train_acc(logits, targets.argmax(dim=-1))  # against the dominant class of each image
        # not on the progress bar: that would read the loss on the host every step (a device sync)
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=False)
        if self.scale_view is not None:  # never for NaFlex (ScaleConsistency.build); train/loss: the CE alone
            weight = self.scale_view.weight_at(self._training_progress())  # 0: no view, no compute
            term = None
            if weight > 0:
                term = self.scale_view.term(
                    self.model, images, logits, self.current_epoch, batch_idx, self.train_pixels
                )
            if term is not None:
                self.log("train/scale_consistency", term, on_step=True, on_epoch=False)
                loss = loss + weight * term
        if isinstance(images, TokenBatch):  # padding share, timm's loss scaling (resflex.training.naflex)
            loss = token_training_loss(self, images, loss)
        return loss

    def _training_progress(self) -> float | None:
        """The share of the fit's optimizer steps done before this one (restored on resume, the same on
        every rank); None without a trainer or for an open-ended fit."""
        trainer = attached_trainer(self)
        total = self.fit_steps  # set at the fit's start
        if trainer is None or total is None or not math.isfinite(total) or total <= 0:
            return None
        return trainer.global_step / total

    def _training_side(self, batch_idx: int, images: torch.Tensor) -> int:
        """The side of the schedule's size for this training step (keep_aspect buckets share it)."""
        shape = (int(images.shape[-2]), int(images.shape[-1]))
        trainer = attached_trainer(self)
        size = scheduled_size(trainer, batch_idx, shape) if trainer is not None else shape
        return side_of(size)

    def _use_main_size_stats(self) -> None:
        if self.size_stats is not None:
            sizes = loader_sizes(attached_trainer(self))
            if sizes:
                self.size_stats.main = side_of(sizes[0])
            self.size_stats.use_main()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """With per-size BatchNorm statistics: the table beside the weights, and the main size's in them.
        A token run: the epoch's padding-share sums, for a mid-epoch resume. The training pixels so far."""
        self.train_padding_share.save(checkpoint, self.current_epoch)
        self.train_pixels.save(checkpoint)
        if self.size_stats is None or not self.size_stats.table:
            return
        self._use_main_size_stats()
        main = self.size_stats.nearest(self.size_stats.main) if self.size_stats.main else None
        state = checkpoint.get("state_dict", {})
        for name, value in self.size_stats.table.get(main, {}).items() if main is not None else ():
            if f"model.{name}" in state:
                state[f"model.{name}"] = value.detach().clone()
        checkpoint[BN_STATS_KEY] = self.size_stats.state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.train_padding_share.load(checkpoint)
        self.train_pixels.load(checkpoint)
        if self.size_stats is not None and BN_STATS_KEY in checkpoint:
            self.size_stats.load_state(checkpoint[BN_STATS_KEY])

    def on_train_start(self) -> None:
        self.train_padding_share.resume(self.current_epoch)  # a run resumed mid-epoch
        self.fit_steps = float(self.trainer.estimated_stepping_batches)  # the term's schedule
        if self.size_stats is not None and not self.track_bn_per_size:
            self.size_stats.table.clear()  # a resumed run's calibrated statistics: stale once it trains

    def on_train_epoch_start(self) -> None:
        self.train_padding_share.start_epoch()
        if self.size_stats is not None:
            self.size_stats.loaded = None  # evaluation may have loaded other statistics

    def on_train_epoch_end(self) -> None:
        # cumulative, so the last value is the run's: the compute a schedule spent (resflex.training.pixels)
        megapixels = self.train_pixels.megapixels(attached_trainer(self), self.device)  # every rank: a sum
        if megapixels > 0:  # token batches (NaFlex) are no pixels: no 0.0 in the record
            self.log("train/megapixels", megapixels)

    def _eval_size(self, dataloader_idx: int, images: torch.Tensor) -> tuple[int, int]:
        """The (h, w) of evaluation loader ``dataloader_idx`` (from the data module; else the batch's)."""
        sizes = loader_sizes(attached_trainer(self))
        h, w = sizes[dataloader_idx] if sizes and dataloader_idx < len(sizes) else images.shape[-2:]
        return int(h), int(w)

    def _count(
        self,
        stage: str,
        dataloader_idx: int,
        size: tuple[int, int],
        correct: torch.Tensor,
        loss_sum: torch.Tensor,
    ) -> None:
        """Add a batch's (correct, seen, summed loss) to the per-size counts of the epoch: the robustness
        summary's, and under DDP the per-size accuracy and loss themselves (:meth:`_log_counted`)."""
        counts = self._size_counts.setdefault(stage, {})
        entry = counts.get(dataloader_idx)
        batch = torch.stack(
            [
                correct.sum().float(),
                torch.tensor(float(correct.numel()), device=correct.device),
                loss_sum.detach().float(),
            ]
        )
        counts[dataloader_idx] = (size, batch if entry is None else entry[1] + batch)

    def _log_counted(self, stage: str) -> None:
        """What the epoch's exact counts give, summed over ranks.

        Under DDP, ``<stage>/acc@<size>``, ``<stage>/loss@<size>`` and ``<stage>/loss``: Lightning's
        ``sync_dist`` mean of a per-batch value averages the ranks' batch-size counters as integers
        (``lightning_fabric``'s ``_sync_ddp``), which truncates when the ranks counted different numbers
        of images — which they do once padding repeats are left out. In one process they are logged
        per batch (:meth:`_eval_step`), as always.

        Then ``<stage>/acc_worst``, ``acc_mean_sizes``, ``acc_range*`` over the evaluation sizes
        (:mod:`resflex.training.robustness`), only when every evaluation size was evaluated: an epoch
        that validates the main size alone (``eval.sizes_every_epoch=false``) logs no "mean over
        sizes" that is just ``val/acc``."""
        counts = self._size_counts.pop(stage, {})
        if not counts:
            return
        trainer = attached_trainer(self)
        order = sorted(counts)
        totals = torch.stack([counts[k][1] for k in order])
        distributed = trainer is not None and trainer.world_size > 1
        if distributed:  # every rank ran every loader, so every rank reduces the same keys
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        totals = totals.detach().cpu()
        for i, k in enumerate(order if distributed else ()):
            correct, seen, loss_sum = (float(v) for v in totals[i])
            if seen > 0:
                tag = size_tag(*counts[k][0])
                self.log(f"{stage}/acc@{tag}", correct / seen, add_dataloader_idx=False)
                self.log(f"{stage}/loss@{tag}", loss_sum / seen, add_dataloader_idx=False)
                if k == 0:
                    self.log(f"{stage}/loss", loss_sum / seen, add_dataloader_idx=False)
        if 0 not in counts:
            return
        sizes = loader_sizes(trainer)
        if sizes and len(counts) < len(sizes):
            return
        accuracy = {
            counts[k][0]: float(totals[i, 0]) / float(totals[i, 1])
            for i, k in enumerate(order)
            if totals[i, 1] > 0
        }
        summary = summarize_sizes(accuracy, main=counts[0][0])
        for tag, value in summary.metrics(stage).items():
            self.log(tag, value, add_dataloader_idx=False)

    def on_validation_epoch_start(self) -> None:
        self._size_counts.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._size_counts.pop("test", None)

    def on_validation_epoch_end(self) -> None:
        self._log_counted("val")
        self._use_main_size_stats()

    def on_test_epoch_end(self) -> None:
        self._log_counted("test")
        self._use_main_size_stats()

    def _eval_padding(self, stage: str, dataloader_idx: int, batch_idx: int, batch_len: int) -> int:
        """How many of this evaluation batch's last samples are DDP padding repeats (0 in one process).

        The sampler that planned the batch knows (:func:`resflex.data.sampler.batch_padding`); the
        loader is the trainer's ``dataloader_idx``-th of ``stage``. 0 without a trainer or a resflex loader.
        """
        trainer = attached_trainer(self)
        if trainer is None:
            return 0
        loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        if loaders is None:
            return 0
        loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
        if dataloader_idx >= len(loaders):
            return 0
        return batch_padding(loaders[dataloader_idx], batch_idx, batch_len)

    def _eval_step(
        self,
        batch: tuple[torch.Tensor, torch.Tensor],
        stage: str,
        dataloader_idx: int = 0,
        batch_idx: int = 0,
    ) -> torch.Tensor:
        """Loss/accuracy per evaluation size (``val/acc@64``); loader 0 is the main size (``val/acc``).

        Metrics are named by size, not loader index (``add_dataloader_idx=False``).
        The per-size accuracy is a batch mean weighted by ``batch_size``, i.e. exact; under DDP the
        per-size numbers and the loss come from exact sums over the ranks at the epoch's end
        (:meth:`_log_counted`).
        Under DDP a batch may end with padding repeats (samples another rank also evaluates, so
        that every rank takes the same steps: :mod:`resflex.data.sampler`); they are computed but
        left out of every metric and of the loss, so each image counts once over the ranks and the
        numbers equal a single process's (``scripts/eval.py``). A single process never pads.
        Returns the predicted classes of the counted samples, the first ones of the batch
        (callbacks count them against the batch's first labels: the confusion matrix).
        """
        images, labels = batch
        size = self._eval_size(dataloader_idx, images)
        if self.size_stats is not None:
            self.size_stats.use(side_of(size))
        logits = self(images)
        padding = self._eval_padding(stage, dataloader_idx, batch_idx, len(labels))
        if padding:  # the repeats are the batch's last samples
            logits, labels = logits[: len(labels) - padding], labels[: len(labels) - padding]
        n = len(labels)
        # no sample left (a rank's batch of repeats alone): weight 0, not the NaN of an empty mean
        loss = F.cross_entropy(logits, labels) if n else logits.new_zeros(())
        tag = size_tag(*size)
        preds = logits.argmax(dim=-1)
        hits = preds == labels
        self._count(stage, dataloader_idx, size, hits, loss * n)
        trainer = attached_trainer(self)
        # under DDP the per-size numbers and the loss come from exact sums at the epoch's end
        per_batch = trainer is None or trainer.world_size == 1
        if per_batch:
            log_per_size = partial(
                self.log, on_epoch=True, sync_dist=True, batch_size=n, add_dataloader_idx=False
            )
            log_per_size(f"{stage}/acc@{tag}", hits.float().mean())
            log_per_size(f"{stage}/loss@{tag}", loss)
        if dataloader_idx != 0:
            return preds
        acc = getattr(self, f"{stage}_acc")
        if n:  # torchmetrics cannot take an empty batch
            acc(logits, labels)
        if per_batch:
            log_per_size(f"{stage}/loss", loss)
        self.log(
            f"{stage}/acc",
            acc,
            on_epoch=True,
            prog_bar=stage == "val",
            batch_size=n,
            add_dataloader_idx=False,
        )
        if self.top5:
            acc5 = getattr(self, f"{stage}_acc5")
            if n:
                acc5(logits, labels)
            self.log(f"{stage}/acc_top5", acc5, on_epoch=True, batch_size=n, add_dataloader_idx=False)
        return preds

    def validation_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> torch.Tensor:
        return self._eval_step(batch, "val", dataloader_idx, batch_idx)

    def test_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> torch.Tensor:
        return self._eval_step(batch, "test", dataloader_idx, batch_idx)

    # ---- optimisation ----------------------------------------------------
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        # head vs backbone LR, layer decay, no weight decay on biases/norms, frozen parameters left
        # out or (gradual) given an LR of 0 until their unfreeze epoch: see resflex.training.param_groups
        groups = build_param_groups(self.model, self.optimizer_factory.weight_decay, self.finetune)
        optimizer = self.optimizer_factory(groups, world_size=self.trainer.world_size)
        # the per-step LambdaLR: warm-up, the schedule's curve, per-group unfreeze ramps
        scheduler = self.lr_schedule.lightning_config(
            optimizer,
            total_steps=int(self.trainer.estimated_stepping_batches),
            epochs=max(1, self.trainer.max_epochs or 1),
            unfreeze_warmup_epochs=self.finetune.unfreeze_warmup_epochs,
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def configure_callbacks(self) -> list[pl.Callback]:
        """What a fit needs besides the trainer's callbacks: the LR schedule's (``scheduler=plateau``:
        its rule, stepped after validation) and the EMA (``model.ema=true``)."""
        trainer = attached_trainer(self)
        if trainer is None or trainer.state.fn != "fit":
            return []
        ema = [ModelEma(**self.ema_args)] if self.ema_args is not None else []
        return [*self.lr_schedule.callbacks(), *ema]
