"""Multi-process training helpers: a per-rank batch log, and DDP jobs inside a Hydra sweep.

:class:`RankBatchLog` writes, on every rank, one JSON line per training step
(epoch, step, the batch's (h, w), its sample indices) to
``<run>/ranks/rank<k>.jsonl``, and a weights checksum at the end of each epoch.
It exists so that the sampler's DDP contract can be *checked from the run
folder*, not just believed: all ranks use the same size at the same step, the
ranks' shards are disjoint and together cover the data, and the replicas stay
identical (a checksum that differs means gradients were not synchronised).
``python scripts/check_ddp_run.py <run>`` prints that check (:func:`check_rank_logs`).

:func:`ddp_job_scope` makes Lightning's subprocess launcher (``strategy=ddp``)
work for each job of a Hydra multirun; see its docstring.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytorch_lightning as pl
import torch

from resflex.errors import DataError

# Environment variables Lightning's launcher sets in the launching process for its children.
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


class RankBatchLog(pl.Callback):
    """Per-rank record of training batches: ``<output_dir>/ranks/rank<k>.jsonl``.

    Lines are ``{"epoch", "step", "size": [h, w], "indices": [...]}`` per step and
    ``{"epoch", "event": "epoch_end", "steps", "param_checksum"}`` per epoch.
    ``only_distributed``: write nothing in a single-process run (the default).
    """

    def __init__(self, output_dir: str | None = None, only_distributed: bool = True) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.only_distributed = only_distributed
        self._file: IO[str] | None = None
        self._steps = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or (self.only_distributed and trainer.world_size < 2):
            return
        folder = Path(self.output_dir or trainer.default_root_dir) / "ranks"
        folder.mkdir(parents=True, exist_ok=True)
        self._file = open(folder / f"rank{trainer.global_rank}.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._steps = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._file is None:
            return
        shape = tuple(int(v) for v in batch[0].shape[-2:])
        self._steps += 1
        self._write(
            {
                "epoch": trainer.current_epoch,
                "step": batch_idx,
                "size": list(shape),
                "indices": _planned_indices(trainer, batch_idx, shape, len(batch[0])),
            }
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._file is None:
            return
        with torch.no_grad():
            # one host sync for the whole model, not one per parameter tensor
            checksum = float(torch.stack([p.detach().double().sum() for p in pl_module.parameters()]).sum())
        self._write(
            {
                "epoch": trainer.current_epoch,
                "event": "epoch_end",
                "steps": self._steps,
                "param_checksum": checksum,
                "num_samples": getattr(
                    getattr(trainer.train_dataloader, "batch_sampler", None), "num_samples", None
                ),
            }
        )
        self._file.flush()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._file is not None and stage == "fit":
            self._file.close()
            self._file = None


def _planned_indices(trainer: pl.Trainer, batch_idx: int, shape: tuple[int, ...], n: int) -> list[int] | None:
    """The batch's sample indices from the sampler's epoch plan (None if the plan does not match)."""
    sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
    plan = getattr(sampler, "plan", None)
    if not callable(plan):
        return None
    steps = plan()
    if 0 <= batch_idx < len(steps):
        step = steps[batch_idx]
        if tuple(step.size) == shape and len(step.indices) == n:
            return [int(i) for i in step.indices]
    return None


# ---- reading the log back ------------------------------------------------------------------
def read_rank_logs(run_dir: str | Path) -> dict[int, list[dict[str, Any]]]:
    """``{rank: [records...]}`` from ``<run_dir>/ranks/rank<k>.jsonl``."""
    logs = {}
    for path in sorted(Path(run_dir, "ranks").glob("rank*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()
        logs[int(path.stem[4:])] = [json.loads(line) for line in lines if line.strip()]
    return logs


def check_rank_logs(run_dir: str | Path, num_samples: int | None = None) -> dict[str, Any]:
    """What the per-rank logs say about the DDP contract, per epoch.

    ``sizes_agree``: every rank had the same (h, w) at every step;
    ``rank_repeats``: samples one rank saw twice (0: each rank's shard has no duplicates);
    ``padding``: samples seen by two ranks: the sampler's padding, which keeps the ranks' step
    counts equal (square: at most world_size - 1; keep_aspect: at most that per bucket);
    ``covered`` / ``missing``: distinct samples seen / not seen (``num_samples``: the train split
    size, read from the log unless given; with ``drop_last`` a partial last step is skipped);
    ``weights_agree``: the ranks' parameter checksums are equal at the end of the epoch.
    """
    if not Path(run_dir).is_dir():
        raise DataError(f"no such run folder: {run_dir}", hint="pass a run folder, logs/train/runs/<time>")
    logs = read_rank_logs(run_dir)
    if not logs:
        raise DataError(
            f"no per-rank logs in {Path(run_dir, 'ranks')}: the run was not distributed, or ran "
            "without callbacks.rank_batch_log",
            hint="a run with trainer=ddp (or trainer=ddp_sim on CPU) writes them",
        )
    epochs = sorted({r["epoch"] for records in logs.values() for r in records})
    report: dict[str, Any] = {"ranks": sorted(logs), "epochs": {}}
    for epoch in epochs:
        steps = {
            rank: [r for r in recs if r["epoch"] == epoch and "step" in r] for rank, recs in logs.items()
        }
        ends = {
            rank: [r for r in recs if r["epoch"] == epoch and r.get("event") == "epoch_end"]
            for rank, recs in logs.items()
        }
        sizes = {rank: [(s["step"], tuple(s["size"])) for s in recs] for rank, recs in steps.items()}
        counts: Counter[int] = Counter(
            i for recs in steps.values() for s in recs for i in (s.get("indices") or [])
        )
        checksums = {rank: e[-1]["param_checksum"] for rank, e in ends.items() if e}
        per_rank = [Counter(i for s in recs for i in (s.get("indices") or [])) for recs in steps.values()]
        total = num_samples or next((e[-1].get("num_samples") for e in ends.values() if e), None)
        entry = {
            "steps": {rank: len(recs) for rank, recs in steps.items()},
            "sizes_agree": len({tuple(v) for v in sizes.values()}) == 1,
            "sizes": sorted({size for v in sizes.values() for _, size in v}),
            "seen": sum(counts.values()),
            "covered": len(counts),
            "rank_repeats": sum(c - 1 for own in per_rank for c in own.values()),
            "padding": sum(c - 1 for c in counts.values()),
            "weights_agree": len(set(checksums.values())) <= 1 if checksums else None,
        }
        if total is not None:
            entry["missing"] = int(total) - len(counts)
        report["epochs"][epoch] = entry
    return report


# ---- DDP inside a Hydra multirun ------------------------------------------------------------
@contextmanager
def ddp_job_scope(
    output_dir: str | Path, job_overrides: Sequence[str], config_name: str | None
) -> Iterator[None]:
    """Run one job of a Hydra multirun so that ``strategy=ddp`` launches *this job's* ranks.

    Lightning's subprocess launcher starts ranks 1..N-1 by re-running the entry
    point with ``sys.argv`` plus ``hydra.run.dir=<HydraConfig run.dir>``. In a
    multirun that command is the whole sweep (``-m a=1,2``): each child would
    start a sweep of its own, in run.dir, not the job's folder. And the
    launcher leaves ``LOCAL_RANK``/``MASTER_PORT``... in ``os.environ``, so the
    next job of the sweep believes its ranks were started externally and waits
    for them forever. So, for the duration of the job:

    - ``sys.argv`` is the job's own overrides (what ``.hydra/overrides.yaml``
      holds), without ``-m``: a child composes exactly this job's config, in
      run mode;
    - Hydra's ``run.dir`` is the job's folder, which Lightning passes on as
      ``hydra.run.dir``: every rank writes to the same job folder;
    - afterwards the job's ranks are waited for (:func:`finish_child_ranks`),
      the DDP variables are restored and the process group is destroyed, so a
      failed job does not end the sweep and the next job starts its own ranks
      on a fresh port.
    """
    from omegaconf import OmegaConf, read_write

    from resflex.runtime import hydra_node

    saved_argv = list(sys.argv)
    saved_env = {key: os.environ.get(key) for key in _DDP_ENV}
    hydra_run = hydra_node().run
    saved = OmegaConf.to_container(hydra_run, resolve=False)  # keep ${now:...} unresolved
    assert isinstance(saved, dict)  # hydra.run: a mapping
    saved_run_dir = saved["dir"]
    argv = [sys.argv[0]]
    if config_name:
        argv.append(f"--config-name={config_name}")
    sys.argv = [*argv, *job_overrides]
    with read_write(hydra_run):
        hydra_run.dir = str(Path(output_dir).resolve())
    try:
        yield
    finally:
        sys.argv = saved_argv
        with read_write(hydra_run):
            hydra_run.dir = saved_run_dir
        finish_child_ranks()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        destroy_process_group()


def check_shared_run_dir() -> None:
    """Under ``torchrun`` or ``srun`` every rank runs Hydra itself: they must be given one run folder.

    The default ``hydra.run.dir`` contains the start time (``${now:...}``), which
    each process resolves on its own, so ranks would scatter over several
    folders (and rank > 0 could not find rank 0's checkpoints).
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    external = "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1
    given = any(str(o).split("=", 1)[0] == "hydra.run.dir" for o in HydraConfig.get().overrides.hydra)
    if external and not given:
        from resflex.errors import ConfigError

        raise ConfigError(
            "several processes were started for this run (torchrun / srun), but hydra.run.dir is not set, "
            "so each rank would pick its own time-stamped folder",
            hint="add hydra.run.dir=<a folder on a shared file system>, e.g. logs/train/runs/$SLURM_JOB_ID",
        )


def finish_child_ranks(timeout_s: float = 60.0) -> None:
    """The run is over on rank 0: wait for the ranks Lightning started, then stop watching them.

    Lightning's launcher leaves a watcher thread that SIGKILLs the launching
    process as soon as a child rank exits non-zero. That is right while the
    run is going (rank 0 would hang in a collective), but once rank 0 has
    finished or failed the run itself, a child exiting with the same error must
    not kill the process: in a sweep it would end the sweep (and every later
    job) instead of recording one failed job. A child still running after
    ``timeout_s`` (stuck in a collective that rank 0 left) is killed.
    """
    import subprocess

    from resflex.compat import child_process_observers, release_child_processes

    for observer in child_process_observers():
        for proc in release_child_processes(observer):  # Lightning has no public way to stop the watcher
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


CHILD_GRACE_S = 10.0


def is_lightning_child_rank(argv: Sequence[str]) -> bool:
    """True in ranks 1..N-1 that Lightning started (it adds ``hydra.job.name=train_ddp_process_<k>``)."""
    return any(str(a).startswith("hydra.job.name=train_ddp_process_") for a in argv)


@contextmanager
def child_rank_grace(argv: Sequence[str], grace_s: float = CHILD_GRACE_S) -> Iterator[None]:
    """In a Lightning-started rank that fails: wait ``grace_s`` before exiting with the error.

    When every rank fails alike (a config error, a diverged run), rank 0 reports
    the failure and stops Lightning's watcher (:func:`finish_child_ranks`) well
    within the grace period, so the child's exit code no longer matters. When
    only this rank failed, rank 0 is waiting in a collective; after the grace
    period the non-zero exit lets Lightning's watcher end the run, as it would
    have without resflex.
    """
    try:
        yield
    except BaseException as exc:
        failed = not isinstance(exc, SystemExit) or exc.code not in (None, 0)
        if failed and is_lightning_child_rank(argv):
            time.sleep(grace_s)
        raise


def destroy_process_group() -> None:
    """Tear down torch.distributed after a run, so a next run in this process can start its own group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
