"""Naming of sweep job folders, so ``tensorboard --logdir <sweep>`` labels runs by what differs.

Hydra names a job folder by ``hydra.job.override_dirname`` (``backbone=resnet18,pooling=avg``).
Used raw, that name breaks in three cases this module handles:

* empty (a one-job sweep with no overrides, or only excluded keys): the job
  would write into the sweep folder itself -> ``job<N>`` instead;
* a ``/`` in a value (``backbone.name=hf-hub:timm/resnet18``) would nest folders
  -> replaced by ``_``, as are whitespace and control characters;
* longer than 160 bytes (a file name may have 255) -> cut, with a short hash
  that keeps the names distinct; two jobs that still share a name get ``-job<N>``.

Hydra's ``override_dirname`` also lists the overrides every job shares
(``data=fashion_mnist trainer=gpu ...`` typed once on the command line), which
buries what the sweep varies. So the name keeps only the *swept* keys: those
given with sweep syntax on the command line (``pooling=avg,max``,
``range(...)``, ``choice(...)``) and those in ``hydra.sweeper.params``
(Optuna). Where they cannot be found (another launcher's process), the full
``override_dirname`` is used.

The resolver ``${resflex.job_dir:${hydra.job.override_dirname},${hydra.job.num}}``
is registered by every console entry point (:func:`resflex.config.prepare_cli`) before Hydra composes.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from omegaconf import OmegaConf

from resflex.run_folder import HYDRA_DIR, hydra_job_num, read_sweep_overrides

MAX_NAME = 160
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]|\s")


def job_dir_name(override_dirname: str | None, job_num: int | str = 0) -> str:
    """A safe, readable folder name for one sweep job (see module docstring)."""
    name = _UNSAFE.sub("_", str(override_dirname or "")).strip(".")
    if not name:
        return f"job{job_num}"
    if len(name.encode()) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = name.encode()[: MAX_NAME - 9].decode(errors="ignore") + "-" + digest
    return name


def swept_keys(argv: Sequence[str], sweeper_params: Iterable[str] = ()) -> set[str]:
    """Keys that vary between the jobs of a sweep: sweep-syntax overrides in ``argv`` + sweeper params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = {str(k) for k in sweeper_params}
    parser = OverridesParser.create()
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:  # not an override Hydra would accept: Hydra reports it, not us
            continue
        if override.is_sweep_override():
            keys.add(override.key_or_group)
        else:  # a fixed value on the command line pins a searched parameter (Optuna)
            keys.discard(override.key_or_group)
    return keys


def swept_text_keys(argv: Sequence[str]) -> set[str]:
    """Swept keys whose values are not all numbers (``color_jitter=null,0.4``, ``size=32,[24,32]``):
    their HPARAMS column is text in every job, so one column never mixes numbers and text."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    parser = OverridesParser.create()
    keys = set()
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:
            continue
        value = override.value() if override.is_sweep_override() else None
        if isinstance(value, ChoiceSweep):
            items = [getattr(v, "value", v) for v in value.list]
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in items):
                keys.add(override.key_or_group)
    return keys


def sweep_dir() -> Path | None:
    """The running Hydra multirun's folder (its jobs are folders in it); None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(str(HydraConfig.get().sweep.dir))


#: the command line this process was started with, kept by :func:`remember_launch_argv` before Hydra
#: runs: an Optuna sweep writes no ``multirun.yaml``, and its jobs see ``sys.argv`` as their own
#: overrides (each searched key pinned to its value), so the sweep's own command is only here
_LAUNCH_ARGV: list[str] | None = None


def remember_launch_argv(argv: Sequence[str]) -> None:
    """Keep the command line (``sys.argv[1:]``) for :func:`_sweep_argv`; the entry point calls it once."""
    global _LAUNCH_ARGV
    _LAUNCH_ARGV = [str(a) for a in argv]


