"""Use a trained run: ``load_classifier(ckpt)`` -> an eval-mode model that takes images in [0, 1].

Why a wrapper: a resflex checkpoint holds the weights of a
:class:`~resflex.training.module.ClassificationModule`, whose model expects
*normalised* input (the module normalises uint8 batches on the device). A model
handed to other code — a notebook, a service, an exporter — should take plain
pixels. :class:`ResflexClassifier` puts the normalisation inside the model, so it
takes float32 RGB in [0, 1] of shape ``(B, 3, H, W)``, any H and W the backbone
allows, and returns logits; it carries the class names, the training sizes and
the evaluation preprocessing of its run.

The model is rebuilt exactly as :mod:`resflex.evaluate` does: from the run's saved
``.hydra/config.yaml`` through the training builders, weights loaded strictly from
the checkpoint with ``weights_only=True`` (a pickle that would run code is
refused before anything is built).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from resflex.errors import ConfigError, DataError, first_line
from resflex.model_card import RobustRange, read_run_record, robust_ranges
from resflex.models.bn_calibration import BN_STATS_KEY, TrackedSizeStats, side_of
from resflex.models.checkpoint import (
    HEAD_PREFIX,
    find_run_config,
    resolve_checkpoint_path,
    safe_load,
    state_dict_of,
)
from resflex.types import Size

log = logging.getLogger("resflex")
CLASSES_FILE = "classes.json"


class ResflexClassifier(nn.Module):
    """An :class:`~resflex.models.classifier.ImageClassifier` with its input normalisation inside.

    ``forward(x)``: ``x`` float32 RGB in [0, 1], ``(B, 3, H, W)`` -> logits ``(B, num_classes)``.
    A uint8 batch (0..255) is accepted too; both give bit-identical normalised input to
    what training and ``scripts/eval.py`` feed the network (``(x*255 - mean*255) / (std*255)``:
    ``k/255*255 == k`` exactly in float32 for every byte ``k``).
    """

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
        #: ``metrics`` (its ``metrics.json`` record's final metrics: accuracy per size...)
        self.info = dict(info or {})
        #: per-size BatchNorm statistics of a ``model.bn_stats_per_size`` run (None: one set)
        self.size_stats: TrackedSizeStats | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def min_side(self) -> int:
        """The smallest side the backbone takes (see ``TimmBackbone.check_input_size``)."""
        backbone = self.model.backbone
        patch_embed = getattr(backbone, "patch_embed", None)
        if patch_embed is not None and hasattr(patch_embed, "patch_size"):
            return 1 if getattr(patch_embed, "dynamic_img_pad", False) else int(max(patch_embed.patch_size))
        return max(1, int(backbone.reduction) // 2)

    def robust_ranges(self) -> list[RobustRange]:
        """The sizes the run holds up at, per split with a per-size curve (val, then test; see
        :class:`resflex.model_card.RobustRange`); ``[]`` when the run recorded none."""
        return robust_ranges(self.info.get("metrics") or {}, self.eval_size)

    def check_size(self, size: Size, key: str = "size") -> None:
        """One-line :class:`ConfigError` for a size the backbone cannot take (fixed-size ViT, too small)."""
        self.model.backbone.check_input_size(tuple(size), key)

    def stats_side(self, h: int, w: int) -> int:
        """The side whose BatchNorm statistics an (h, w) input uses: a keep_aspect bucket's short side
        (its scheduled size, as in training), else the side of the square of equal area."""
        if (
            self.info.get("geometry") == "keep_aspect"
            and self.info.get("bucket_size", "short_side") == "short_side"
        ):
            return min(h, w)
        return side_of((h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size_stats is not None:  # the statistics of the trained size nearest to this input
            self.size_stats.use(self.stats_side(int(x.shape[-2]), int(x.shape[-1])))
        x = x.float() if x.dtype == torch.uint8 else x * 255.0
        return self.model((x - self.pixel_mean) / self.pixel_std)

    def use_main_size_stats(self) -> None:
        """Load the main size's BatchNorm statistics and stop swapping (an exported graph has one set)."""
        if self.size_stats is not None:
            self.size_stats.use_main()
            self.size_stats = None

    def extra_repr(self) -> str:
        return f"classes={len(self.classes)}, train_sizes={self.train_sizes}, eval_size={self.eval_size}"


