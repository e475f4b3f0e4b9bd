"""The layout of a run folder: where training leaves each file, and the plain readers of them.

``<run>/.hydra/config.yaml`` (the composed config; Hydra also saves ``overrides.yaml`` and
``hydra.yaml`` there), ``<run>/.hydra/original/`` (the config and overrides the run was
started with: Hydra rewrites ``.hydra/`` at every start, a resume's included, so training
keeps this copy to check a resume against), ``<run>/checkpoints/*.ckpt``, ``<run>/metrics.json``
(the run's record) and ``<run>/classes.json`` (its class names). Only this module and
:mod:`resflex.run` (which gives the files their meaning: the config in today's layout, the
weights, the classes) name those files; ``tests/test_run.py`` fails on a new reader.

Why a module of its own: the sweep summary and the sweep folder naming read run folders on
machines without torch or Hydra, so this imports neither (checkpoint checks import torch
when they run); and ``ckpt_path`` — a checkpoint, a run folder, ``last`` to resume — is
resolved here, where the folder's layout is known.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from resflex.errors import ConfigError, DataError

log = logging.getLogger("resflex")

#: where Hydra saves the composed config and the command of a run, inside the run folder
HYDRA_DIR = ".hydra"
CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.yaml"
HYDRA_FILE = "hydra.yaml"
#: ``<run>/.hydra/original/{config,overrides}.yaml``: what the run was started with, kept across resumes
ORIGINAL_DIR = "original"
#: the run's record (written by :mod:`resflex.training.results`) and its class names (model card)
METRICS_FILE = "metrics.json"
CLASSES_FILE = "classes.json"

# ---- the run folder's files ----------------------------------------------------------------------


def hydra_file(run_dir: str | Path, name: str = CONFIG_FILE) -> Path:
    """``<run>/.hydra/<name>``: the composed config (default), ``overrides.yaml`` or ``hydra.yaml``."""
    return Path(run_dir) / HYDRA_DIR / name


def original_file(run_dir: str | Path, name: str = CONFIG_FILE) -> Path:
    """``<run>/.hydra/original/<name>``: the config (default) or ``overrides.yaml`` the run started with."""
    return Path(run_dir) / HYDRA_DIR / ORIGINAL_DIR / name


def save_original(run_dir: str | Path, config: Any, overrides: list[str]) -> None:
    """Keep what a run was started with (``config`` unresolved, as Hydra saves it), for later resumes."""
    folder = original_file(run_dir).parent
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, folder / CONFIG_FILE, resolve=False)
    OmegaConf.save(OmegaConf.create([str(o) for o in overrides]), folder / OVERRIDES_FILE)


def read_original(run_dir: str | Path) -> tuple[dict[str, Any] | None, list[str] | None]:
    """(config unresolved, overrides) the run was started with; None for either when absent or
    unreadable (a run folder from before this copy was kept, or one cut short while writing it)."""
    config: dict[str, Any] | None = None
    overrides: list[str] | None = None
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(original_file(run_dir)), resolve=False)
        config = {str(k): v for k, v in loaded.items()} if isinstance(loaded, dict) else None
    except Exception:
        config = None
    try:
        overrides = [str(o) for o in OmegaConf.load(original_file(run_dir, OVERRIDES_FILE)) or []]
    except Exception:
        overrides = None
    return config, overrides


def restore_hydra_files(run_dir: str | Path) -> None:
    """Put the original config and overrides back into ``<run>/.hydra/``, which the refused resume's
    Hydra start has just rewritten (the folder's checkpoints are still the original run's)."""
    for name in (CONFIG_FILE, OVERRIDES_FILE):
        source, target = original_file(run_dir, name), hydra_file(run_dir, name)
        if source.is_file() and target.parent.is_dir():
            shutil.copyfile(source, target)


def checkpoints_dir(run_dir: str | Path) -> Path:
    """``<run>/checkpoints``: where a run's ``best-*.ckpt`` and ``last.ckpt`` are."""
    return Path(run_dir) / "checkpoints"


def has_checkpoints(run_dir: str | Path) -> bool:
    """The run folder holds a checkpoint (any ``*.ckpt``, readable or not)."""
    folder = checkpoints_dir(run_dir)
    return folder.is_dir() and any(folder.glob("*.ckpt"))


def is_unset(ckpt_path: Any) -> bool:
    """``ckpt_path`` left out (``None``, ``""``, ``null``): the run starts from scratch."""
    return ckpt_path is None or str(ckpt_path) in ("", "None", "null")


