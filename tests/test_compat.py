"""resflex.compat: each private Lightning / torch / TensorBoard access, against the installed libraries.

A Lightning (or torch) upgrade that renames or changes one of these attributes
fails here, with a message naming the attribute and the function in
``src/resflex/compat.py`` to update. The last test reads the rest of ``src/`` (and
``benchmarks/``) and fails on a private access outside compat.py.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel, RandomDataset
from torch.utils.data import DataLoader, Sampler

from resflex import compat

UPDATE = "update src/resflex/compat.py: "


def tiny_trainer(**kwargs: object) -> pl.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    return pl.Trainer(**(options | kwargs))


# --- set_train_loader_limit: trainer.fit_loop._combined_loader ----------------------------------


class GrowingBatches(Sampler[list[int]]):
    """A batch sampler whose epoch length changes: 2 batches in epoch 0, 5 afterwards."""

    def __init__(self) -> None:
        self.epoch = 0

    def __len__(self) -> int:
        return 2 if self.epoch == 0 else 5

    def __iter__(self):
        for i in range(len(self)):
            yield [2 * i, 2 * i + 1]


class CountBatches(BoringModel):
    def __init__(self, sampler: GrowingBatches, sync: bool) -> None:
        super().__init__()
        self.sampler, self.sync = sampler, sync
        self.batches: dict[int, int] = {}
        self.val_check_batches: dict[int, int] = {}
        self.done: list[int] = []
        self.seen_loader: object = None

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64), batch_sampler=self.sampler)

    def on_train_epoch_start(self) -> None:
        self.sampler.epoch = self.current_epoch
        self.seen_loader = getattr(self.trainer.fit_loop, "_combined_loader", "missing")
        if self.sync:  # what resflex.data.sampler.ScheduleLengthSync does
            compat.set_epoch_length(self.trainer, len(self.sampler))
            self.val_check_batches[self.current_epoch] = self.trainer.val_check_batch

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict:
        self.batches[self.current_epoch] = self.batches.get(self.current_epoch, 0) + 1
        return super().training_step(batch, batch_idx)

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        self.done.append(compat.batches_done_this_epoch(self.trainer))


def test_set_train_loader_limit_follows_an_epoch_length_that_changes() -> None:
    from pytorch_lightning.utilities.combined_loader import CombinedLoader

    model = CountBatches(GrowingBatches(), sync=True)
    tiny_trainer(max_epochs=2).fit(model)
    assert isinstance(model.seen_loader, CombinedLoader), (
        UPDATE + f"trainer.fit_loop._combined_loader is {model.seen_loader!r}, expected a CombinedLoader"
    )
    assert hasattr(model.seen_loader, "limits"), UPDATE + "CombinedLoader has no .limits"
    assert model.batches == {0: 2, 1: 5}, model.batches
    assert model.val_check_batches == {0: 2, 1: 5}, UPDATE + "trainer.val_check_batch did not follow"
    # the epoch loop's count of finished batches, per epoch (what a mid-epoch checkpoint saves)
    assert model.done == [1, 2, 1, 2, 3, 4, 5], UPDATE + f"batch_progress.current.processed: {model.done}"


class MeanLengthBatches(GrowingBatches):
    """Like resflex's samplers: before an epoch is set, ``len`` is the mean epoch length (3),
    shorter than epoch 0's 5 batches (epoch 1 has 1)."""

    def __init__(self) -> None:
        self.epoch: int | None = None

    def __len__(self) -> int:
        return {None: 3, 0: 5}.get(self.epoch, 1)


class CountValidations(CountBatches):
    def __init__(self, sampler: Sampler, sync: bool) -> None:
        super().__init__(sampler, sync)
        self.validated: list[int] = []
        self.fetcher_lengths: list[object] = []

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        fetcher = getattr(self.trainer.fit_loop, "_data_fetcher", None)
        self.fetcher_lengths.append(getattr(fetcher, "length", "missing"))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 4), batch_size=2)

    def on_validation_epoch_end(self) -> None:
        self.validated.append(self.current_epoch)


