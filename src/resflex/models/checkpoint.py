"""Safe loading of weight files and resflex checkpoints, with a one-line report of what loaded.

Why a module of its own: a ``.pth``/``.ckpt`` file is a pickle, and unpickling
can run arbitrary code. Every load in resflex goes through :func:`safe_load`,
which reads ``.safetensors`` with safetensors and everything else with
``torch.load(weights_only=True)``; a file that needs anything beyond tensors
and plain containers is refused with a one-line :class:`DataError`, and the
code inside it never runs.

Loading partial weights (a backbone out of a classifier checkpoint, a head whose
class count changed) is where silent mistakes hide, so every load here returns
a :class:`LoadReport` whose :meth:`LoadReport.summary` names what loaded, what
is missing, what was unexpected and what had the wrong shape, in one line.
"""

from __future__ import annotations

import logging
import pickle
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resflex.errors import ConfigError, DataError

log = logging.getLogger("resflex")

#: Where the pieces of an :class:`~resflex.models.classifier.ImageClassifier` live in a
#: resflex Lightning checkpoint (``ClassificationModule.model`` → ``model.``).
BACKBONE_PREFIX = "model.backbone.model."
POOLING_PREFIX = "model.pooling."
HEAD_PREFIX = "model.head."


def resolve_checkpoint_path(path: str | Path, key: str = "ckpt_path") -> Path:
    """A checkpoint file, or a run folder (→ ``<run>/checkpoints/last.ckpt``); one-line error when missing."""
    if path is None or str(path) in ("", "None", "null"):
        raise ConfigError(f"{key} is not set", hint=f"pass {key}=/path/to/run/checkpoints/last.ckpt")
    candidate = Path(str(path)).expanduser()
    if candidate.is_dir():
        for inner in (candidate / "checkpoints" / "last.ckpt", candidate / "last.ckpt"):
            if inner.is_file():
                return inner
        raise DataError(
            f"{key}: no checkpoint in folder {candidate}",
            hint="expected <run>/checkpoints/last.ckpt, or pass the .ckpt file itself",
        )
    if not candidate.is_file():
        raise DataError(
            f"{key}: checkpoint not found: {candidate}",
            hint="pass the .ckpt file of an earlier run, e.g. logs/train/runs/<time>/checkpoints/last.ckpt",
        )
    return candidate


def _unsafe_globals(path: Path) -> str:
    """Names of the non-tensor objects a pickle would construct (read from its opcodes, nothing runs)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        return ""
    return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def safe_load(path: str | Path, what: str = "checkpoint") -> Any:
    """Read a weights file without executing code: safetensors, or ``torch.load(weights_only=True)``.

    Raises :class:`DataError` (one line) when the file is missing, unreadable, or
    would need arbitrary code to unpickle.
    """
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise DataError(f"{what} not found: {path}", hint="check the path (relative paths start at the cwd)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise DataError(f"cannot read {what} {path}: not a valid safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        names = _unsafe_globals(path)
        if not names:  # legacy (non-zip) pickles: the refused global is named in torch's message
            first = str(exc).splitlines()
            names = next((line.strip() for line in first if "GLOBAL" in line or "global" in line), "")
        raise DataError(
            f"refusing to load {what} {path}: it contains code or Python objects, not just tensors"
            + (f" ({names})" if names else "")
            + "; unpickling it could run arbitrary code",
            hint="only tensors are loaded; re-save it as a state_dict (torch.save(model.state_dict(), f)) "
            "or as .safetensors",
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read {what} {path}: {first}") from None


def state_dict_of(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded file: a Lightning checkpoint's ``state_dict``, a timm training
    checkpoint's ``state_dict_ema``/``model``, or the file itself when it is a flat state dict."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "state_dict_ema", "model_ema", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            # DataParallel/DDP and torch.compile wrappers prefix every key
            for prefix in ("module.", "_orig_mod."):
                if all(k.startswith(prefix) for k in tensors):
                    tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
            return tensors
    raise DataError(f"{path} holds no tensors (found {type(obj).__name__})", hint="expected a state dict")


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _short(names: list[str], limit: int = 4) -> str:
    if not names:
        return "none"
    text = ", ".join(names[:limit])
    return text + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


@dataclass
class LoadReport:
    """What one partial load did; :meth:`summary` is the single line users read."""

    what: str
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def total(self) -> int:
        return len(self.loaded) + len(self.missing) + len(self.mismatched)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        text = (
            f"{self.what} from {self.source}: loaded {len(self.loaded)}/{self.total} tensors; "
            f"missing (kept as initialised): {_short(self.missing)}; "
            f"unexpected (ignored): {_short(self.unexpected)}; "
            f"shape mismatch (kept as initialised): {_short(self.mismatched)}"
        )
        return f"{text}; {self.note}" if self.note else text

    def log(self) -> None:
        log.log(logging.INFO if self.clean else logging.WARNING, self.summary())


def load_matching(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, source: str) -> LoadReport:
    """Copy every tensor whose name and shape match; report the rest (never raises on a partial match)."""
    own = module.state_dict()
    report = LoadReport(what=what, source=source)
    usable: dict[str, torch.Tensor] = {}
    for name, target in own.items():
        if name not in state:
            report.missing.append(name)
        elif tuple(state[name].shape) != tuple(target.shape):
            report.mismatched.append(f"{name} {tuple(state[name].shape)}->{tuple(target.shape)}")
        else:
            usable[name] = state[name]
            report.loaded.append(name)
    report.unexpected = [name for name in state if name not in own]
    module.load_state_dict(usable, strict=False)
    return report


def _timm_filter(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply the model family's own ``checkpoint_filter_fn`` (key remapping, ViT pos-embed resampling),
    exactly what timm does for hub weights."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        try:
            return dict(filter_fn(state, model))
        except TypeError:
            return dict(filter_fn(state))
    except Exception as exc:  # a filter that chokes on an already-converted dict: keep the keys as they are
        log.debug("checkpoint_filter_fn of %s skipped: %s", type(model).__name__, exc)
        return state


def _drop_classifier(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """The timm classifier (``fc``, ``head.fc``…) of a weights file is not part of a backbone."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    own = model.state_dict()
    dropped = [k for k in state if any(k.startswith(c + ".") for c in names) and k not in own]
    note = f"dropped the file's classifier ({', '.join(dropped)})" if dropped else ""
    return {k: v for k, v in state.items() if k not in dropped}, note


