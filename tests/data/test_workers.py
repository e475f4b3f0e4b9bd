"""``data.num_workers=auto``: the rule, and that the data module and a real run resolve it.

Every expectation is a literal number for given (on_gpu, ranks per node, usable cores): the core
count is fixed with ``monkeypatch`` so that the tests do not depend on this machine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator

import resflex.data.workers
from resflex.data.datamodule import ResflexDataModule
from resflex.data.datasets import SyntheticSource
from resflex.data.resolution import FixedResolution
from resflex.data.workers import auto_num_workers, usable_cores
from resflex.errors import ConfigError
from resflex.train import train
from tests.conftest import TINY, TINY_SYNTHETIC
from tests.test_configs import compose_train


@pytest.mark.parametrize(
    ("on_gpu", "per_node", "cores", "expected"),
    [
        (False, 1, 1, 0),  # one core: load in the main process
        (False, 1, 2, 2),  # the measured 2-core CPU setting
        (False, 1, 32, 2),  # CPU compute wants the cores; two workers hide decoding
        (False, 2, 2, 0),  # two ranks on two cores: one core each
        (True, 1, 16, 8),  # capped
        (True, 1, 4, 3),  # one core left to the main process
        (True, 8, 16, 1),  # eight GPU ranks share 16 cores
        (True, 1, 1, 1),  # never zero on a GPU
    ],
)
def test_auto_rule(on_gpu: bool, per_node: int, cores: int, expected: int) -> None:
    assert auto_num_workers(on_gpu, per_node, cores) == expected


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_usable_cores_follows_the_affinity_mask_not_the_machine() -> None:
    mask = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(mask)})  # as taskset -c / a SLURM cgroup would
        assert usable_cores() == 1
    finally:
        os.sched_setaffinity(0, mask)
    assert usable_cores() == len(mask)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # built, never iterated
@pytest.mark.parametrize(
    ("accelerator", "world_size", "num_nodes", "cores", "expected"),
    [
        (None, 1, 1, 1, 0),  # no trainer: the CPU rule; one core loads in the main process
        (None, 1, 1, 2, 2),
        (None, 1, 1, 64, 2),
        ("cpu", 1, 1, 8, 2),
        ("cpu", 2, 1, 2, 0),  # two CPU ranks on two cores
        ("cpu", 4, 2, 4, 2),  # two ranks per node, two cores each
        ("gpu", 1, 1, 4, 3),
        ("gpu", 1, 1, 64, 8),  # capped at 8
        ("gpu", 8, 1, 16, 1),  # eight ranks on one node share 16 cores
        ("gpu", 16, 2, 16, 1),  # the same per node: the ranks of other nodes do not count
        ("gpu", 4, 2, 16, 7),  # two ranks per node: 8 cores each, one left to the main process
        ("gpu", 8, 1, 4, 1),  # never zero on a GPU
    ],
)
def test_the_data_module_resolves_auto_for_its_trainer(
    monkeypatch: pytest.MonkeyPatch,
    accelerator: str | None,
    world_size: int,
    num_nodes: int,
    cores: int,
    expected: int,
) -> None:
    monkeypatch.setattr(resflex.data.workers, "usable_cores", lambda: cores)
    dm = ResflexDataModule(SyntheticSource(20, 10, 0), FixedResolution(16), batch_size=4, num_workers="auto")
    if accelerator is not None:
        dm.trainer = SimpleNamespace(
            accelerator=CUDAAccelerator() if accelerator == "gpu" else CPUAccelerator(),
            world_size=world_size,
            num_nodes=num_nodes,
            global_rank=0,
            overfit_batches=0,
            callbacks=[],
        )
    assert dm.num_workers == expected
    loader = dm.train_dataloader()  # built, not iterated: no worker process starts
    assert loader.num_workers == expected
    assert (loader.prefetch_factor is None) == (expected == 0)
    assert loader.persistent_workers == (expected > 0)


def test_an_explicit_count_is_kept_whatever_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resflex.data.workers, "usable_cores", lambda: 64)
    dm = ResflexDataModule(SyntheticSource(20, 10, 0), FixedResolution(16), batch_size=4, num_workers=0)
    dm.trainer = SimpleNamespace(accelerator=CUDAAccelerator(), world_size=1, num_nodes=1)
    assert dm.num_workers == 0


@pytest.mark.parametrize("value", [-1, "many", 1.5])
def test_bad_worker_counts_are_refused(value: object) -> None:
    with pytest.raises(ConfigError, match="data.num_workers"):
        ResflexDataModule(SyntheticSource(20, 10, 0), FixedResolution(16), num_workers=value)  # type: ignore[arg-type]


def test_a_run_with_auto_says_what_it_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real run (in-process, the CLI's train()): one usable core -> 0 workers, said in the log."""
    monkeypatch.setattr(resflex.data.workers, "usable_cores", lambda: 1)
    overrides = [a for a in TINY if not a.startswith("data.num_workers")]
    cfg = compose_train([*overrides, *TINY_SYNTHETIC, "data.num_workers=auto", "logger=none"], tmp_path)
    with caplog.at_level(logging.INFO, logger="resflex"):
        record = train(cfg)
    assert record["status"] == "completed"
    assert "data loader: 0 worker(s) (data.num_workers=auto)" in caplog.messages


class _WorkerState(torch.utils.data.Dataset):
    """One item: the worker's SIGTERM disposition and its torch / numpy / random draws."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> tuple[bool, float, float, float]:
        import random
        import signal

        import numpy as np

        ignored = signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        return ignored, float(torch.rand(())), float(np.random.rand()), random.random()


def _worker_items(worker_init_fn: object) -> list[list[float]]:
    loader = torch.utils.data.DataLoader(
        _WorkerState(), batch_size=None, num_workers=1, worker_init_fn=worker_init_fn
    )
    return [[float(v) for v in item] for item in loader]


def test_workers_ignore_sigterm_and_are_seeded_as_lightning_seeds_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """init_worker replaces the worker_init_fn Lightning would add (seed_everything(workers=True)): same
    draws as Lightning's, and SIGTERM ignored (a group kill is the main process's to handle)."""
    from functools import partial

    import pytorch_lightning as pl
    from lightning_fabric.utilities.seed import pl_worker_init_function

    from resflex.data.workers import init_worker

    monkeypatch.setenv("PL_SEED_WORKERS", "1")
    pl.seed_everything(3, workers=True, verbose=False)
    lightning = _worker_items(partial(pl_worker_init_function, rank=1))
    pl.seed_everything(3, workers=True, verbose=False)
    ours = _worker_items(partial(init_worker, rank=1))
    assert [item[0] for item in ours] == [1.0, 1.0] and [item[0] for item in lightning] == [0.0, 0.0]
    assert [item[1:] for item in ours] == [item[1:] for item in lightning]
