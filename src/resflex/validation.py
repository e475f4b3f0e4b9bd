"""Type and range checks of the scalar knobs, before any work starts.

Objects validate their own arguments when they are built (pooling levels,
sizes, probabilities, data roots, the optimizer, the LR schedule), each with
:func:`check_value` so every key reads the same one-line error. :data:`RULES`
covers the plain numbers that no resflex constructor owns — they go straight
into Lightning, where a wrong type would surface as a deep traceback
(``'<' not supported between 'str' and 'float'``) much later.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resflex.errors import ConfigError, DataError

if TYPE_CHECKING:  # omegaconf stays out of the benchmark's imports (it runs without Hydra)
    from omegaconf import DictConfig

Rule = tuple[str, type, Callable[[Any], bool], str]


def _share_or_count(value: float) -> bool:
    """Lightning's ``limit_*_batches``: a share in [0, 1] or a whole number of batches."""
    return 0 <= value <= 1 or (value > 1 and value == int(value))


RULES: tuple[Rule, ...] = (
    ("seed", int, lambda v: v >= 0, "an integer >= 0"),
    ("trainer.max_epochs", int, lambda v: v >= 1 or v == -1, "a positive integer (or -1)"),
    ("trainer.log_every_n_steps", int, lambda v: v >= 1, "a positive integer"),
    # read after fit, by the BatchNorm calibration: a typo must not cost the training
    ("eval.bn_calibration_batches", int, lambda v: v >= 1, "a positive integer"),
    # Lightning takes these as given: a string fails mid-fit ('>' not supported between 'str' and 'int'),
    # a negative accumulation or validation interval trains on without complaint
    ("trainer.max_steps", int, lambda v: v >= 1 or v == -1, "a positive integer (or -1: no limit)"),
    ("trainer.accumulate_grad_batches", int, lambda v: v >= 1, "a positive integer"),
    ("trainer.min_epochs", int, lambda v: v >= 0, "an integer >= 0 (or null)"),
    ("trainer.min_steps", int, lambda v: v >= 0, "an integer >= 0 (or null)"),
    ("trainer.gradient_clip_val", float, lambda v: v >= 0, "a number >= 0 (or null: no clipping)"),
    ("trainer.check_val_every_n_epoch", int, lambda v: v >= 1, "a positive integer (or null)"),
    ("trainer.num_sanity_val_steps", int, lambda v: v >= -1, "an integer >= 0 (or -1: all batches)"),
    *(
        (f"trainer.{key}", float, _share_or_count, "a share of the batches in [0, 1] or a number of batches")
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "overfit_batches")
    ),
)

#: keys that also accept a word instead of a number
WORDS: dict[str, tuple[str, ...]] = {}

#: Lightning's true/false/null keys whose default is null (the command line's switch check sees only
#: keys whose default is true or false); a word there is read as true by Lightning
NULLABLE_SWITCHES = (
    "trainer.enable_checkpointing",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.benchmark",
    "trainer.inference_mode",
    "trainer.detect_anomaly",
    "trainer.barebones",
    "trainer.sync_batchnorm",
)
#: Lightning's profiler names (or null; a ``_target_`` node builds any other profiler)
PROFILERS = ("simple", "advanced", "pytorch", "xla")


def _typed(value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        return None
    if kind is float and isinstance(value, int | float):
        return float(value)
    if kind is int and isinstance(value, int):
        return value
    return None


def check_value(key: str, value: Any, kind: type, ok: Callable[[Any], bool], allowed: str) -> Any:
    """``value`` as ``kind`` (an int is a float too; a bool is neither), or a one-line :class:`ConfigError`.

    The one rule for numbers, shared by :func:`validate_config` and the constructors that
    own their keys (the LR schedule, the optimizer), so every key reads the same error.
    """
    typed = _typed(value, kind)
    if typed is None or not ok(typed):
        raise ConfigError(
            f"{key}={value!r} is invalid: expected {allowed}", hint=f"e.g. fix {key} on the command line"
        )
    return typed


#: characters Hydra's grammar reads in an unquoted value (its UNQUOTED_CHAR, ID and ':'), no '$' or '*'
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_/\-+.%@?|:]+")


def override_arg(key: str, value: object) -> str:
    """``key=value`` as one shell word that Hydra reads back as ``value``, for commands printed to be
    copied: a sweep job's folder (``.../pooling=avg/checkpoints``) has an ``=`` Hydra's grammar
    refuses unquoted, a ``,`` would make a sweep of it, a space would split the word."""
    text = str(value)
    if not _PLAIN_VALUE.fullmatch(text):
        text = '"' + text.replace('"', '\\"') + '"'
    return shlex.quote(f"{key}={text}")


def check_references(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for a ``${key}`` whose key the config does not have.

    The usual cause is a group removed on the command line (``~pooling``) that another node reads
    (``model.net.pooling: ${pooling}``); OmegaConf's answer comes from wherever the node is first
    resolved, deep in the run, as a traceback. Other resolution errors (``${hydra:...}`` outside a
    Hydra job) are left to the code that reads the node.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationKeyError, OmegaConfBaseException

    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as exc:
        if not isinstance(exc, InterpolationKeyError):
            return
        reference = str(exc).splitlines()[0].replace("Interpolation key ", "").replace(" not found", "")
        raise ConfigError(
            f"{exc.full_key} reads {reference}, which this config does not have",
            hint="a group removed with ~ may be one the run needs: choose one of its options instead",
        ) from None


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first key whose value has the wrong type or range."""
    from omegaconf import OmegaConf

    check_references(cfg)
    for key, kind, ok, allowed in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None or value in WORDS.get(key, ()):
            continue
        check_value(key, value, kind, ok, allowed)
    for key in NULLABLE_SWITCHES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{key} must be true, false or null, got {value!r}", hint=f"{key}=true")
    profiler = OmegaConf.select(cfg, "trainer.profiler", default=None)
    if profiler is not None and not OmegaConf.is_config(profiler) and profiler not in PROFILERS:
        raise ConfigError(
            f"trainer.profiler={profiler!r} is not one of Lightning's profilers ({', '.join(PROFILERS)})",
            hint="trainer.profiler=simple",
        )
    seq_lens = OmegaConf.select(cfg, "eval.seq_lens", default=None)
    if seq_lens is not None:  # NaFlex runs read them; a typo in another run's config waits for no one
        lengths = seq_lens if isinstance(seq_lens, Sequence) and not isinstance(seq_lens, str) else [seq_lens]
        for length in lengths:
            check_value("eval.seq_lens", length, int, lambda v: v >= 1, "token counts >= 1 (a list, or null)")


def unwritable_reason(folder: Path) -> str | None:
    """Why nothing can be written in ``folder``, or None: the folder is made if missing and a probe
    file created and removed in it (a permission check alone passes for root on a read-only mount)."""
    probe = folder / ".resflex-probe"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_writable(output: Path, key: str = "output") -> None:
    """A one-line :class:`DataError`, before any work, when ``output`` cannot be written (a file where its
    folder should be, no permission, a read-only file system). Commands that write one file at the end
    (predict, export) call it first, so a bad path does not cost the whole run."""
    reason = unwritable_reason(output.parent)
    if reason is not None:
        raise DataError(
            f"cannot write {key}={output}: {reason}", hint=f"{key}=<a writable folder>/{output.name}"
        )


def check_writable_folder(folder: Path, key: str) -> None:
    """:func:`check_writable` for a folder the caller names by ``key``, the error naming the folder."""
    reason = unwritable_reason(folder)
    if reason is not None:
        raise DataError(f"cannot write {key}={folder}: {reason}", hint=f"{key}=<a writable folder>")
