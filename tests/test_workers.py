"""``data.num_workers=auto``: the rule, and that a real run resolves it."""

from __future__ import annotations

from pathlib import Path

import pytest

from resflex.data.datamodule import ResflexDataModule
from resflex.data.datasets import SyntheticSource
from resflex.data.resolution import FixedResolution
from resflex.data.workers import auto_num_workers, usable_cores
from resflex.errors import ConfigError
from tests.conftest import TINY, TINY_SYNTHETIC, run_cli


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


def test_auto_without_a_trainer_is_the_cpu_rule_for_this_machine() -> None:
    dm = ResflexDataModule(SyntheticSource(20, 10, 0), FixedResolution(16), batch_size=4, num_workers="auto")
    assert dm.num_workers == auto_num_workers(False, 1, usable_cores())
    loader = dm.train_dataloader()
    assert loader.num_workers == dm.num_workers
    assert (loader.prefetch_factor is None) == (dm.num_workers == 0)


@pytest.mark.parametrize("value", [-1, "many", 1.5])
def test_bad_worker_counts_are_refused(value: object) -> None:
    with pytest.raises(ConfigError, match="data.num_workers"):
        ResflexDataModule(SyntheticSource(20, 10, 0), FixedResolution(16), num_workers=value)  # type: ignore[arg-type]


def test_cli_accepts_auto_and_says_what_it_chose(tmp_path: Path) -> None:
    overrides = [a for a in TINY if not a.startswith("data.num_workers")]
    run = [*overrides, *TINY_SYNTHETIC, "data.num_workers=auto", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli(run, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = auto_num_workers(False, 1, usable_cores())
    assert f"data loader: {expected} worker(s) (data.num_workers=auto)" in result.stdout + result.stderr