def checkpoint_run_folder(ckpt: str | Path) -> Path:
    """The run folder a checkpoint belongs to: ``<run>`` for ``<run>/checkpoints/x.ckpt``, else its folder."""
    parent = Path(str(ckpt)).expanduser().resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def is_run_folder(folder: str | Path) -> bool:
    """A folder training wrote (or is writing): it has ``metrics.json`` or ``.hydra/``."""
    return (Path(folder) / METRICS_FILE).is_file() or (Path(folder) / HYDRA_DIR).is_dir()


def find_run_folders(root: str | Path) -> list[Path]:
    """Every training run folder under ``root`` (``.hydra/`` ones first, then those with only a
    record); the folders of ``eval.py``, ``predict.py`` and ``export.py`` (under ``logs/`` too) are
    not training runs (:func:`is_other_task`)."""
    root = Path(root)
    found = sorted(p.parent for p in root.rglob(HYDRA_DIR) if p.is_dir())
    folders = [folder for folder in found if not is_other_task(folder)]
    return folders + sorted(p.parent for p in root.rglob(METRICS_FILE) if p.parent not in found)


def is_other_task(folder: Path) -> bool:
    """A Hydra folder whose config has neither a ``model`` nor a ``backbone`` node: written by
    ``eval.py``, ``predict.py`` or ``export.py``, not by training (a config that cannot be read
    counts as training's)."""
    try:
        config = OmegaConf.load(hydra_file(folder))
    except Exception:
        return False
    return isinstance(config, DictConfig) and "model" not in config and "backbone" not in config


def find_run_config(ckpt: str | Path) -> Path | None:
    """``<run>/.hydra/config.yaml`` for ``<run>/checkpoints/x.ckpt`` (or ``<run>/x.ckpt``)."""
    ckpt = Path(str(ckpt)).expanduser().resolve()
    for folder in (ckpt.parent.parent, ckpt.parent):
        if hydra_file(folder).is_file():
            return hydra_file(folder)
    return None


def load_record(run_dir: str | Path) -> dict[str, Any] | None:
    """``<run>/metrics.json``; None when there is none yet; raises ``OSError``/``ValueError`` when it
    cannot be read (the sweep summary reports that)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if isinstance(record, dict) else {}


def read_record(run_dir: str | Path | None) -> dict[str, Any]:
    """``<run>/metrics.json`` as a dict, ``{}`` when absent or unreadable: a run without a record still
    opens, it just has nothing to say about itself."""
    if run_dir is None:
        return {}
    try:
        return load_record(run_dir) or {}
    except (OSError, ValueError):
        return {}


def read_overrides(run_dir: str | Path) -> list[str] | None:
    """The run's command-line overrides (``.hydra/overrides.yaml``); None when absent or unreadable."""
    path = hydra_file(run_dir, OVERRIDES_FILE)
    if not path.is_file():
        return None
    try:
        return [str(o) for o in OmegaConf.load(path) or []]
    except Exception:
        return None


def read_sweep_overrides(sweep_dir: str | Path) -> list[str] | None:
    """A sweep's command-line overrides as Hydra saved them (``<sweep>/multirun.yaml``); None when
    not written (yet) or unreadable."""
    try:
        return [str(o) for o in OmegaConf.load(Path(sweep_dir) / "multirun.yaml").hydra.overrides.task]
    except Exception:
        return None


def read_classes(run_dir: str | Path | None) -> list[str] | None:
    """``<run>/classes.json`` (written with the model card when training ends); None when absent."""
    path = Path(run_dir) / CLASSES_FILE if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def run_cwd(folder: str | Path) -> Path | None:
    """The folder the run was started in (``.hydra/hydra.yaml``'s ``hydra.runtime.cwd``); None when
    not recorded."""
    path = hydra_file(folder, HYDRA_FILE)
    try:
        cwd = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.cwd", default=None)
    except Exception:  # no file, or one that does not parse: nothing recorded
        return None
    return Path(str(cwd)) if cwd else None


def hydra_job_num(folder: str | Path) -> str | None:
    """The Hydra job number a sweep folder was written by (``.hydra/hydra.yaml``); None when not yet."""
    path = hydra_file(folder, HYDRA_FILE)
    if not path.exists():
        return None
    return str(OmegaConf.select(OmegaConf.load(path), "hydra.job.num", default=None))


# ---- the run's checkpoints: what ckpt_path names --------------------------------------------------


#: the checkpoint training keeps current (``callbacks.model_checkpoint.save_last``; resume reads it)
LAST_CHECKPOINT = "last.ckpt"


