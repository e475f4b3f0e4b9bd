"""A finished run, reopened: ``open_run(ckpt_or_run_folder)`` -> :class:`Run`.

Why one module: evaluation, prediction, export, the model card and ``load_classifier``
all start from a run folder that training left behind (``<run>/.hydra/config.yaml``,
``checkpoints/*.ckpt``, ``metrics.json``, ``classes.json``; where each lies and the plain
readers: :mod:`resflex.run_folder`). Each used to reopen a run its own way; here is the
one way, so the rules are written once:

- the **config** is read once and migrated to today's layout at the door
  (:mod:`resflex.migrations`): the builders and every reader after this see one layout;
  a checkpoint's run drops its pre-training sources (``backbone.pretrained``,
  ``weights``, ``init_from``): its weights come from the checkpoint, nothing is
  downloaded or read again;
- the **weights** load with ``torch.load(weights_only=True)`` only
  (:func:`resflex.models.checkpoint.safe_load`: a file that would run code is refused
  before anything else is read), strictly (:meth:`Run.load_weights`, one error), with the
  per-size BatchNorm statistics stored beside them (``bn_size_stats``);
- the **classes**, the **resolution schedule** and its main size, the **trained
  framing** (``geometry=auto``/``pad`` as resolved from the training data) and the
  **metrics** come from the run's own records.

Importing this module loads no torch and no Hydra; opening a checkpoint does.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from resflex.errors import ConfigError, DataError, first_line
from resflex.migrations import migrate
from resflex.run_folder import (
    CONFIG_FILE,
    HYDRA_DIR,
    find_run_config,
    hydra_file,
    metrics_of_checkpoint,
    read_classes,
    read_record,
    resolve_checkpoint_path,
    run_cwd,
)

if TYPE_CHECKING:
    import torch

    from resflex.models.naflex import TokenClassifier
    from resflex.training.module import ClassificationModule

log = logging.getLogger("resflex")
Size = tuple[int, int]

#: what every reopening does not need again: weights come from the checkpoint
PRETRAINING_SOURCES = {"pretrained": False, "weights": None, "init_from": None, "init_head": False}


def read_config(path: str | Path, run_dir: str | Path | None = None) -> DictConfig:
    """A saved run config in today's layout (old layouts migrated), struct off, ``paths.output_dir`` the
    run folder (outside a Hydra app ``${hydra:runtime.output_dir}`` has no value; the folder is what it
    meant)."""
    path = Path(str(path)).expanduser()
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:
        raise ConfigError(f"cannot read the run config {path}: {first_line(exc)}") from None
    if not isinstance(cfg, DictConfig) or "backbone" not in cfg or "model" not in cfg:
        raise ConfigError(
            f"{path} is not the config of a resflex training run (no backbone or model node)",
            hint="pass run_config=<run>/.hydra/config.yaml of the run that wrote the checkpoint",
        )
    OmegaConf.set_struct(cfg, False)
    migrate(cfg)
    run_dir = Path(run_dir) if run_dir is not None else path.parent.parent
    if "paths" in cfg:
        cfg.paths.output_dir = str(run_dir)
    anchor_data_root(cfg, run_dir)
    return cfg


def anchor_data_root(cfg: DictConfig, run_dir: Path) -> None:
    """A relative ``data.root`` made absolute from the folder the run was started in: ``eval.py`` (and
    anything that reads the run's data) from another folder reads the run's images, not a path that
    means nothing there. A root that resolves to nothing yet is left as it is."""
    try:
        root = OmegaConf.select(cfg, "data.root", default=None)
    except Exception:  # an interpolation only a Hydra app can resolve: left to it
        return
    if not isinstance(root, str) or not root or Path(root).expanduser().is_absolute():
        return
    cwd = run_cwd(run_dir)
    if cwd is not None and (cwd / root).exists():
        cfg.data.root = str(cwd / root)


# ---- a run, opened -------------------------------------------------------------------------------


@dataclass
class Run:
    """A run folder's config (today's layout) and records; with a checkpoint, its weights."""

    run_dir: Path
    config_path: Path
    config: DictConfig
    #: ``metrics.json`` (``{}`` when the run wrote none)
    record: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    state: dict[str, torch.Tensor] | None = None
    #: per-size BatchNorm statistics beside the weights (``model.bn_stats_per_size``, calibrated runs)
    bn_stats: dict[str, dict[str, torch.Tensor]] | None = None
    _own_metrics: tuple[dict[str, Any], dict[str, str]] | None = field(default=None, init=False, repr=False)

    @property
    def metrics(self) -> dict[str, Any]:
        """The run's final metrics (``metrics.json``'s ``metrics``: accuracy at every evaluated size...) as
        they apply to the opened checkpoint: a split measured on another checkpoint of the run (the
        record's ``measured_on``; :func:`resflex.run_folder.metrics_of_checkpoint`) is left out, so its
        accuracy per size never becomes this checkpoint's robust range (``predict.size=auto``, the
        export metadata). Without a checkpoint: every metric."""
        return self._metrics_of_checkpoint()[0]

    def _metrics_of_checkpoint(self) -> tuple[dict[str, Any], dict[str, str]]:
        """:func:`metrics_of_checkpoint` for the opened file; a split measured on another file of the run
        that holds the same weights (the best epoch was the last: ``last.ckpt`` equals it) counts as
        this one's. Worked out once (comparing means reading that file)."""
        if self._own_metrics is None:
            kept, other = metrics_of_checkpoint(self.record, self.checkpoint)
            same = [name for name in set(other.values()) if self._same_weights_as(name)]
            if same:
                kept, other = metrics_of_checkpoint(self.record, self.checkpoint, same)
            self._own_metrics = (kept, other)
        return self._own_metrics

    def _same_weights_as(self, name: str) -> bool:
        """True when ``name`` beside the opened checkpoint holds equal weights and BatchNorm statistics."""
        import torch

        from resflex.models.bn_calibration import BN_STATS_KEY
        from resflex.models.checkpoint import safe_load, state_dict_of

        path = Path(str(self.checkpoint)).parent / name
        if self.state is None or not path.is_file():
            return False
        try:
            loaded = safe_load(path, what="checkpoint")
            state = state_dict_of(loaded, path)
        except Exception:  # unreadable: not known to be the same
            return False
        stats = (loaded.get(BN_STATS_KEY) if isinstance(loaded, dict) else None) or None

        def equal(a: Any, b: Any) -> bool:
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
            if isinstance(a, dict) and isinstance(b, dict):
                return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
            return a is None and b is None

        return equal(dict(state), dict(self.state)) and equal(stats, self.bn_stats)

    @property
    def metrics_note(self) -> str | None:
        """Why some of the run's metrics are not the opened checkpoint's (None: they all are)."""
        other = self._metrics_of_checkpoint()[1]
        if not other:
            return None
        splits = " and ".join(other)
        files = ", ".join(sorted(set(other.values())))
        return (
            f"metrics.json's {splits} numbers (accuracy per size, robust range) are of {files}, "
            f"not of the loaded {Path(str(self.checkpoint)).name}"
        )

    @property
    def num_classes(self) -> int:
        """The class count of the checkpoint's classifier head."""
        from resflex.models.checkpoint import HEAD_PREFIX

        head = (self.state or {}).get(HEAD_PREFIX + "weight")
        if head is None:
            raise DataError(f"{self.checkpoint or self.run_dir}: no weights opened with the run")
        return int(head.shape[0])

    def classes(self, num_classes: int | None = None) -> list[str]:
        """Class names in label order: ``classes.json``, else the run's data (an image folder's class
        folders, no image opened; a source's own ``classes``), else ``0..N-1`` with a warning."""
        count = self.num_classes if num_classes is None else num_classes
        names, other = self._named_classes(count)
        if names is not None:
            return names
        if other is not None:
            log.warning(
                "the run's files name %d classes but the checkpoint classifies %d (is run_config another "
                "run's?); using 0..%d",
                len(other),
                count,
                count - 1,
            )
        else:
            log.warning("class names of the run not found; using 0..%d", count - 1)
        return [str(i) for i in range(count)]

    def known_classes(self) -> list[str] | None:
        """The checkpoint's class names in label order when the run's files name them (``classes.json``,
        the run's data), else None (no ``0..N-1`` stand-ins), without a warning."""
        return self._named_classes(self.num_classes)[0]

    def _named_classes(self, count: int) -> tuple[list[str] | None, list[str] | None]:
        """(names of ``count`` classes, or None; names found for another count, or None)."""
        other = None  # names for another class count: the run config is another run's
        for read in (lambda: read_classes(self.run_dir), self.classes_from_data):  # the data only if needed
            names = read()
            if names is not None and len(names) == count:
                return names, None
            other = other or names
        return None, other

    def classes_from_data(self) -> list[str] | None:
        """The class names the run's data gives, or None when the data is not there any more."""
        from hydra.utils import instantiate

        from resflex.data.arguments import finish_source

        data = self.config.get("data")
        if data is None:
            return None
        try:
            if str(OmegaConf.select(data, "source._target_", default="")).endswith("ImageFolderSource"):
                from torchvision.datasets.folder import find_classes

                root = Path(str(data.root)).expanduser()
                return list(find_classes(str(root / "train"))[0])
            source_cfg = data.source.copy()
            if "bad_image_log" in source_cfg:
                source_cfg.bad_image_log = None
            source = finish_source(instantiate(source_cfg), data.get("root"), str(data.get("name", "")))
            return [str(c) for c in source.classes]
        except Exception as exc:
            log.debug("classes from the run's data: %s", exc)
            return None

    def schedule(self) -> Any | None:
        """The run's resolution schedule (bound to its epochs), or None when it cannot be rebuilt."""
        from hydra.utils import instantiate

        try:
            schedule = instantiate(self.config.resolution)
            schedule.bind(OmegaConf.select(self.config, "trainer.max_epochs", default=None))
            return schedule
        except Exception as exc:  # an edited config: inference works without it
            log.warning("could not rebuild the run's resolution schedule: %s", first_line(exc))
            return None

    def required_schedule(self, schedule: Any | None = None) -> Any:
        """``schedule`` (default :meth:`schedule`), else a one-line :class:`ConfigError`: a NaFlex run's
        sequence lengths and patch size are its schedule's, with no fallback."""
        schedule = schedule if schedule is not None else self.schedule()
        if schedule is None:  # schedule() logged why
            raise ConfigError(
                f"the run {self.checkpoint or self.run_dir} has no resolution schedule: its config could not "
                "rebuild it",
                hint="pass the config of the run that wrote the checkpoint (run_config=...)",
            )
        return schedule

    def main_size(self, schedule: Any | None = None) -> Size | None:
        """The run's main (eval) size as its schedule defines it; None when that cannot be rebuilt."""
        schedule = schedule if schedule is not None else self.schedule()
        try:
            return None if schedule is None else (int(schedule.eval_size[0]), int(schedule.eval_size[1]))
        except Exception as exc:
            log.warning("could not read the run's eval size: %s", first_line(exc))
            return None

    @property
    def is_naflex(self) -> bool:
        """True for a NaFlex run (``resolution=naflex``): token batches, sized in tokens per image."""
        target = str(OmegaConf.select(self.config, "resolution._target_", default="") or "")
        return target.endswith("NaFlexResolution")

    def trained_framing(self) -> tuple[str, list[int] | None] | None:
        """(geometry, pad fill) the run trained with, from its record's ``data_profile``; None if absent."""
        profile = self.record.get("data_profile") or {}
        geometry = profile.get("geometry") if isinstance(profile, dict) else None
        return (str(geometry), profile.get("mean_color")) if geometry else None

    def eval_framing(self) -> tuple[Any, str, Any | None]:
        """(eval transform, concrete geometry, schedule) exactly as ``scripts/eval.py`` builds them.

        A concrete geometry needs nothing but the config. ``auto`` (resolved from the training
        data's profile) and ``pad`` (filled with the data's mean colour) are what the run
        recorded; failing that, resolved by building the run's data module, as evaluation does;
        when the training data is gone too, ``auto`` falls back to ``square`` and ``pad`` to the
        default fill, with a warning.
        """
        from resflex.data.transforms import DEFAULT_FILL, EvalTransform

        cfg = self.config
        geometry = str(OmegaConf.select(cfg, "resolution.geometry", default="square") or "square")
        crop_pct = float(OmegaConf.select(cfg, "data.eval_crop_pct", default=1.0) or 1.0)
        fill: Any = None
        recorded = self.trained_framing() if geometry in ("auto", "pad") else None
        if recorded is not None:
            geometry, fill = recorded
        elif geometry in ("auto", "pad"):
            try:
                from resflex.build import build_datamodule

                datamodule = build_datamodule(cfg)
                return datamodule.eval_transform, str(datamodule.schedule.geometry), datamodule.schedule
            except Exception as exc:
                fallback = "square" if geometry == "auto" else "pad with the default fill"
                log.warning(
                    "resolution.geometry=%s needs the run's training data to be resolved (%s); using %s",
                    geometry,
                    first_line(exc),
                    fallback,
                )
                geometry = "square" if geometry == "auto" else geometry
        schedule = self.schedule()
        if schedule is not None and schedule.geometry != geometry:
            schedule.resolve_geometry(geometry)
        transform = EvalTransform(crop_pct, geometry, fill=fill if fill is not None else DEFAULT_FILL)
        return transform, geometry, schedule

    def load_weights(self, module: ClassificationModule) -> None:
        """The checkpoint's weights into ``module``, strictly (an evaluation with half the weights
        missing must fail, not print a number), and its per-size BatchNorm statistics."""
        from resflex.models.bn_calibration import BN_STATS_KEY

        hint = "was the run config edited after training? pass run_config=... of the right run"
        try:
            result = module.load_state_dict(self.state or {}, strict=False)
        except RuntimeError as exc:  # a tensor of another shape (another backbone): torch's page, in a line
            mismatch = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), None)
            if mismatch is None:
                raise
            raise ConfigError(
                f"checkpoint {self.checkpoint} does not fit the model built from its run config: {mismatch}",
                hint=hint,
            ) from None
        if result.missing_keys or result.unexpected_keys:
            raise ConfigError(
                f"checkpoint {self.checkpoint} does not fit the model built from its run config: "
                f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}",
                hint=hint,
            )
        if self.bn_stats:  # the nearest size's statistics at each evaluation size
            module.on_load_checkpoint({BN_STATS_KEY: self.bn_stats})

    def build_module(
        self, cfg: DictConfig | None = None, num_classes: int | None = None
    ) -> ClassificationModule:
        """The run's LightningModule (``build.build_module`` of ``cfg``, default the run's config) with the
        checkpoint's weights loaded (:meth:`load_weights`)."""
        from resflex.build import build_module

        spec = copy.deepcopy(cfg if cfg is not None else self.config)
        if OmegaConf.select(spec, "model.scale_consistency") is not None:  # a training term, no state:
            OmegaConf.update(spec, "model.scale_consistency", 0)  # not built (nor its log line) here
        module = build_module(spec, num_classes or self.num_classes)
        self.load_weights(module)
        return module

    def token_classifier(
        self, device: str | torch.device = "cpu", seq_len: int | None = None
    ) -> TokenClassifier:
        """A NaFlex run's eval-mode classifier on (patches, patch_coord, patch_valid) tensors, its
        normalisation inside (:class:`resflex.models.naflex.TokenClassifier`): what prediction and
        export feed; the LightningModule's own model and buffers, so the numbers are evaluation's.

        A run with per-size BatchNorm statistics (keyed by sequence length) gets those nearest to
        ``seq_len``, as ``scripts/eval.py`` uses them at that length; ``None``: the main length's
        (``max_seq_len``: an exported graph holds one set).
        """
        from resflex.models.bn_calibration import side_of
        from resflex.models.naflex import TokenClassifier

        module = self.build_module()
        if module.size_stats is not None:
            schedule = self.schedule()
            module.size_stats.main = int(schedule.max_seq_len) if schedule is not None else None
            if seq_len is None:
                module.size_stats.use_main()
            else:
                module.size_stats.use(side_of((seq_len, seq_len)))
        classifier = TokenClassifier(module.model, module.pixel_mean, module.pixel_std)
        return classifier.to(device).eval()