@dataclass
class RunCheckpoint:
    """A checkpoint's tensors and its run's config (weights-only loaded; the run config's data kept)."""

    path: Path
    run_dir: Path
    config: DictConfig
    state: dict[str, torch.Tensor]
    #: per-size BatchNorm statistics (``model.bn_stats_per_size`` runs), ``{"64": {buffer: tensor}}``
    bn_stats: dict[str, dict[str, torch.Tensor]] | None = None

    @property
    def num_classes(self) -> int:
        head = self.state.get(HEAD_PREFIX + "weight")
        if head is None:
            raise DataError(f"{self.path} has no classifier head ({HEAD_PREFIX}weight)")
        return int(head.shape[0])


def read_run_checkpoint(ckpt_path: str | Path, run_config: str | Path | None = None) -> RunCheckpoint:
    """Load a checkpoint safely (first: an unsafe file is refused before anything else) and its run config."""
    ckpt = resolve_checkpoint_path(ckpt_path)
    loaded = safe_load(ckpt, what="ckpt_path")
    state = state_dict_of(loaded, ckpt)
    bn_stats = loaded.get(BN_STATS_KEY) if isinstance(loaded, dict) else None
    config_path = Path(str(run_config)) if run_config else find_run_config(ckpt)
    if config_path is None or not config_path.is_file():
        raise ConfigError(
            f"no run config found for {ckpt} (looked for .hydra/config.yaml next to its checkpoints/ folder)",
            hint="pass run_config=/path/to/run/.hydra/config.yaml",
        )
    cfg = OmegaConf.load(config_path)
    assert isinstance(cfg, DictConfig)
    OmegaConf.set_struct(cfg, False)
    run_dir = config_path.parent.parent
    # outside a Hydra app ${hydra:runtime.output_dir} has no value: the run folder is what it meant
    if "paths" in cfg:
        cfg.paths.output_dir = str(run_dir)
    # weights come from the checkpoint: never download or read the pre-training sources again
    for key in ("pretrained", "weights", "init_from", "init_head"):
        if key in cfg.backbone:
            cfg.backbone[key] = False if key in ("pretrained", "init_head") else None
    cfg.run_config = str(config_path)
    return RunCheckpoint(path=ckpt, run_dir=run_dir, config=cfg, state=state, bn_stats=bn_stats or None)


def build_schedule(cfg: DictConfig) -> Any | None:
    """The run's resolution schedule (bound to its epochs), or None when it cannot be rebuilt."""
    from hydra.utils import instantiate

    try:
        schedule = instantiate(cfg.resolution)
        schedule.bind(OmegaConf.select(cfg, "trainer.max_epochs", default=None))
        return schedule
    except Exception as exc:  # an old or edited config: inference works without it
        log.warning("could not rebuild the run's resolution schedule: %s", first_line(exc))
        return None


def run_classes(cfg: DictConfig, num_classes: int, run_dir: Path | None = None) -> list[str]:
    """Class names of a run, in label order.

    ``<run>/classes.json`` (written with the model card when training ends) first;
    then the run's data: an image folder's class folder names (a directory listing,
    no image is opened), or the source's own ``classes``; ``0..N-1`` when neither is
    available (with a warning).
    """
    if run_dir is not None and (run_dir / CLASSES_FILE).is_file():
        try:
            names = json.loads((run_dir / CLASSES_FILE).read_text())
            if isinstance(names, list) and len(names) == num_classes:
                return [str(n) for n in names]
        except (OSError, ValueError):
            pass
    names = _classes_from_data(cfg)
    if names is not None and len(names) == num_classes:
        return names
    log.warning("class names of the run not found; using 0..%d", num_classes - 1)
    return [str(i) for i in range(num_classes)]