def _sweep_argv() -> list[str] | None:
    """The sweep's command-line overrides as Hydra saved them (``<sweep>/multirun.yaml``), else as the
    entry point received them (:func:`remember_launch_argv`), else this process's; None outside a Hydra
    multirun. A job's own ``sys.argv`` may be its overrides alone (a DDP job's ranks, another
    launcher's process, an Optuna trial)."""
    folder = sweep_dir()
    if folder is None:
        return None
    saved = read_sweep_overrides(folder)
    if saved is not None:
        return saved
    return _LAUNCH_ARGV if _LAUNCH_ARGV is not None else sys.argv[1:]  # not written (yet)


def sweep_resume_command() -> str | None:
    """The shell command that continues the running sweep: its overrides (any ``ckpt_path`` and
    ``hydra.sweep.dir`` dropped) plus ``ckpt_path=last hydra.sweep.dir=<sweep>``. Each job then keeps a
    completed run as it is, resumes an interrupted one and starts one that never ran
    (:func:`resflex.train.completed_record`); None outside a sweep."""
    from resflex.resume_check import resume_command
    from resflex.runtime import hydra_node

    argv, folder = _sweep_argv(), sweep_dir()
    if argv is None or folder is None:
        return None
    config_name = OmegaConf.select(hydra_node(), "job.config_name", default=None)
    return resume_command(argv, folder, "last", config_name, sweep=True)


def current_sweep_text_keys() -> set[str]:
    """:func:`swept_text_keys` of the running sweep (empty outside one)."""
    argv = _sweep_argv()
    return swept_text_keys(argv) if argv is not None else set()


def current_swept_keys() -> set[str] | None:
    """The keys this Hydra multirun varies between its jobs (:func:`swept_keys` of :func:`_sweep_argv`);
    None outside a sweep or where they cannot be found."""
    from resflex.runtime import hydra_node

    argv = _sweep_argv()
    if argv is None:
        return None
    params = OmegaConf.select(hydra_node(), "sweeper.params", default=None) or {}
    return swept_keys(argv, params.keys()) or None


def swept_dirname(override_dirname: str | None) -> str | None:
    """The job's ``override_dirname`` cut down to the swept keys, in Hydra's format; None if unknown."""
    from hydra.core.hydra_config import HydraConfig

    from resflex.runtime import hydra_node

    if not HydraConfig.initialized():
        return override_dirname
    hc = hydra_node()
    params = OmegaConf.select(hc, "sweeper.params", default=None) or {}
    argv = _sweep_argv()
    keys = swept_keys(argv if argv is not None else sys.argv[1:], params.keys())
    if not keys:  # a one-job sweep (-m pooling=avg): nothing differs, the folder is job<N>
        return "" if argv is not None else override_dirname
    conf = hc.job.config.override_dirname
    excluded = set(conf.exclude_keys)
    items = []
    for item in hc.overrides.task:
        key, _, value = str(item).partition("=")
        if key.lstrip("+~") in keys and key.lstrip("+~") not in excluded:
            items.append(f"{key}{conf.kv_sep}{value}")
    return conf.item_sep.join(sorted(items)) or override_dirname


def job_folder(override_dirname: str | None, job_num: int | str = 0) -> str:
    """The resolver: swept keys only (see module docstring), made safe by :func:`job_dir_name`.

    A search can draw the same values twice (Optuna over categorical choices):
    a name whose folder another job already used gets ``-job<N>`` appended.
    """
    from hydra.core.hydra_config import HydraConfig

    try:
        name = job_dir_name(swept_dirname(override_dirname), job_num)
        if HydraConfig.initialized():
            sweep_dir = Path(str(HydraConfig.get().sweep.dir))
            if (sweep_dir / name / HYDRA_DIR).exists() and not _same_job(sweep_dir / name, job_num):
                name = f"{name}-job{job_num}"
        return name
    except Exception:  # naming must never stop a sweep
        return job_dir_name(override_dirname, job_num)


def _same_job(folder: Path, job_num: int | str) -> bool:
    """The folder is this very job's: a requeued SLURM job, or another DDP rank of it (same job number).

    Under submitit every rank of a multi-GPU job resolves the folder name, and a
    preempted job is requeued with its number: both must land in the job's folder.
    """
    saved = hydra_job_num(folder)
    return saved is None or saved == str(job_num)  # None: the job's rank 0 is writing it right now


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("resflex.job_dir"):
        OmegaConf.register_new_resolver("resflex.job_dir", job_folder)