def test_set_epoch_length_lets_a_first_epoch_longer_than_setup_run_whole_and_validate() -> None:
    """Lightning builds epoch 0's data fetcher during setup, from the loader's length then (the
    mean); set_epoch_length must also lengthen that fetcher, or epoch 0 stops at 3 of its 5
    batches, before val_check_batch (5), and skips its validation (a NaFlex run did)."""
    model = CountValidations(MeanLengthBatches(), sync=True)
    tiny_trainer(max_epochs=2, limit_val_batches=1.0).fit(model)
    assert model.fetcher_lengths[0] == 5, UPDATE + f"fit_loop._data_fetcher.length: {model.fetcher_lengths}"
    assert model.batches == {0: 5, 1: 1}, model.batches
    assert model.validated == [0, 1], f"validation ran after epochs {model.validated}"


def test_without_the_private_limit_lightning_keeps_the_first_epoch_length() -> None:
    """Why set_train_loader_limit exists: the public max_batches alone is not enough.

    If this fails, Lightning now re-reads the loader length each epoch (or honours
    ``fit_loop.max_batches`` above the first length) and the private access in
    ``set_train_loader_limit`` may be dropped.
    """

    class PublicOnly(CountBatches):
        def on_train_epoch_start(self) -> None:
            self.sampler.epoch = self.current_epoch
            self.trainer.fit_loop.max_batches = len(self.sampler)

    model = PublicOnly(GrowingBatches(), sync=False)
    tiny_trainer(max_epochs=2).fit(model)
    assert model.batches == {0: 2, 1: 2}, model.batches


def test_set_train_loader_limit_before_fit_has_nothing_to_set() -> None:
    assert compat.set_train_loader_limit(tiny_trainer(max_epochs=1), 3) is False


# --- uses_distributed_sampler: trainer._accelerator_connector.use_distributed_sampler -------------


@pytest.mark.parametrize("flag", [True, False])
def test_uses_distributed_sampler_reads_the_trainer_argument(flag: bool) -> None:
    trainer = tiny_trainer(use_distributed_sampler=flag)
    connector = getattr(trainer, "_accelerator_connector", None)
    assert connector is not None, UPDATE + "Trainer has no _accelerator_connector"
    assert isinstance(getattr(connector, "use_distributed_sampler", None), bool), (
        UPDATE + "the accelerator connector has no bool use_distributed_sampler"
    )
    assert compat.uses_distributed_sampler(trainer) is flag


def test_uses_distributed_sampler_is_false_without_the_connector() -> None:
    """A Lightning without the private connector: the data module's multi-rank check is skipped, not
    made to refuse every run."""
    assert compat.uses_distributed_sampler(object()) is False  # type: ignore[arg-type]


# --- child_process_observers / release_child_processes: _ChildProcessObserver._child_processes ---


def test_release_child_processes_disarms_lightnings_watcher() -> None:
    try:
        from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
    except ImportError as exc:  # pragma: no cover - only when Lightning moves it
        pytest.fail(UPDATE + f"_ChildProcessObserver is gone from lightning_fabric ({exc})")
    assert issubclass(_ChildProcessObserver, threading.Thread)

    # the watcher would kill main_pid: a stand-in process, never this test
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    failed.wait()
    observer = _ChildProcessObserver(main_pid=stand_in.pid, child_processes=[failed], sleep_period=3600)
    try:
        assert isinstance(getattr(observer, "_child_processes", None), list), (
            UPDATE + "_ChildProcessObserver has no list _child_processes"
        )
        observer.start()  # sleeps an hour before its first look
        assert observer in compat.child_process_observers()
        assert compat.release_child_processes(observer) == [failed]
        assert observer._child_processes == []
        # its next look: an empty list reads as "every child exited 0" -> it stops, killing nobody
        assert observer._run() is True, UPDATE + "the watcher no longer stops on an empty _child_processes"
        assert stand_in.poll() is None, "the watcher killed its main process although it had no children"
    finally:
        stand_in.kill()
        stand_in.wait()


def test_release_child_processes_names_a_changed_attribute() -> None:
    with pytest.raises(AttributeError, match="_child_processes.*compat"):
        compat.release_child_processes(threading.Thread())


# --- tensorboard_file_writer: SummaryWriter._get_file_writer() ------------------------------------