def open_run_folder(run_dir: str | Path) -> Run:
    """A run folder's config and records, without weights (the model card: a run whose weights are gone
    still gets one). The config keeps its pre-training sources: the card says what the run started from."""
    run_dir = Path(run_dir)
    path = hydra_file(run_dir)
    if not path.is_file():
        raise ConfigError(
            f"{run_dir} has no run config ({HYDRA_DIR}/{CONFIG_FILE})",
            hint="pass the folder of a training run (logs/train/runs/<time>)",
        )
    cfg = read_config(path, run_dir)
    return Run(run_dir=run_dir, config_path=path, config=cfg, record=read_record(run_dir))


def warn_model_differences(cfg: DictConfig, checkpoint: Path, config_path: Path) -> None:
    """Warn when ``run_config`` builds another model than the checkpoint's own run config (beside its
    ``checkpoints/`` folder) says: a head without parameters (avg against max pooling) loads strictly
    into either, and the numbers are another model's without a word."""
    from resflex.resume_check import config_differences

    own = find_run_config(checkpoint)
    if own is None or own.resolve() == config_path.resolve():
        return
    try:
        saved = read_config(own, own.parent.parent)
        models = [OmegaConf.to_container(c.model, resolve=True) for c in (saved, cfg)]
    except Exception:  # the checkpoint's own config is unreadable: the one given is all there is
        return
    saved_model, given_model = ({str(k): v for k, v in m.items()} for m in models if isinstance(m, dict))
    differences = [
        key
        for key, *_ in config_differences(saved_model, given_model)
        if not key.startswith(("net.backbone.pretrained", "net.backbone.weights", "net.backbone.init_"))
    ]
    if differences:
        log.warning(
            "run_config=%s builds another model than the checkpoint's own %s (model.%s): the weights are "
            "read into that model",
            config_path,
            own,
            ", model.".join(differences[:4]) + (", ..." if len(differences) > 4 else ""),
        )


