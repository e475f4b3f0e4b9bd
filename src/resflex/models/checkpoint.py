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
import re
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from resflex.errors import ConfigError, DataError
from resflex.validation import override_arg


class HeadedClassifier(Protocol):
    """What loading a head reads of an :class:`~resflex.models.classifier.ImageClassifier` (that
    module imports this one's importers, so it is named by what it has)."""

    @property
    def backbone(self) -> nn.Module: ...
    @property
    def pooling(self) -> nn.Module: ...
    @property
    def head(self) -> nn.Linear: ...


log = logging.getLogger("resflex")

#: Where the pieces of an :class:`~resflex.models.classifier.ImageClassifier` live in a
#: resflex Lightning checkpoint (``ClassificationModule.model`` → ``model.``).
BACKBONE_PREFIX = "model.backbone.model."
POOLING_PREFIX = "model.pooling."
HEAD_PREFIX = "model.head."


#: The hint of every "this file cannot be read" error.
UNREADABLE_HINT = (
    "the file is cut short (a full disk, a killed copy or save?), damaged or not a checkpoint; "
    "use another checkpoint of the run (e.g. <run>/checkpoints/best-*.ckpt) or copy it again"
)
#: The same for ``backbone.weights``: a timm / torchvision / safetensors file, not a run's checkpoint.
UNREADABLE_WEIGHTS_HINT = (
    "the file is cut short (a full disk, a killed download or copy?), damaged or not a weights file; "
    "download or copy it again (a .safetensors or .pth state dict)"
)


def _unsafe_globals(path: Path) -> str:
    """Names of the non-tensor objects a pickle would construct (read from its opcodes, nothing runs)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        return ""
    return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def _short_reason(exc: BaseException) -> str:
    """The first sentence of an exception's first line (torch appends paragraphs of advice)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    first = text.splitlines()[0].split(". ")[0].rstrip(".")
    return first if len(first) <= 160 else first[:157] + "..."


def _structure_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a whole PyTorch file, from its bytes alone (nothing is unpickled).

    ``torch.save`` writes a zip archive whose index sits at the very end: a file cut
    short (a full disk, a killed copy) has none, which this finds without reading the
    tensors. Legacy (pre-zip) files are pickles; anything else is not a checkpoint.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        return _short_reason(exc)
    if size == 0:
        return "the file is empty (0 bytes)"
    if size < 4:
        return f"cut short: {size} bytes"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.infolist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            return (
                f"cut short or damaged: {size} bytes and no valid zip index at its end ({_short_reason(exc)})"
            )
        if not any(m.filename == "data.pkl" or m.filename.endswith("/data.pkl") for m in members):
            return "a zip archive, but not a PyTorch file (no data.pkl in it)"
        for member in members:
            if member.header_offset + member.compress_size > size:
                return f"cut short: {member.filename} ends past the end of the file ({size} bytes)"
        return None
    if head[:1] != b"\x80":  # every pickle protocol >= 2 starts with PROTO (0x80); torch.save uses 2
        return f"not a PyTorch file (it starts with {head!r}: neither a zip archive nor a pickle)"
    return None


class UnsafeCheckpointError(DataError, pickle.UnpicklingError):
    """A file that would construct objects beyond tensors and plain containers (it could run code).

    Also a :class:`pickle.UnpicklingError`, what ``torch.load(weights_only=True)`` raises
    for such a file, so code that catches that keeps working when it reads through here.
    """


class _Problem(Exception):
    """Why a file cannot be loaded: ``unsafe`` (it would run code; the reason names the globals)
    or ``unreadable`` (missing, empty, cut short, not a PyTorch file)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _load(path: Path, map_location: Any, mmap: bool) -> Any:
    """The file's contents, read without running code; raises :class:`_Problem`."""
    if not path.is_file():
        raise _Problem("missing", "not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise _Problem("unreadable", f"not a valid safetensors file ({_short_reason(exc)})") from None
    problem = _structure_problem(path)
    if problem is not None:
        raise _Problem("unreadable", problem)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and _is_zip(path))
    except MemoryError:
        raise
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError):
            names = _unsafe_globals(path)
            if not names:  # legacy (non-zip) pickles: the refused global is named in torch's message
                names = ", ".join(dict.fromkeys(re.findall(r"GLOBAL ([\w.]+)", str(exc))))
            if not names and "Weights only load failed" in str(exc):  # refused for another reason
                names = _weights_unpickler_reason(str(exc))
            if names:
                raise _Problem("unsafe", names) from None
        raise _Problem("unreadable", _short_reason(exc)) from None