def test_tensorboard_file_writer_writes_raw_summaries(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat.proto.summary_pb2 import Summary

    logger = TensorBoardLogger(save_dir=str(tmp_path), name="", version="")
    experiment = logger.experiment
    assert callable(getattr(experiment, "_get_file_writer", None)), (
        UPDATE + f"{type(experiment).__name__} has no _get_file_writer()"
    )
    writer = compat.tensorboard_file_writer(experiment)
    assert callable(getattr(writer, "add_summary", None)), UPDATE + "the file writer has no add_summary()"
    writer.add_summary(Summary(value=[Summary.Value(tag="compat/check", simple_value=1.5)]), 3)
    experiment.flush()
    events = sorted(Path(logger.log_dir).glob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events[-1]), size_guidance={"scalars": 0})
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("compat/check")] == [(3, 1.5)]
    # after close() it reopens, which is why _get_file_writer() is used rather than .file_writer
    experiment.close()
    assert compat.tensorboard_file_writer(experiment) is not None
    experiment.close()


def test_tensorboard_file_writer_names_a_changed_attribute() -> None:
    with pytest.raises(AttributeError, match="_get_file_writer.*compat"):
        compat.tensorboard_file_writer(object())


def test_attached_trainer_is_none_until_a_trainer_holds_the_module() -> None:
    import pytorch_lightning as pl
    from torch import nn

    from resflex.compat import attached_trainer

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(2, 2)

    module = Tiny()
    assert attached_trainer(module) is None
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer = trainer
    assert attached_trainer(module) is trainer


def test_is_compiled_follows_nn_module_compile() -> None:
    from torch import nn

    from resflex.compat import is_compiled

    layer = nn.Linear(2, 2)
    assert not is_compiled(layer)
    layer.compile()
    assert is_compiled(layer)


# --- BatchNorm: torch.nn.modules.batchnorm._BatchNorm ---------------------------------------------


def test_batchnorm_is_the_base_of_every_batchnorm_layer() -> None:
    from timm.layers import BatchNormAct2d
    from torch import nn

    assert compat.BatchNorm is getattr(nn.modules.batchnorm, "_BatchNorm", None), (
        UPDATE + "torch.nn.modules.batchnorm._BatchNorm is gone"
    )
    layers = [nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.BatchNorm3d(2), nn.SyncBatchNorm(2), BatchNormAct2d(2)]
    assert all(isinstance(layer, compat.BatchNorm) for layer in layers)
    assert not any(isinstance(layer, compat.BatchNorm) for layer in (nn.LayerNorm(2), nn.GroupNorm(1, 2)))


# --- RefinedLearningRateMonitor: LearningRateMonitor._extract_stats ----------------------------------