def open_run(path: str | Path, run_config: str | Path | None = None) -> Run:
    """A checkpoint (or a run folder: its best checkpoint, else ``checkpoints/last.ckpt``;
    :func:`resflex.run_folder.resolve_checkpoint_path`) with its run.

    The file is read first, ``weights_only``: an unsafe file is refused before anything else
    happens. ``run_config`` overrides where the config is found (default
    ``<run>/.hydra/config.yaml`` beside the ``checkpoints/`` folder). One-line
    :class:`~resflex.errors.DataError` / :class:`~resflex.errors.ConfigError` for a missing,
    unsafe or foreign file and a run config that cannot be found.
    """
    from resflex.models.bn_calibration import BN_STATS_KEY
    from resflex.models.checkpoint import HEAD_PREFIX, safe_load, state_dict_of

    ckpt = resolve_checkpoint_path(path)
    loaded = safe_load(ckpt, what="ckpt_path")
    state = state_dict_of(loaded, ckpt)
    if HEAD_PREFIX + "weight" not in state:
        raise DataError(
            f"{ckpt} is not a resflex checkpoint (no {HEAD_PREFIX}weight tensor)",
            hint="pass <run>/checkpoints/last.ckpt of a resflex training run; a timm weights file goes "
            "to training as backbone.weights=PATH",
        )
    config_path = Path(str(run_config)).expanduser() if run_config else find_run_config(ckpt)
    if run_config and config_path is not None and not config_path.is_file():
        raise ConfigError(
            f"run_config={config_path} {'is a folder' if config_path.is_dir() else 'does not exist'}",
            hint=f"run_config=/path/to/run/{HYDRA_DIR}/{CONFIG_FILE}, or leave it out to use the one beside "
            "the checkpoint's run folder",
        )
    if config_path is None or not config_path.is_file():
        raise ConfigError(
            f"no run config found for {ckpt} (looked for {HYDRA_DIR}/{CONFIG_FILE} next to its checkpoints/ "
            "folder)",
            hint=f"pass run_config=/path/to/run/{HYDRA_DIR}/{CONFIG_FILE}",
        )
    run_dir = config_path.parent.parent
    cfg = read_config(config_path, run_dir)
    if run_config:
        warn_model_differences(cfg, ckpt, config_path)
    for key, value in PRETRAINING_SOURCES.items():
        if key in cfg.backbone:
            cfg.backbone[key] = value
    bn_stats = loaded.get(BN_STATS_KEY) if isinstance(loaded, dict) else None
    return Run(
        run_dir=run_dir,
        config_path=config_path,
        config=cfg,
        record=read_record(run_dir),
        checkpoint=ckpt,
        state=state,
        bn_stats=bn_stats or None,
    )