def _classes_from_data(cfg: DictConfig) -> list[str] | None:
    from hydra.utils import instantiate

    from resflex.data.datamodule import finish_source

    data = cfg.get("data")
    if data is None:
        return None
    try:
        target = str(OmegaConf.select(cfg, "data.source._target_", default=""))
        if target.endswith("ImageFolderSource"):
            from torchvision.datasets.folder import find_classes

            # data.root; data.source.root in runs from before the data node had a _target_
            root = OmegaConf.select(cfg, "data.root", default=None) or OmegaConf.select(
                cfg, "data.source.root"
            )
            root = Path(str(root)).expanduser()
            return list(find_classes(str(root / "train"))[0])
        source_cfg = data.source.copy()
        if "bad_image_log" in source_cfg:
            source_cfg.bad_image_log = None
        source = instantiate(source_cfg)
        if source_cfg.get("_partial_"):  # a data node with a _target_: the data module passes the root
            source = finish_source(source, data.get("root"), str(data.get("name", "")))
        return [str(c) for c in source.classes]
    except Exception as exc:
        log.debug("classes from the run's data: %s", exc)
        return None


def _state_for_module(state: dict[str, torch.Tensor], module: nn.Module, ckpt: Path) -> None:
    """Strict load (as :func:`resflex.evaluate.load_weights`): half the weights missing is an error."""
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"checkpoint {ckpt} does not fit the model built from its run config: "
            f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}",
            hint="was the run config edited after training? pass run_config=... of the right run",
        )


def load_classifier(
    ckpt_path: str | Path, run_config: str | Path | None = None, device: str | torch.device = "cpu"
) -> ResflexClassifier:
    """``load_classifier("run/checkpoints/last.ckpt")``: the trained model, ready for images in [0, 1].

    ``ckpt_path`` may also be a run folder (its ``checkpoints/last.ckpt``). Returns an
    eval-mode :class:`ResflexClassifier` with ``.classes``, ``.train_sizes``,
    ``.eval_size`` and ``.info``. Raises :class:`~resflex.errors.DataError` /
    :class:`~resflex.errors.ConfigError` (one line) for a missing or unsafe file, a
    run config that cannot be found, or weights that do not fit.
    """
    from resflex.build import build_module

    run = read_run_checkpoint(ckpt_path, run_config)
    cfg = run.config
    num_classes = run.num_classes
    module = build_module(cfg, num_classes)
    _state_for_module(run.state, module, run.path)
    model = module.model.to(memory_format=torch.contiguous_format)
    schedule = build_schedule(cfg)
    train_sizes: list[Size] = []
    eval_size: Size | None = None
    if schedule is not None:
        try:
            train_sizes = sorted(set(schedule.train_sizes()))
            eval_size = tuple(schedule.eval_size)  # type: ignore[assignment]
        except Exception as exc:
            log.warning("could not read the run's training sizes: %s", exc)
    backbone = model.backbone
    record = read_run_record(run.run_dir)
    info = {
        "checkpoint": str(run.path),
        "run_dir": str(run.run_dir),
        "run_config": str(cfg.run_config),
        "backbone": str(cfg.backbone.name),
        "pooling": str(OmegaConf.select(cfg, "pooling._target_", default="")).rsplit(".", 1)[-1],
        "geometry": (
            _recorded_framing(record)
            or (str(OmegaConf.select(cfg, "resolution.geometry", default="square")),)
        )[0],
        "multiple": int(OmegaConf.select(cfg, "resolution.multiple", default=8) or 8),
        "bucket_size": str(OmegaConf.select(cfg, "resolution.bucket_size", default="short_side")),
        "aspect_ratios": [float(a) for a in getattr(schedule, "aspect_ratios", ()) or ()],
        "eval_crop_pct": float(OmegaConf.select(cfg, "data.eval_crop_pct", default=1.0) or 1.0),
        "reduction": int(backbone.reduction),
        "metrics": dict(record.get("metrics") or {}),
    }
    classifier = ResflexClassifier(
        model,
        mean=backbone.mean,
        std=backbone.std,
        classes=run_classes(cfg, num_classes, run.run_dir),
        train_sizes=train_sizes,
        eval_size=eval_size,
        info=info,
    )
    if run.bn_stats:
        classifier.size_stats = TrackedSizeStats(model, main=side_of(eval_size) if eval_size else None)
        classifier.size_stats.load_state(run.bn_stats)
    classifier.config = cfg  # the run's composed config, for callers that need more
    return classifier.to(device).eval()