def test_refined_learning_rate_monitor_logs_what_refine_stats_returns(tmp_path: Path) -> None:
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.loggers import CSVLogger

    assert callable(getattr(LearningRateMonitor, "_extract_stats", None)), (
        UPDATE + "LearningRateMonitor has no _extract_stats()"
    )

    class Renamed(compat.RefinedLearningRateMonitor):
        def refine_stats(self, trainer: pl.Trainer, stats: dict[str, float]) -> dict[str, float]:
            return {f"refined/{tag}": value for tag, value in stats.items()}

    trainer = tiny_trainer(
        max_epochs=1, limit_train_batches=2, logger=CSVLogger(str(tmp_path)), callbacks=[Renamed()]
    )
    trainer.fit(BoringModel())
    logged = set((Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(","))
    assert "refined/lr-SGD" in logged and "lr-SGD" not in logged, UPDATE + f"logged: {sorted(logged)}"


# --- size_oblivious_tracing: torch.fx.experimental._config.backed_size_oblivious ----------------------


def test_size_oblivious_tracing_switches_torchs_flag() -> None:
    import torch.fx.experimental._config as config

    assert isinstance(getattr(config, "backed_size_oblivious", None), bool), (
        UPDATE + "torch.fx.experimental._config has no bool backed_size_oblivious"
    )
    before = config.backed_size_oblivious
    with compat.size_oblivious_tracing():
        assert config.backed_size_oblivious is True
    assert config.backed_size_oblivious == before


# --- compiled_graph_count: torch._dynamo.utils.counters -------------------------------------------


def test_compiled_graph_count_counts_dynamo_graphs() -> None:
    before = compat.compiled_graph_count()
    double = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
    double(torch.ones(2))
    double(torch.ones(3))  # another shape, dynamic=False: another graph
    assert compat.compiled_graph_count() >= before + 2, UPDATE + "torch._dynamo's unique_graphs counter"


def test_compiled_graph_count_counts_graphs_not_the_calls_in_them() -> None:
    """The benchmark's recompilation count: a graph of three ops is one; a call reusing it adds none."""
    affine = torch.compile(lambda x: torch.relu(x * 2 + 1), backend="eager", dynamic=False)
    affine(torch.ones(4))
    before = compat.compiled_graph_count()
    affine(torch.ones(5))  # a new shape: one new graph
    assert compat.compiled_graph_count() == before + 1, UPDATE + "torch._dynamo's unique_graphs counter"
    affine(torch.ones(5))  # the same shape: the cached graph
    assert compat.compiled_graph_count() == before + 1


# --- nothing outside compat.py touches a private attribute -----------------------------------------

REPO = Path(__file__).resolve().parents[1]
#: folders whose Python files may touch no other library's private attribute
SCANNED = (REPO / "src" / "resflex", REPO / "benchmarks")
#: public-looking attributes that are Lightning loop internals all the same
LOOP_INTERNALS = frozenset({"fit_loop", "epoch_loop", "batch_progress", "val_check_batch"})


def private_accesses(source: str) -> list[str]:
    """Each private access in ``source``: ``x._name`` on anything but ``self`` / ``cls``, a private name
    in ``getattr``/``hasattr``/``setattr``, an import of a private module or name (``torch._dynamo``), and
    Lightning's loop internals (``trainer.fit_loop``). Docstrings and comments do not count."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute):
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if (private and not own) or node.attr in LOOP_INTERNALS:
                found.append(f"{line}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2:
                name = node.args[1]
                text = str(name.value) if isinstance(name, ast.Constant) else ""
                if text.startswith("_") and not text.startswith("__"):
                    found.append(f"{line}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("resflex"):
            parts = node.module.split(".")
            names = [alias.name for alias in node.names]
            if any(p.startswith("_") and p != "__future__" for p in parts) or any(
                n.startswith("_") for n in names
            ):
                found.append(f"{line}: from {node.module} import {', '.join(names)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if any(p.startswith("_") for p in alias.name.split(".")):
                    found.append(f"{line}: import {alias.name}")
    return found


def test_no_private_access_outside_compat() -> None:
    offenders = []
    for folder in SCANNED:
        for path in sorted(folder.rglob("*.py")):
            if path.name == "compat.py":
                continue
            offenders += [f"{path.relative_to(REPO)}:{hit}" for hit in private_accesses(path.read_text())]
    assert not offenders, "private access outside src/resflex/compat.py:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "source",
    [
        "trainer._accelerator_connector",
        "module._trainer",
        "trainer.fit_loop.max_batches = 3",
        "hasattr(value, '_metadata')",
        "from torch._dynamo.utils import counters",
        "from torch.nn.modules.batchnorm import _BatchNorm",
        "import torch._dynamo",
        "super()._extract_stats(trainer, 'step')",
    ],
)
def test_the_private_access_check_catches(source: str) -> None:
    assert private_accesses(source), source


def test_the_private_access_check_lets_own_attributes_and_docstrings_pass() -> None:
    source = (
        'def f(self):\n    """uses torch._dynamo.config"""\n    return self._cache, cls._x, x.__class__\n'
    )
    assert private_accesses(source) == []


def test_lightning_precisions_are_the_values_its_trainer_takes() -> None:
    """The list ``scripts/eval.py`` checks ``eval.precision`` against: each builds a Trainer."""
    from resflex.compat import lightning_precisions

    names = lightning_precisions()
    assert {"32-true", "bf16-mixed", "16-mixed", "32", "16", "bf16"} <= set(names)
    pl.Trainer(precision="bf16-mixed", accelerator="cpu", logger=False, enable_checkpointing=False)
