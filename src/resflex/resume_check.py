"""Resuming a run: the same experiment or a one-line refusal, and the command that resumes it.

A checkpoint holds the weights, the optimizer and the loops' positions, not the config. So
``ckpt_path=last hydra.run.dir=<run>`` alone used to continue a 600-image run's checkpoint on
the 3000-image default data with the default epochs, without a word, and Hydra then replaced
the run folder's ``.hydra/overrides.yaml`` with ``[ckpt_path=last]``. Hence:

- :func:`resume_command`: what an interrupted run prints, its own overrides plus
  ``ckpt_path=last hydra.run.dir=<run>``, each quoted for the shell.
- :func:`prepare_run_folder`: a run that starts (not one that continues) keeps the config and
  overrides it was started with in ``<run>/.hydra/original/``
  (:func:`resflex.run_folder.save_original`). Hydra rewrites ``.hydra/config.yaml`` before the
  task runs, a resume's included, so that file cannot say what the checkpoint was trained with.
- A resume from a checkpoint of a run folder that holds that copy is compared with it
  (:func:`config_differences`): a difference outside :data:`MAY_CHANGE_ON_RESUME` is refused in
  one line naming the first keys, with the command that resumes with the run's own overrides;
  the folder's ``.hydra/`` files and record stay the original run's. ``resume_check=false``
  resumes anyway (the differences are logged). A folder from before the copy was kept is
  compared by the overrides of its record (``metrics.json``).
- A smaller ``data.batch_size`` (a NaFlex run's ``resolution.tokens_per_batch``) with more
  ``trainer.accumulate_grad_batches``, the same images (tokens) per optimizer step, is the same
  experiment (:func:`same_work_per_step`): what a run that ran out of memory is told to resume with.
  It is logged, not refused; the sampler finishes an interrupted epoch on the plan it started
  (:func:`resflex.data.sampler.resume_position`).
- The record of a continued run keeps the overrides it was started with (``overrides``) and
  lists each resume's own (``resumes``).
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from resflex.errors import ConfigError
from resflex.run_folder import (
    checkpoint_run_folder,
    has_checkpoints,
    is_unset,
    read_original,
    read_record,
    restore_hydra_files,
    save_original,
)
from resflex.validation import override_arg

log = logging.getLogger("resflex")

#: config keys (and everything under them) a resume may change: where the files are, how long the run
#: goes, and what is logged, shown, saved or measured, not what is trained. Everything else (data,
#: model, backbone, pooling, resolution schedule, optimizer, scheduler, fine-tuning, seed, devices,
#: precision, batches per epoch...) must equal the run's own, or the checkpoint would continue a
#: different experiment (and the sampler's mid-epoch position would be wrong).
MAY_CHANGE_ON_RESUME = (
    # what to resume from, the check itself, where the run's files are
    "ckpt_path",
    "resume_check",
    "paths",
    "hydra",
    "trainer.default_root_dir",
    # how long: extend (or shorten) a run; logged, since schedules over the run's length follow it
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.min_epochs",
    "trainer.min_steps",
    # what is logged, shown, saved and measured
    "logger",
    "callbacks",
    "eval",
    "test_after_fit",
    "data.eval_batch_size",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps",
    "trainer.limit_test_batches",
    # loader processes: each sample's augmentation is seeded by (seed, epoch, index), not by worker
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.prefetch_factor",
)
#: changes the run is told about: the LR schedule (and a progressive resolution schedule) follow the length
LENGTH_KEYS = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time")
#: a step's batch budget (images; a NaFlex run's tokens) and its accumulation: may change together
#: when their product does not (:func:`same_work_per_step`)
BUDGET_KEYS = {"data.batch_size": "images", "resolution.tokens_per_batch": "tokens"}
ACCUMULATION_KEY = "trainer.accumulate_grad_batches"
#: Lightning's own ``ckpt_path`` keywords: a checkpoint of this run folder
_LIGHTNING_KEYWORDS = ("best", "hpc", "registry")
_UNSET = object()
_SHOWN = 3  # differing keys named in the refusal


class ResumeRefused(ConfigError):
    """A resume whose config differs from the run's own; the run folder is left as it was."""


def override_key(override: str) -> str:
    """``a.b`` of ``a.b=1``, ``+a.b=1``, ``++a.b=1`` and ``~a.b``."""
    return str(override).split("=", 1)[0].lstrip("+~")


def may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE_ON_RESUME)


