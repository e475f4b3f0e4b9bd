"""A sweep's jobs as ``scripts/summarize.py`` sees them: each job folder read into a :class:`Job` (status,
overrides, metrics with the robustness summary filled in), and what the jobs share or not.

Apart from :mod:`resflex.summarize` (the table, the figure, the command) because reading job folders —
in every state a job can be in, while a sweep still runs — is its own concern, and both the table
and the figure build on it. Run files are read through :mod:`resflex.run_folder` only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resflex.errors import ResflexError
from resflex.robust_range import CURVE_STAGES, size_curve
from resflex.run_folder import METRICS_FILE, find_run_folders, is_run_folder, load_record, read_overrides
from resflex.training.robustness import summarize_sizes

RUNNING_WINDOW_S = 15 * 60  # a job folder touched this recently, without metrics.json, is running
RES_KEY = re.compile(r"^(val|test)/acc@(\d+)(?:x(\d+))?$")
#: the robustness summary columns, per split (the range's ends, as x of the main size, stay in metrics.json)
ROBUSTNESS_METRICS = ("acc_worst", "acc_mean_sizes", "acc_range")


@dataclass
class Job:
    """One row of the summary."""

    name: str
    path: Path
    status: str
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float | None = None
    error: str = ""

    def value(self, column: str) -> Any:
        if column == "img/s":
            return self.metrics.get("train/images_per_sec")
        if column == "time_s":
            return self.wall_time_s
        if column in self.overrides:
            return self.overrides[column]
        return self.metrics.get(column)


#: overrides that say how a job was launched, not what it trained: never a column ("ckpt_path=last" on
#: the jobs a continued sweep started, the folders), as Hydra leaves them out of job folder names
LAUNCH_KEYS = ("ckpt_path", "hydra.", "paths.")


def _parse_overrides(items: Sequence[str]) -> dict[str, str]:
    parsed = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.lstrip("+~")
        if sep and not key.startswith(LAUNCH_KEYS):
            parsed[key] = value
    return parsed


def _latest_mtime(folder: Path) -> float:
    latest = folder.stat().st_mtime
    for path in folder.rglob("*"):
        try:
            latest = max(latest, path.stat().st_mtime)
        except OSError:  # a file replaced while we look
            continue
    return latest


def load_job(folder: Path, name: str | None = None, now: float | None = None) -> Job:
    """Read one job folder; tolerate a missing or unreadable ``metrics.json``."""
    name = name or folder.name
    try:
        record = load_record(folder) or {}
    except (OSError, ValueError) as exc:
        return Job(name, folder, "unreadable", error=f"{METRICS_FILE}: {exc}")
    overrides: list[str] = record.get("overrides") or read_overrides(folder) or []
    if not record:
        recent = (now or time.time()) - _latest_mtime(folder) < RUNNING_WINDOW_S
        return Job(name, folder, "running" if recent else "missing", _parse_overrides(overrides))
    metrics = add_robustness(dict(record.get("metrics") or {}))
    # val/acc at the best epoch (by callbacks.model_checkpoint.monitor); runs from before: the best score
    best = metrics.get("val/acc_best", (record.get("best") or {}).get("val/acc"))
    if best is not None:
        metrics["best val/acc"] = best
    return Job(
        name=name,
        path=folder,
        status=str(record.get("status", "unknown")),
        overrides=_parse_overrides(overrides),
        metrics=metrics,
        wall_time_s=record.get("wall_time_s"),
        error=str(record.get("error") or ""),
    )


def add_robustness(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with ``<split>/acc_worst``, ``acc_mean_sizes`` and ``acc_range`` for every split
    with a per-size curve: as the run logged them, else (runs from before they were logged)
    :func:`~resflex.training.robustness.summarize_sizes` of its ``<split>/acc@<size>`` tags.

    None of the three depends on which size is the main one (``acc_range`` is a ratio of two
    sizes), so the first size of the curve serves as the reference and no config is read.
    """
    for stage in CURVE_STAGES:
        names = [f"{stage}/{name}" for name in ROBUSTNESS_METRICS]
        if all(metrics.get(name) is not None for name in names):
            continue
        curve = size_curve(metrics, stage)
        if not curve:
            continue
        summary = summarize_sizes(curve, main=next(iter(curve)))
        computed = summary.metrics(stage)
        for name in names:
            if metrics.get(name) is None:
                metrics[name] = computed[name]
    return metrics


def find_jobs(root: Path) -> list[Job]:
    """A run folder gives one job; a sweep folder gives one per job sub-folder (any depth)."""
    if not root.is_dir():
        raise ResflexError(f"no such folder: {root}", hint="pass a run folder or logs/multirun/<sweep>")
    now = time.time()
    if is_run_folder(root):
        return [load_job(root, now=now)]
    folders = find_run_folders(root)
    if not folders:
        raise ResflexError(
            f"no runs under {root}",
            hint="a run folder has .hydra/ and metrics.json; a sweep folder has one such folder per job",
        )
    return [load_job(f, name=str(f.relative_to(root)), now=now) for f in sorted(set(folders))]


def _resolution_sort_key(key: str) -> tuple[int, int, int]:
    match = RES_KEY.match(key)
    assert match
    split, h, w = match.groups()
    return (0 if split == "val" else 1, int(h), int(w or h))


def resolution_columns(jobs: Sequence[Job]) -> list[str]:
    keys = {k for job in jobs for k in job.metrics if RES_KEY.match(k)}
    return sorted(keys, key=_resolution_sort_key)


def varying_overrides(jobs: Sequence[Job]) -> tuple[list[str], dict[str, str]]:
    """(keys whose value differs between jobs, {key: value} shared by all). One job: all keys vary."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    if len(jobs) == 1:
        return keys, {}
    common: dict[str, str] = {}
    varying = []
    for key in keys:
        values = {job.overrides.get(key) for job in jobs}  # None: a job without the key
        shared = next(iter(values)) if len(values) == 1 else None
        if shared is not None:
            common[key] = shared
        else:
            varying.append(key)
    return varying, common