def _weights_unpickler_reason(message: str) -> str:
    """The line after ``WeightsUnpickler error:`` in torch's refusal (e.g. ``Unsupported operand 149``)."""
    lines = [line.strip() for line in message.split("WeightsUnpickler error:", 1)[-1].splitlines()]
    return next((line for line in lines if line), "refused by torch.load(weights_only=True)")


def _as_data_error(
    path: Path, problem: _Problem, what: str, action: str | None, unreadable_hint: str = UNREADABLE_HINT
) -> DataError:
    if problem.kind == "missing":
        return DataError(f"{what} not found: {path}", hint="check the path (relative paths start at the cwd)")
    if problem.kind == "unsafe":
        return UnsafeCheckpointError(
            f"refusing to {action or 'load ' + what} {path}: it contains code or Python objects, "
            f"not just tensors ({problem.reason}); unpickling it could run arbitrary code",
            hint="only tensors are loaded; re-save it as a state_dict (torch.save(model.state_dict(), f)) "
            "or as .safetensors",
        )
    if problem.reason.startswith("not a PyTorch file"):  # text, an image...: not a damaged checkpoint
        unreadable_hint = "this file is no checkpoint or weights file at all; check the path " + (
            "(a run's: <run>/checkpoints/last.ckpt, or the run folder itself)"
            if unreadable_hint == UNREADABLE_HINT
            else "(a .safetensors or .pth state dict)"
        )
    return DataError(f"cannot {action or 'read ' + what} {path}: {problem.reason}", hint=unreadable_hint)


def safe_load(
    path: str | Path,
    what: str = "checkpoint",
    *,
    action: str | None = None,
    map_location: Any = "cpu",
    unreadable_hint: str = UNREADABLE_HINT,
) -> Any:
    """Read a weights file without executing code: safetensors, or ``torch.load(weights_only=True)``.

    The one reader of checkpoints and weight files in resflex (Lightning's resume
    and ``trainer.test(ckpt_path=...)`` read through it too, via
    :class:`~resflex.training.safety.AtomicCheckpointIO`). Raises :class:`DataError`
    (one line naming the file, with a hint) when the file is missing, empty, cut
    short, not a PyTorch/safetensors file at all, or would need arbitrary code to
    unpickle. ``action`` replaces "read <what>"/"load <what>" in the message
    (e.g. ``action="resume from"``); ``unreadable_hint``: the hint of a file that cannot be read
    (:data:`UNREADABLE_WEIGHTS_HINT` for a weights file that is not a run's checkpoint).
    """
    path = Path(str(path)).expanduser()
    try:
        return _load(path, map_location, mmap=False)
    except _Problem as problem:
        raise _as_data_error(path, problem, what, action, unreadable_hint) from None