def best_checkpoint_name(record: dict[str, Any]) -> str | None:
    """The file name of the run's best checkpoint (``metrics.json``'s ``best.checkpoint``); None if none."""
    best = record.get("best") if isinstance(record, dict) else None
    path = best.get("checkpoint") if isinstance(best, dict) else None
    return Path(str(path)).name if path else None


def run_checkpoint(run_dir: str | Path, record: dict[str, Any] | None = None) -> tuple[Path, str]:
    """The checkpoint a run folder stands for, and why, without opening it: the run's best checkpoint
    (by ``callbacks.model_checkpoint.monitor``, as its ``metrics.json`` records it) when that file is in
    ``<run>/checkpoints/``, else ``checkpoints/last.ckpt``.

    The best one, because it is the checkpoint the run's test, its ``val/*`` numbers after fit and its
    model card are of; ``last.ckpt`` is what resuming continues from.
    """
    run_dir = Path(run_dir)
    folder = run_dir / "checkpoints"
    record = read_record(run_dir) if record is None else record
    name = best_checkpoint_name(record)
    monitor = str((record.get("best") or {}).get("monitor") or "val/acc")
    if name is None:
        return folder / LAST_CHECKPOINT, "the run records no best checkpoint"
    if not (folder / name).is_file():
        return folder / LAST_CHECKPOINT, f"its best checkpoint {name} is not there"
    return folder / name, f"the run's best checkpoint by {monitor}"


def measured_on(record: dict[str, Any], split: str) -> str | None:
    """The file name of the checkpoint whose weights gave ``metrics.json``'s final ``<split>/*`` numbers.

    The record's ``measured_on`` says it (written since it exists); an older record's are taken to
    be its best checkpoint's (what its test and its validation after fit ran on). None: not known.
    """
    entry = (record.get("measured_on") or {}).get(split) if isinstance(record, dict) else None
    if isinstance(entry, dict) and entry.get("checkpoint"):
        return str(entry["checkpoint"])
    return best_checkpoint_name(record)


def metrics_of_checkpoint(
    record: dict[str, Any], checkpoint: str | Path | None, same_as: Collection[str] = ()
) -> tuple[dict[str, Any], dict[str, str]]:
    """``metrics.json``'s metrics as they apply to ``checkpoint``: a split's ``<split>/*`` numbers
    measured on another checkpoint of the run (its accuracy per size, so its robust range) left out.

    Returns (metrics, {split: the file its numbers are of} for each split left out). ``checkpoint``
    None: every metric. A split whose checkpoint is not known is kept, and so is one measured on a
    file in ``same_as`` (names of files holding the same weights: a best epoch that was the last).
    """
    metrics = dict(record.get("metrics") or {}) if isinstance(record, dict) else {}
    if checkpoint is None:
        return metrics, {}
    names = {Path(str(checkpoint)).name, *same_as}
    other = {}
    for split in ("val", "test"):
        source = measured_on(record, split)
        if source is not None and source not in names and any(k.startswith(f"{split}/") for k in metrics):
            other[split] = source
    kept = {k: v for k, v in metrics.items() if k.split("/", 1)[0] not in other}
    return kept, other


def resolve_checkpoint_path(path: str | Path, key: str = "ckpt_path") -> Path:
    """A checkpoint file, or a run folder (→ its best checkpoint, else ``checkpoints/last.ckpt``);
    one-line error when missing.

    A run folder (or its ``checkpoints/`` folder) stands for the checkpoint
    :func:`run_checkpoint` names: the best one its ``metrics.json`` records, else
    ``last.ckpt``; one info line says which file and why. When that file is unreadable,
    ``last.ckpt``, then the newest readable checkpoint beside it is taken, with a warning
    naming both files (the same fallback as ``ckpt_path=last`` in training,
    :func:`resolve_resume_checkpoint`). A file named explicitly is returned as it is: reading
    it (:func:`open_run`) says why it cannot be used.
    """
    from resflex.models.checkpoint import checkpoint_problem

    if path is None or str(path) in ("", "None", "null"):
        raise ConfigError(f"{key} is not set", hint=f"pass {key}=/path/to/run/checkpoints/last.ckpt")
    candidate = Path(str(path)).expanduser()
    if candidate.is_dir():
        folder = candidate / "checkpoints" if (candidate / "checkpoints").is_dir() else candidate
        run_dir = candidate if folder != candidate else candidate.parent
        preferred, why = run_checkpoint(run_dir)
        preferred = folder / preferred.name
        if preferred.name != LAST_CHECKPOINT:
            problem = checkpoint_problem(preferred)
            if problem is None:
                log.info("%s: %s, %s (a run folder's checkpoint)", key, preferred, why)
                return preferred
            log.warning("%s: %s (%s) is unreadable (%s); trying last.ckpt", key, preferred, why, problem)
            preferred, why = folder / LAST_CHECKPOINT, "its best checkpoint is unreadable"
        chosen = _last_or_newest_readable(preferred, key)
        if chosen is not None:
            if chosen == preferred:
                log.info("%s: %s (%s)", key, chosen, why)
            return chosen
        if preferred.is_file():  # unreadable, and nothing readable beside it: reading it says why
            return preferred
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


