"""Use a trained run: ``load_classifier(ckpt)`` -> an eval-mode model that takes images in [0, 1].

Why a wrapper: a resflex checkpoint holds the weights of a
:class:`~resflex.training.module.ClassificationModule`, whose model expects
*normalised* input (the module normalises uint8 batches on the device). A model
handed to other code — a notebook, a service, an exporter — should take plain
pixels. :class:`ResflexClassifier` puts the normalisation inside the model, so it
takes float32 RGB in [0, 1] of shape ``(B, 3, H, W)``, any H and W the backbone
allows, and returns logits; it carries the class names, the training sizes and
the evaluation preprocessing of its run.

The run is opened by :func:`resflex.run.open_run` (the one way to reopen a run: its
config in today's layout, weights loaded ``weights_only`` and strictly, classes,
schedule, trained framing, metrics) and rebuilt through the training builders, exactly
as :mod:`resflex.evaluate` does.

A NaFlex run (``resolution=naflex``) takes token sequences: its :class:`NaFlexImageClassifier` frames
each image at its own aspect, as ``scripts/predict.py`` does, before its token classifier.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from resflex.models.bn_calibration import TrackedSizeStats, side_of
from resflex.robust_range import RobustRange, robust_ranges
from resflex.run import Run, open_run
from resflex.types import Size, as_size

if TYPE_CHECKING:
    from resflex.models.backbone import TimmBackbone
    from resflex.models.naflex import TokenClassifier

log = logging.getLogger("resflex")


def as_image_batch(x: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``x`` as a ``(B, C, H, W)`` tensor: one ``(C, H, W)`` image gets its batch axis, a numpy array
    becomes a tensor, float input the model's float dtype (float64 would stop at the first layer);
    uint8 stays uint8. C is 3, or 1 (grey, replicated by the normalisation, as the loader converts
    it). Why a check: a channels-last batch, ``(B, H, W, 3)``, otherwise fails inside the
    normalisation with a broadcast error that names no shape."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        layout = "channels last? x.permute(0, 3, 1, 2)" if x.dim() == 4 and x.shape[-1] in (1, 3) else ""
        raise ValueError(
            f"expected images (B, 3, H, W) or (3, H, W), got shape {tuple(x.shape)}"
            + (f" ({layout})" if layout else "")
        )
    if x.is_floating_point() and x.dtype != dtype:
        x = x.to(dtype)
    return x


class ResflexClassifier(nn.Module):
    """An :class:`~resflex.models.classifier.ImageClassifier` with its input normalisation inside.

    ``forward(x)``: ``x`` float32 RGB in [0, 1], ``(B, 3, H, W)`` -> logits ``(B, num_classes)``
    (one ``(3, H, W)`` image, a numpy array or float64 are taken too: :func:`as_image_batch`).
    A uint8 batch (0..255) is accepted too; both give bit-identical normalised input to
    what training and ``scripts/eval.py`` feed the network (``(x*255 - mean*255) / (std*255)``:
    ``k/255*255 == k`` exactly in float32 for every byte ``k``).
    """

    # buffers: the backbone's mean/std on the 0..255 scale, (1, 3, 1, 1)
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor
    #: the run's composed config (set by :func:`classifier_of`), for callers that need more
    config: DictConfig

    def __init__(
        self,
        model: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        classes: list[str],
        train_sizes: list[Size] | None = None,
        eval_size: Size | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.classes = list(classes)
        self.train_sizes = list(train_sizes or [])
        self.eval_size = eval_size
        #: what the run says about itself: backbone, pooling, geometry, multiple, run folder, checkpoint,
        #: ``metrics`` (its ``metrics.json`` record's final metrics: accuracy per size... of this
        #: checkpoint only: :attr:`resflex.run.Run.metrics`; ``metrics_note`` says what was left out)
        self.info = dict(info or {})
        #: per-size BatchNorm statistics of a ``model.bn_stats_per_size`` run (None: one set)
        self.size_stats: TrackedSizeStats | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _backbone(self) -> TimmBackbone:
        """The backbone of :attr:`model`, an ``ImageClassifier`` here (a NaFlex classifier's is a token
        classifier, and :class:`NaFlexImageClassifier` reads no backbone)."""
        from resflex.models.classifier import ImageClassifier

        if not isinstance(self.model, ImageClassifier):
            raise TypeError(f"{type(self).__name__} of a {type(self.model).__name__}: no backbone to ask")
        return self.model.backbone

    @property
    def min_side(self) -> int:
        """The smallest side the backbone takes (see ``TimmBackbone.check_input_size``)."""
        backbone = self._backbone()
        patch_embed = getattr(backbone, "patch_embed", None)
        if patch_embed is not None and hasattr(patch_embed, "patch_size"):
            return 1 if getattr(patch_embed, "dynamic_img_pad", False) else int(max(patch_embed.patch_size))
        return max(1, int(backbone.reduction) // 2)

    @property
    def fixed_size(self) -> Size | None:
        """The one (h, w) the backbone takes (a ViT built without ``dynamic_img_size``), else None."""
        return self._backbone().fixed_input_size

    def robust_ranges(self) -> list[RobustRange]:
        """The sizes the run holds up at, per split with a per-size curve (val, then test; see
        :class:`resflex.robust_range.RobustRange`); ``[]`` when the run recorded none."""
        return robust_ranges(self.info.get("metrics") or {}, self.eval_size)

    def check_size(self, size: Size, key: str = "size") -> None:
        """One-line :class:`ConfigError` for a size the backbone cannot take (fixed-size ViT, too small)."""
        self._backbone().check_input_size(size, key)

    @property
    def stats_by_short_side(self) -> bool:
        """Whether the per-size BatchNorm statistics are keyed by an input's short side (keep_aspect
        buckets of the short-side kind), rather than the side of the square of equal area."""
        return bool(
            self.info.get("geometry") == "keep_aspect"
            and self.info.get("bucket_size", "short_side") == "short_side"
        )

    def stats_side(self, h: int, w: int) -> int:
        """The side whose BatchNorm statistics an (h, w) input uses: a keep_aspect bucket's short side
        (its scheduled size, as in training), else the side of the square of equal area."""
        return min(h, w) if self.stats_by_short_side else side_of((h, w))

    #: whether the first float batch's range is looked at (:meth:`check_range_once`); off in exports
    check_input_range = True

    def check_range_once(self, x: torch.Tensor) -> None:
        """Warn when the first float batch is not in [0, 1]: 0..255 floats or already-normalised images
        give confident logits of nothing, without an error. Once per model (a reduction over one batch),
        never while a graph is captured (the value would be frozen into it)."""
        if not self.check_input_range or not x.is_floating_point() or x.numel() == 0:
            return
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        self.check_input_range = False
        low, high = float(x.amin()), float(x.amax())
        if high > 1.5 or low < -0.5:
            warnings.warn(
                f"float input from {low:.3g} to {high:.3g}: the model takes RGB in [0, 1] and normalises "
                "it itself (0..255 floats: divide by 255, or pass uint8; normalised images: pass them "
                "before the normalisation)",
                UserWarning,
                stacklevel=3,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = as_image_batch(x, self.pixel_mean.dtype)
        self.check_range_once(x)
        if self.size_stats is not None:  # the statistics of the trained size nearest to this input
            self.size_stats.use(self.stats_side(int(x.shape[-2]), int(x.shape[-1])))
        x = x.float() if x.dtype == torch.uint8 else x * 255.0
        return self.model((x - self.pixel_mean) / self.pixel_std)

    def use_main_size_stats(self) -> None:
        """Load the main size's BatchNorm statistics and stop swapping them by input size (one set for
        every size, e.g. to compare with a model that has only its trained statistics)."""
        if self.size_stats is not None:
            self.size_stats.use_main()
            self.size_stats = None

    def extra_repr(self) -> str:
        return f"classes={len(self.classes)}, train_sizes={self.train_sizes}, eval_size={self.eval_size}"


class NaFlexImageClassifier(ResflexClassifier):
    """A NaFlex run's model on images: ``forward(x)``, ``x`` (B, 3, H, W) in [0, 1] (or uint8) -> logits.

    A NaFlex model takes token sequences, so each image is framed as ``scripts/predict.py`` frames its
    file (:mod:`resflex.predict_naflex`, the same functions): resized whole, keeping its aspect, to the
    largest patch grid with at most ``seq_len`` patches (the run's ``max_seq_len``: its ``val/acc``),
    patchified, padded and masked, and classified by the run's
    :class:`~resflex.models.naflex.TokenClassifier`. The framing resizes 8-bit pixels, as the loader
    does (float input is rounded to ``k/255``, which gives ``k`` back exactly): the logits are
    ``predict``'s for the file (decoded at full scale), and not differentiable. ``train_sizes`` and
    ``eval_size`` are sequence lengths ``(s, s)``, as everywhere for a NaFlex run.
    """

    def __init__(
        self,
        tokens: TokenClassifier,
        schedule: Any,
        transform: Any,
        seq_len: int,
        classes: list[str],
        info: dict,
    ) -> None:
        mean = tuple(float(v) / 255.0 for v in tokens.pixel_mean)
        std = tuple(float(v) / 255.0 for v in tokens.pixel_std)
        train_sizes = sorted({(int(s), int(s)) for s in schedule.seq_lens})
        super().__init__(tokens, mean, std, classes, train_sizes, (seq_len, seq_len), info)
        self.schedule, self.transform, self.seq_len = schedule, transform, int(seq_len)

    @property
    def min_side(self) -> int:
        return 1  # any image is resized to its patch grid

    @property
    def fixed_size(self) -> Size | None:
        return None  # any image is resized to its patch grid

    def check_size(self, size: Size, key: str = "size") -> None:
        """Any (h, w): each image is framed to at most ``seq_len`` patches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from resflex.naflex_framing import frame_pixels, token_logits

        x = as_image_batch(x)
        self.check_range_once(x)
        pixels = x if x.dtype == torch.uint8 else (x.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
        framed = [frame_pixels(p.cpu(), self.schedule, self.transform, self.seq_len) for p in pixels]
        return token_logits(self.model, framed, self.seq_len, x.device)


def naflex_classifier_of(run: Run, device: str | torch.device = "cpu") -> NaFlexImageClassifier:
    """The eval-mode :class:`NaFlexImageClassifier` of an opened NaFlex run, at its main sequence length."""
    from resflex.naflex_framing import parse_seq_len

    transform, geometry, schedule = run.eval_framing()
    schedule = run.required_schedule(schedule)
    seq_len = parse_seq_len(None, schedule)
    cfg = run.config
    info = {
        **run_info(run, geometry),
        "seq_len": seq_len,
        "patch_size": int(schedule.patch_size),
        "metrics": run.metrics,
    }
    tokens = run.token_classifier(device, seq_len)
    classifier = NaFlexImageClassifier(tokens, schedule, transform, seq_len, run.classes(), info)
    classifier.config = cfg
    return classifier.to(device).eval()


def run_info(run: Run, geometry: object) -> dict[str, Any]:
    """What every loaded classifier's ``.info`` says of its run: files, backbone, head and framing."""
    cfg = run.config
    return {
        "checkpoint": str(run.checkpoint),
        "run_dir": str(run.run_dir),
        "run_config": str(run.config_path),
        "backbone": str(cfg.backbone.name),
        "pooling": str(OmegaConf.select(cfg, "pooling._target_", default="")).rsplit(".", 1)[-1],
        "geometry": str(geometry),
        "metrics_note": run.metrics_note,
    }


def classifier_of(run: Run, device: str | torch.device = "cpu") -> ResflexClassifier:
    """The eval-mode :class:`ResflexClassifier` of an opened run (:func:`resflex.run.open_run`); a NaFlex
    run's is a :class:`NaFlexImageClassifier`."""
    if run.is_naflex:
        return naflex_classifier_of(run, device)
    cfg = run.config
    module = run.build_module()
    model = module.model.to(memory_format=torch.contiguous_format)
    schedule = run.schedule()
    train_sizes: list[Size] = []
    eval_size: Size | None = None
    if schedule is not None:
        try:
            train_sizes = sorted(set(schedule.train_sizes()))
            eval_size = as_size(schedule.eval_size)
        except Exception as exc:
            log.warning("could not read the run's training sizes: %s", exc)
    backbone = model.backbone
    framing = run.trained_framing()
    geometry = framing[0] if framing else OmegaConf.select(cfg, "resolution.geometry", default="square")
    info = {
        **run_info(run, geometry),
        "multiple": int(OmegaConf.select(cfg, "resolution.multiple", default=8) or 8),
        "bucket_size": str(OmegaConf.select(cfg, "resolution.bucket_size", default="short_side")),
        "aspect_ratios": [float(a) for a in getattr(schedule, "aspect_ratios", ()) or ()],
        "eval_crop_pct": float(OmegaConf.select(cfg, "data.eval_crop_pct", default=1.0) or 1.0),
        "reduction": int(backbone.reduction),
        "metrics": run.metrics,
    }
    classifier = ResflexClassifier(
        model,
        mean=backbone.mean,
        std=backbone.std,
        classes=run.classes(),
        train_sizes=train_sizes,
        eval_size=eval_size,
        info=info,
    )
    if run.bn_stats and module.size_stats is not None:  # loaded by run.build_module
        module.size_stats.main = side_of(eval_size) if eval_size else None
        classifier.size_stats = module.size_stats
    classifier.config = cfg  # the run's composed config, for callers that need more
    return classifier.to(device).eval()


def load_classifier(
    ckpt_path: str | Path, run_config: str | Path | None = None, device: str | torch.device = "cpu"
) -> ResflexClassifier:
    """``load_classifier("run/checkpoints/last.ckpt")``: the trained model, ready for images in [0, 1].

    ``ckpt_path`` may also be a run folder: its best checkpoint (``metrics.json``'s ``best``), else its
    ``checkpoints/last.ckpt`` (one log line names the file). Returns an
    eval-mode :class:`ResflexClassifier` with ``.classes``, ``.train_sizes``,
    ``.eval_size`` and ``.info`` (a NaFlex run: a :class:`NaFlexImageClassifier`, each image at
    its own aspect at the run's ``max_seq_len``). Raises :class:`~resflex.errors.DataError` /
    :class:`~resflex.errors.ConfigError` (one line) for a missing, unsafe or foreign file,
    a run config that cannot be found, or weights that do not fit.
    """
    return classifier_of(open_run(ckpt_path, run_config), device)