def load_backbone_weights(
    model: nn.Module, path: str | Path, key: str = "backbone.weights", require_resflex: bool = False
) -> LoadReport:
    """Load a weights file or resflex checkpoint into a timm model built with ``num_classes=0``.

    Accepts a timm/torchvision-style state dict (``.safetensors``/``.pth``) or a
    resflex Lightning checkpoint (its ``model.backbone.model.*`` tensors are
    taken). Raises when *no* tensor matches: that is always a wrong file or a
    wrong ``backbone.name``, never something to train through.
    """
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise DataError(f"{key}: file not found: {path}", hint="check the path")
    state = state_dict_of(safe_load(path, what=key), path)
    is_resflex = any(k.startswith(BACKBONE_PREFIX) for k in state)
    if require_resflex and not is_resflex:
        raise DataError(
            f"{key}: {path} is not a resflex checkpoint (no {BACKBONE_PREFIX}* tensors)",
            hint="for a plain timm/torch weights file use backbone.weights=PATH",
        )
    if is_resflex:
        state = strip_prefix(state, BACKBONE_PREFIX)
    state = _timm_filter(model, state)
    state, note = _drop_classifier(model, state)
    report = load_matching(model, state, what=f"backbone ({key})", source=str(path))
    report.note = note
    if not report.loaded:
        trained_with = _trained_backbone_name(path)
        raise ConfigError(
            f"{key}: no tensor of {path} matches backbone {type(model).__name__} "
            f"({len(state)} tensors in the file, e.g. {_short(sorted(state), 3)})",
            hint=f"the checkpoint was trained with backbone.name={trained_with}"
            if trained_with
            else "is backbone.name the architecture the file was trained with?",
        )
    return report


def _trained_backbone_name(ckpt: Path) -> str | None:
    """The ``backbone.name`` in the run config saved next to a resflex checkpoint, if there is one."""
    config = find_run_config(ckpt)
    if config is None:
        return None
    try:
        from omegaconf import OmegaConf

        return str(OmegaConf.load(config).backbone.name)
    except Exception:
        return None


def find_run_config(ckpt: str | Path) -> Path | None:
    """``<run>/.hydra/config.yaml`` for ``<run>/checkpoints/x.ckpt`` (or ``<run>/x.ckpt``)."""
    ckpt = Path(str(ckpt)).expanduser().resolve()
    for folder in (ckpt.parent.parent, ckpt.parent):
        candidate = folder / ".hydra" / "config.yaml"
        if candidate.is_file():
            return candidate
    return None


def load_head_from_checkpoint(
    classifier: nn.Module, path: str | Path, key: str = "backbone.init_from"
) -> LoadReport:
    """Load pooling and linear head of a resflex checkpoint into an ``ImageClassifier``.

    When the class count differs, the linear head keeps its fresh initialisation
    (and the report says so); pooling parameters (GeM's ``p``) still load.
    """
    path = Path(str(path)).expanduser()
    state = state_dict_of(safe_load(path, what=key), path)
    pooling = strip_prefix(state, POOLING_PREFIX)
    head = strip_prefix(state, HEAD_PREFIX)
    merged = {f"pooling.{k}": v for k, v in pooling.items()} | {f"head.{k}": v for k, v in head.items()}
    target = nn.ModuleDict({"pooling": classifier.pooling, "head": classifier.head})
    report = load_matching(target, merged, what=f"pooling+head ({key})", source=str(path))
    source_classes = head["weight"].shape[0] if "weight" in head else None
    if source_classes is not None and source_classes != classifier.head.out_features:
        report.note = (
            f"classifier re-initialised: the checkpoint has {source_classes} classes, "
            f"this run has {classifier.head.out_features}"
        )
    return report


def init_head_from_checkpoint(classifier: nn.Module) -> LoadReport | None:
    """Apply ``backbone.init_head`` for a classifier whose backbone came from ``backbone.init_from``.

    Logs one line either way, so a run's log always says where its head came from.
    """
    backbone = classifier.backbone
    path = getattr(backbone, "init_from", None)
    if not path:
        return None
    if not getattr(backbone, "init_head", False):
        log.info("pooling+head: freshly initialised (backbone.init_head=false; backbone from %s)", path)
        return None
    report = load_head_from_checkpoint(classifier, path)
    report.log()
    return report