def task_config(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` unresolved, without the ``hydra`` node: what Hydra saves as ``.hydra/config.yaml``."""
    container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items() if k != "hydra"}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping) and node:
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: node}


def config_differences(saved: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, new value)`` for every leaf that differs, in the new config's order
    (a key only one side has: the other is unset)."""
    old, now = _flatten(saved), _flatten(new)
    keys = [*now, *(k for k in old if k not in now)]
    pairs = [(k, old.get(k, _UNSET), now.get(k, _UNSET)) for k in keys]
    return [(k, before, after) for k, before, after in pairs if before != after]


def override_differences(saved: Iterable[str], new: Iterable[str]) -> list[tuple[str, Any, Any]]:
    """The same from two override lists (a run folder from before the original config was kept)."""

    def as_dict(items: Iterable[str]) -> dict[str, Any]:
        return {override_key(o): (str(o).split("=", 1)[1] if "=" in str(o) else None) for o in items}

    return config_differences(as_dict(saved), as_dict(new))


class BatchSplit(NamedTuple):
    """A step's batch budget split over other accumulation steps: ``key`` from ``budget`` x ``accumulate``
    to ``new_budget`` x ``new_accumulate``."""

    key: str
    budget: int
    accumulate: int
    new_budget: int
    new_accumulate: int

    def describe(self) -> str:
        unit = BUDGET_KEYS[self.key]
        per_step = self.budget * self.accumulate
        return (
            f"resuming with {self.key}={self.new_budget} {ACCUMULATION_KEY}={self.new_accumulate} (the run "
            f"was started with {self.budget} and {self.accumulate}): the same {per_step} {unit} per "
            f"optimizer step, in batches of {self.new_budget}"
        )


def same_work_per_step(saved: Mapping[str, Any], new: Mapping[str, Any]) -> BatchSplit | None:
    """How the batch budget was split over other accumulation steps, when one budget key
    (:data:`BUDGET_KEYS`) and the accumulation differ with the same product; None otherwise (no
    change, two budgets changed, values that are not plain integers, or another product). A NaFlex
    run with a token budget ignores ``data.batch_size`` for its batches: that key does not count there."""
    old, now = _flatten(saved), _flatten(new)
    changed = [key for key in BUDGET_KEYS if old.get(key) != now.get(key)]
    if len(changed) != 1:
        return None
    key = changed[0]
    if key == "data.batch_size" and now.get("resolution.tokens_per_batch") is not None:
        return None
    values = [old.get(key), old.get(ACCUMULATION_KEY, 1), now.get(key), now.get(ACCUMULATION_KEY, 1)]
    counts = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    if len(counts) != len(values):
        return None
    split = BatchSplit(key, *counts)
    if split.budget * split.accumulate != split.new_budget * split.new_accumulate:
        return None
    return split


def _shown(value: Any) -> str:
    return "unset" if value is _UNSET else str(value)


def launch_command() -> list[str]:
    """How this run was started: ``python <script>.py`` or an installed entry point (``resflex-train``)."""
    script = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if script.endswith(".py"):
        return ["python", script]
    if Path(script).name.startswith("resflex-"):
        return [Path(script).name]
    return ["python", "scripts/train.py"]


def resume_command(
    overrides: Sequence[str],
    run_dir: str | Path,
    ckpt: str = "last",
    config_name: str | None = None,
    sweep: bool = False,
) -> str:
    """The shell command that resumes a run: its overrides (any ``ckpt_path`` and run folder dropped)
    plus ``ckpt_path=<ckpt> hydra.run.dir=<run_dir>``, each quoted for the shell. ``sweep``: a sweep's
    (``-m``, ``hydra.sweep.dir=<run_dir>``; the ``-m`` flags and ``--config-name`` of ``overrides``
    given once)."""
    folder_key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    flags = ("-m", "--multirun")
    kept = [
        str(o) for o in overrides if str(o) not in flags and override_key(o) not in ("ckpt_path", folder_key)
    ]
    head = [*launch_command(), *(["-m"] if sweep else [])]
    if config_name and config_name != "train" and not any(o.startswith("--config-name") for o in kept):
        head.append(f"--config-name={config_name}")
    tail = [
        *(shlex.quote(o) for o in kept),
        override_arg("ckpt_path", ckpt),
        override_arg(folder_key, run_dir),
    ]
    return " ".join([*head, *tail])


def current_overrides() -> tuple[list[str], str | None]:
    """This run's command-line overrides and config name (Hydra's); ``([], None)`` outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    from resflex.runtime import hydra_node

    if not HydraConfig.initialized():
        return [], None
    hc = hydra_node()
    return [str(o) for o in hc.overrides.task], hc.job.get("config_name")


def started_with(folder: Path) -> tuple[dict[str, Any] | None, list[str] | None]:
    """(config, overrides) the run of ``folder`` was started with: its kept copy, else (a folder from
    before the copy was kept) no config and its record's overrides; (None, None) when neither exists."""
    saved, original = read_original(folder)
    if saved is not None:
        return saved, original or []
    recorded = read_record(folder).get("overrides")
    return None, ([str(o) for o in recorded] if isinstance(recorded, list) else None)


def _source_folder(ckpt_path: str, output_dir: Path) -> Path:
    return output_dir if ckpt_path in _LIGHTNING_KEYWORDS else checkpoint_run_folder(ckpt_path)


def check_resume(cfg: DictConfig, ckpt_path: str, output_dir: str | Path, overrides: Sequence[str]) -> None:
    """Refuse (:class:`ResumeRefused`) a resume whose config differs from that of the run that wrote the
    checkpoint in anything but :data:`MAY_CHANGE_ON_RESUME` and a batch split over more or fewer
    accumulation steps (:func:`same_work_per_step`); log the length and batch keys that changed.

    Nothing to compare with (a checkpoint outside a run folder, a folder without the copy or a
    record): nothing is checked.
    """
    if not isinstance(cfg.get("resume_check", True), bool):
        raise ConfigError(f"resume_check must be true or false, not {cfg.get('resume_check')!r}")
    output_dir = Path(output_dir)
    source = _source_folder(ckpt_path, output_dir)
    saved, original = started_with(source)
    split = None
    if saved is not None:
        new = task_config(cfg)
        differences = config_differences(saved, new)
        split = same_work_per_step(saved, new)
        if split is not None:
            differences = [d for d in differences if d[0] not in (split.key, ACCUMULATION_KEY)]
    elif original is not None:  # a folder from before the copy was kept: its record's overrides
        differences = override_differences(original, overrides)
    else:
        return
    refused = [(k, old, new) for k, old, new in differences if not may_change(k)]
    listed = ", ".join(f"{k} (was {_shown(old)}, now {_shown(new)})" for k, old, new in refused[:_SHOWN])
    more = f" and {len(refused) - _SHOWN} more" if len(refused) > _SHOWN else ""
    if not refused or not cfg.get("resume_check", True):
        if refused:
            log.warning("resume_check=false: resuming %s with another config: %s%s", ckpt_path, listed, more)
        if split is not None:
            log.warning(split.describe())
        for key, old, new in differences:
            if key in LENGTH_KEYS:
                log.warning(
                    "resuming with %s=%s (the run was started with %s): schedules over the run's length "
                    "(learning rate, a progressive resolution) follow the new one from here",
                    key,
                    _shown(new),
                    _shown(old),
                )
        return
    _, config_name = current_overrides()
    ckpt_arg = "last" if str(cfg.get("ckpt_path")) == "last" else ckpt_path
    command = resume_command(original or [], output_dir, ckpt_arg, config_name)
    if source.resolve() == output_dir.resolve():
        restore_hydra_files(output_dir)  # Hydra has just written the refused config there
    raise ResumeRefused(
        f"refusing to resume from {ckpt_path}: the config differs from the one the run was started with "
        f"in {listed}{more}",
        hint=f"resume with the run's own overrides: {command}; or add resume_check=false to resume "
        "with the new values",
    )


#: a record's statuses whose folder holds results (a run refused before saving anything holds none:
#: the fix-and-rerun loop may start again in its folder)
HELD_STATUSES = ("completed", "interrupted")


def held_run(output_dir: str | Path) -> str | None:
    """What ``output_dir`` holds that a new run there would mix with or overwrite (``completed run``,
    ``run with checkpoints``...), or None when it holds nothing to lose."""
    status = read_record(output_dir).get("status")
    if has_checkpoints(output_dir):
        return f"{status} run with checkpoints" if status else "run's checkpoints"
    return f"{status} run" if status in HELD_STATUSES else None


def refuse_new_run_in_held_folder(cfg: DictConfig, output_dir: str | Path, restore: bool = True) -> None:
    """A new run (``ckpt_path`` unset) in a folder that holds another run (:func:`held_run`: a
    ``hydra.run.dir`` typed again, a sweep run again into its ``hydra.sweep.dir``) is refused in one
    line, before anything is written: its events, checkpoints and record would have been mixed with
    that run's, and a refusal later would have replaced its record. Hydra has already rewritten
    ``.hydra/``: the kept copy goes back (``restore``: rank 0)."""
    if not is_unset(cfg.get("ckpt_path")):
        return
    held = held_run(output_dir)
    if held is None:
        return
    if restore:
        restore_hydra_files(output_dir)
    raise ResumeRefused(
        f"{output_dir} already holds a {held}: a new run there would mix its checkpoints, logs and "
        "record with that run's",
        hint="a new folder (leave hydra.run.dir or hydra.sweep.dir out), or ckpt_path=last to continue "
        "that run (a completed run is kept as it is)",
    )


def prepare_run_folder(
    cfg: DictConfig, ckpt_path: str | None, output_dir: str | Path, write: bool = True
) -> list[str] | None:
    """Check a resume (:func:`check_resume`), then keep what a run that starts here was started with.

    Returns the overrides the run was started with when this continues the run of ``output_dir``
    (its copy is kept as it is), else None (a new run here: the copy is written, when ``write``:
    rank 0 of a distributed run).
    """
    output_dir = Path(output_dir)
    overrides, _ = current_overrides()
    if ckpt_path is not None:
        check_resume(cfg, ckpt_path, output_dir, overrides)
        if _source_folder(ckpt_path, output_dir).resolve() == output_dir.resolve():
            saved, original = started_with(output_dir)
            if saved is not None or original is not None:
                return original
    if write:
        save_original(output_dir, task_config(cfg), overrides)
    return None


def resumes_so_far(output_dir: str | Path) -> list[list[str]]:
    """The overrides of each earlier resume of this run folder (its record's ``resumes``)."""
    resumes = read_record(output_dir).get("resumes")
    return [list(map(str, r)) for r in resumes if isinstance(r, list)] if isinstance(resumes, list) else []