def training_progress(path: str | Path) -> tuple[int, int]:
    """(epoch, global step) a Lightning checkpoint was saved at, read without its tensors (mapped, not
    copied: a resnet's 250 MB cost nothing); (-1, 0) when it records neither."""
    path = Path(str(path)).expanduser()
    try:
        state = _load(path, "cpu", mmap=True)
    except _Problem as problem:
        raise _as_data_error(path, problem, "checkpoint", None, UNREADABLE_HINT) from None
    return int(state.get("epoch", -1)), int(state.get("global_step", 0))


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable tensors-only checkpoint, or ``None`` (the tensor bytes are not read)."""
    try:
        _load(path, "cpu", mmap=True)
    except _Problem as problem:
        return problem.reason if problem.kind != "unsafe" else f"it would run code ({problem.reason})"
    return None


def check_checkpoint(path: str | Path, what: str = "checkpoint", *, action: str | None = None) -> Path:
    """Raise the one-line :class:`DataError` :func:`safe_load` would, without reading the tensors.

    The zip index is checked, then the file is loaded ``weights_only`` with
    ``mmap=True``: the pickle and the tensor records are validated, the tensor
    bytes are not read (cheap even for a checkpoint of gigabytes).
    """
    path = Path(str(path)).expanduser()
    try:
        _load(path, "cpu", mmap=True)
    except _Problem as problem:
        raise _as_data_error(path, problem, what, action) from None
    return path


def check_resumable(path: str | Path, module: nn.Module) -> None:
    """A one-line :class:`DataError` when ``path`` cannot resume training ``module``: not a training
    checkpoint (no loop or optimizer state: a weights file), or weights of another model (another
    backbone, head or class count). Lightning answers both with a page of traceback from inside its
    loading (a ``KeyError``, ``size mismatch for ...``). Tensors are memory-mapped, not read."""
    path = Path(str(path)).expanduser()
    try:
        loaded = _load(path, "cpu", mmap=True)
    except _Problem as problem:
        raise _as_data_error(path, problem, "ckpt_path", "resume from") from None
    hint = "ckpt_path resumes the same run; to start another from these weights: " + override_arg(
        "backbone.init_from", path
    )
    if not (isinstance(loaded, Mapping) and {"pytorch-lightning_version", "state_dict"} <= set(loaded)):
        raise DataError(f"ckpt_path={path} is a weights file, not a training checkpoint", hint=hint)
    saved = {k: tuple(v.shape) for k, v in loaded["state_dict"].items() if isinstance(v, torch.Tensor)}
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    shared = sorted(set(saved) & set(expected))
    reshaped = [f"{k} {list(saved[k])} vs {list(expected[k])}" for k in shared if saved[k] != expected[k]]
    if missing or unexpected or reshaped:
        parts = [
            f"{len(items)} {what} (e.g. {', '.join(items[:2])})"
            for items, what in ((reshaped, "of another shape"), (missing, "missing"), (unexpected, "extra"))
            if items
        ]
        raise DataError(f"ckpt_path={path} holds another model's weights: {'; '.join(parts)}", hint=hint)


def _is_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == b"PK"
    except OSError:
        return False


def is_readable_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a whole, tensors-only checkpoint that :func:`safe_load` would read.

    Detects a missing, empty or foreign file, one cut short (full disk, killed copy)
    and one that would run code; does not read the tensor bytes (see :func:`check_checkpoint`).
    """
    return checkpoint_problem(Path(str(path)).expanduser()) is None


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


def existing_file(path: str | Path, key: str) -> Path:
    """``path`` (``~`` expanded) when it is a file, else a one-line :class:`DataError` naming ``key``."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise DataError(f"{key}: file not found: {path}", hint="check the path")
    return path


def resflex_checkpoint(path: str | Path, key: str) -> Path:
    """A resflex checkpoint file; one-line error when missing or a folder. A run folder given on the
    command line is turned into its checkpoint file before the model is built
    (:func:`resflex.preflight.check_before_work`: run folders are the application layer's)."""
    path = Path(str(path)).expanduser()
    if path.is_dir():
        raise DataError(
            f"{key}: {path} is a folder", hint=f"{key}=<run>/checkpoints/<best or last>.ckpt (the file)"
        )
    return existing_file(path, key)


def load_backbone_weights(
    model: nn.Module, path: str | Path, key: str = "backbone.weights", require_resflex: bool = False
) -> LoadReport:
    """Load a weights file or resflex checkpoint into a timm model built with ``num_classes=0``.

    Accepts a timm/torchvision-style state dict (``.safetensors``/``.pth``) or a
    resflex Lightning checkpoint (its ``model.backbone.model.*`` tensors are
    taken). Raises when *no* tensor matches: that is always a wrong file or a
    wrong ``backbone.name``, never something to train through.
    """
    path = resflex_checkpoint(path, key) if require_resflex else existing_file(path, key)
    hint = UNREADABLE_HINT if require_resflex else UNREADABLE_WEIGHTS_HINT  # a run's checkpoint, or any file
    state = state_dict_of(safe_load(path, what=key, unreadable_hint=hint), path)
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
        raise ConfigError(
            f"{key}: no tensor of {path} matches backbone {type(model).__name__} "
            f"({len(state)} tensors in the file, e.g. {_short(sorted(state), 3)})",
            hint="is backbone.name the architecture the file was trained with? (a resflex run's "
            "backbone.name is in its .hydra/config.yaml)",
        )
    return report


def load_head_from_checkpoint(
    classifier: HeadedClassifier, path: str | Path, key: str = "backbone.init_from"
) -> LoadReport:
    """Load pooling and linear head of a resflex checkpoint into an ``ImageClassifier``.

    When the class count differs, the linear head keeps its fresh initialisation
    (and the report says so); pooling parameters (GeM's ``p``) still load.
    """
    path = resflex_checkpoint(path, key)
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


def init_head_from_checkpoint(classifier: HeadedClassifier) -> LoadReport | None:
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