def make_eval_transform(crop_pct: float = 1.0, geometry: str = "square", **extra: Any) -> Any:
    """The evaluation transform of :mod:`resflex.data.transforms` for ``geometry``.

    Passes only the arguments the installed ``EvalTransform`` takes, so this works
    with every version of it (geometry-aware or not).
    """
    from resflex.data.transforms import EvalTransform

    params = inspect.signature(EvalTransform).parameters
    kwargs: dict[str, Any] = {"crop_pct": crop_pct}
    if "geometry" in params:
        kwargs["geometry"] = geometry
    kwargs.update({k: v for k, v in extra.items() if k in params and v is not None})
    return EvalTransform(**kwargs)


def trained_framing(run_dir: Path | None) -> tuple[str, list[int] | None] | None:
    """(geometry, pad fill) the run trained with, from its ``metrics.json`` ``data_profile``, if any."""
    return _recorded_framing(read_run_record(run_dir))


def _recorded_framing(record: dict[str, Any]) -> tuple[str, list[int] | None] | None:
    """:func:`trained_framing` of a record already read (``load_classifier`` reads it once for all)."""
    profile = record.get("data_profile") or {}
    geometry = profile.get("geometry") if isinstance(profile, dict) else None
    return (str(geometry), profile.get("mean_color")) if geometry else None


def eval_framing(cfg: DictConfig, run_dir: Path | None = None) -> tuple[Any, str, Any | None]:
    """(eval transform, concrete geometry, schedule) exactly as ``scripts/eval.py`` would build them.

    A concrete geometry needs nothing but the config. ``auto`` (resolved from the
    training data's profile) and ``pad`` (filled with the data's mean colour) are
    read from what the run recorded in ``metrics.json``; failing that, resolved by
    building the run's data module, as evaluation does; when the training data is
    no longer there either, ``auto`` falls back to ``square`` and ``pad`` to the
    default fill, with a warning.
    """
    geometry = str(OmegaConf.select(cfg, "resolution.geometry", default="square") or "square")
    crop_pct = float(OmegaConf.select(cfg, "data.eval_crop_pct", default=1.0) or 1.0)
    recorded = trained_framing(run_dir) if geometry in ("auto", "pad") else None
    if recorded is not None:
        geometry, fill = recorded
        schedule = build_schedule(cfg)
        if schedule is not None and hasattr(schedule, "resolve_geometry"):
            schedule.resolve_geometry(geometry)
        return make_eval_transform(crop_pct, geometry, fill=fill), geometry, schedule
    if geometry in ("auto", "pad"):
        try:
            from resflex.build import build_datamodule

            datamodule = build_datamodule(cfg)
            return datamodule.eval_transform, str(datamodule.schedule.geometry), datamodule.schedule
        except Exception as exc:
            log.warning(
                "resolution.geometry=%s needs the run's training data to be resolved (%s); using %s",
                geometry,
                first_line(exc),
                "square" if geometry == "auto" else "pad with the default fill",
            )
            geometry = "square" if geometry == "auto" else geometry
    schedule = build_schedule(cfg)
    if schedule is not None and getattr(schedule, "geometry", geometry) != geometry:
        resolve = getattr(schedule, "resolve_geometry", None)
        if resolve is not None:
            resolve(geometry)
        else:
            schedule.geometry = geometry
    return make_eval_transform(crop_pct, geometry), geometry, schedule


def round_to(value: float, multiple: int) -> int:
    """Nearest multiple of ``multiple`` (never below ``multiple``)."""
    return max(multiple, math.floor(value / multiple + 0.5) * multiple)