def resolve_resume_checkpoint(ckpt_path: Any, run_dir: str | Path) -> str | None:
    """What training's ``ckpt_path`` resumes from: a readable file, a Lightning keyword, or ``None``.

    - ``None``/``""``/``"null"``: ``None`` (start from scratch).
    - ``"hpc"``, ``"registry"``: passed through to Lightning; ``"best"`` is refused in one line
      (Lightning's keyword for testing a fitted model, not a file to resume from).
    - ``"last"``: ``<run_dir>/checkpoints/last.ckpt`` when it is readable; when it is
      missing or unreadable (cut short by a full disk or a killed copy), the newest
      readable ``*.ckpt`` of that folder, with a warning naming both files; when
      there is none, ``None`` — Lightning's own behaviour for ``"last"`` with nothing
      to resume (it warns and starts from scratch), with a log line saying so.
    - a path: it must exist (else :class:`ConfigError`) and be a readable, tensors-only
      checkpoint (else a one-line :class:`DataError` naming it).
    """
    if is_unset(ckpt_path):
        return None
    text = str(ckpt_path)
    if text == "best":
        raise ConfigError(
            "ckpt_path=best names no file to resume from (Lightning's keyword for testing a fitted model)",
            hint="ckpt_path=last resumes the run; backbone.init_from=<run> starts another from its weights",
        )
    if text in ("hpc", "registry"):
        return text
    if text == "last":
        folder = Path(str(run_dir)).expanduser() / "checkpoints"
        preferred = folder / "last.ckpt"
        chosen = _last_or_newest_readable(preferred, "ckpt_path=last")
        if chosen is not None:
            return str(chosen)
        broken = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
        if broken:
            log.warning(
                "ckpt_path=last: no readable checkpoint in %s (%s unreadable); training starts from scratch",
                folder,
                ", ".join(broken),
            )
        elif not folder.is_dir() and not _may_start_fresh():
            # a folder made for this run (a new timestamp): nothing of an earlier run can be here
            log.warning(
                "ckpt_path=last: %s is this run's new folder, with no checkpoint: training starts from "
                "scratch (to resume a run, give its folder: hydra.run.dir=<run>)",
                folder.parent,
            )
        else:
            log.info("ckpt_path=last: no checkpoint in %s yet; training starts from scratch", folder)
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path does not exist: {path}",
            hint="pass an existing .ckpt file, or ckpt_path=last with the same hydra.run.dir",
        )
    from resflex.models.checkpoint import check_checkpoint

    check_checkpoint(path, action="resume from")
    return str(path)


def _may_start_fresh() -> bool:
    """Whether ``ckpt_path=last`` with nothing to resume is the expected first start: a sweep's job or
    a SLURM job (both pass ``ckpt_path=last`` so that a requeued job resumes), not a single run."""
    if os.environ.get("SLURM_JOB_ID"):
        return True
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _last_or_newest_readable(preferred: Path, key: str) -> Path | None:
    """``preferred`` when readable, else the newest readable ``*.ckpt`` beside it (with a warning)."""
    from resflex.models.checkpoint import checkpoint_problem

    if preferred.is_file():
        problem = checkpoint_problem(preferred)
        if problem is None:
            return preferred
        state = f"is unreadable ({problem})"
    else:
        state = "is missing"
    folder = preferred.parent
    others = [p for p in folder.glob("*.ckpt") if p != preferred and p.is_file()] if folder.is_dir() else []
    for other in sorted(others, key=lambda p: (p.stat().st_mtime, p.name), reverse=True):
        if checkpoint_problem(other) is None:
            log.warning(
                "%s: %s %s; using %s instead, the newest readable checkpoint of the run",
                key,
                preferred,
                state,
                other,
            )
            return other
    return None
