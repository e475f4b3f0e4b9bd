"""Every use of a private attribute of Lightning, torch and TensorBoard, in one place.

resflex needs a handful of things these libraries have no public API for. Each one
is a small named function (or name) here, with why it is needed and the version it
was checked against; nothing else in ``src/`` (or ``benchmarks/``) touches a private
attribute of another library: ``tests/test_compat.py::test_no_private_access_outside_compat``
reads the source and fails on one. ``tests/test_compat.py`` exercises each entry here
against the installed libraries with real, tiny objects and asserts that the private
attribute still exists with the expected type and effect, so an upgrade that renames
or changes one fails there with a message naming it, not somewhere in a training run.

Checked against pytorch-lightning / lightning-fabric 2.6.6, torch 2.14.1 and
tensorboard 2.21.0 (each entry names the one it depends on). OmegaConf needs no entry:
its nodes are recognised with the public ``OmegaConf.is_config``.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from pytorch_lightning.callbacks import LearningRateMonitor

if TYPE_CHECKING:
    import pytorch_lightning as pl

#: The Lightning version these private accesses were last checked against.
CHECKED_LIGHTNING_VERSION = "2.6.6"
#: The torch version BatchNorm, is_compiled and compiled_graph_count were checked against.
CHECKED_TORCH_VERSION = "2.14.1"

#: The base class of every BatchNorm layer (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, the lazy ones, and
#: subclasses such as timm's ``BatchNormAct2d``): torch's private ``nn.modules.batchnorm._BatchNorm``
#: (torch 2.14.1). Why private: torch has no public common base; listing the public classes would miss
#: ``SyncBatchNorm`` subclasses and any added later. A type alias: ``isinstance(m, BatchNorm)`` and
#: ``layer: BatchNorm`` both work, with the attributes every BatchNorm has (``running_mean``, ...).
BatchNorm: TypeAlias = torch.nn.modules.batchnorm._BatchNorm


def _changed(what: str) -> str:
    import pytorch_lightning as pl

    return (
        f"{what} (resflex.compat was checked against Lightning {CHECKED_LIGHTNING_VERSION}, "
        f"this is {pl.__version__}; update resflex/compat.py)"
    )


def set_train_loader_limit(trainer: pl.Trainer, num_batches: int) -> bool:
    """Make the fit loop's combined train loader stop after ``num_batches`` batches this epoch.

    Why private: Lightning reads ``len(train_dataloader)`` once, when the fit loop
    sets up its ``CombinedLoader`` (``trainer.fit_loop._combined_loader``), and
    stores it as the loader's ``limits``. With a batch sampler whose epoch length
    changes (multigrid, batch scaling) the limit must follow each epoch; setting
    ``fit_loop.max_batches`` alone (public) does not change the loader's
    ``limits``. There is no public handle on the combined loader.

    Returns ``False`` when the fit loop has no combined loader yet (nothing to set).
    """
    fit_loop = trainer.fit_loop
    if not hasattr(fit_loop, "_combined_loader"):
        raise AttributeError(_changed("trainer.fit_loop has no _combined_loader"))
    combined = fit_loop._combined_loader
    if combined is None:
        return False
    combined.limits = [num_batches] * len(combined.flattened)
    return True


def set_epoch_length(trainer: pl.Trainer, num_batches: int) -> None:
    """Make this training epoch ``num_batches`` long (Lightning 2.6.6).

    Why not public: Lightning fixes an epoch's length when the fit loop sets up; a batch
    sampler whose epochs differ in length (multigrid, batch scaling, NaFlex token budgets)
    needs it changed each epoch. Four places hold it: the fit loop's ``max_batches`` (a loop
    internal), the combined loader's limit (:func:`set_train_loader_limit`), when validation
    runs once per epoch the trainer's ``val_check_batch`` (set by the loop at setup), and the
    data fetcher's ``length``: the first epoch's fetcher is built during setup, from the
    loader's length before any epoch was set (resflex's samplers then report the mean epoch
    length), and is not rebuilt for epoch 0. Left at that length, a first epoch longer than
    the mean stopped early, before its ``val_check_batch``: no validation in epoch 0.
    """
    trainer.fit_loop.max_batches = num_batches
    set_train_loader_limit(trainer, num_batches)
    if isinstance(trainer.val_check_interval, float) and trainer.val_check_interval == 1.0:
        trainer.val_check_batch = num_batches
    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    if fetcher is not None and getattr(fetcher, "length", None) is not None:
        fetcher.length = num_batches


def batches_done_this_epoch(trainer: pl.Trainer) -> int:
    """Training batches the fit loop has finished in the current epoch (Lightning 2.6.6).

    Why not public: a checkpoint must say where in the epoch it was taken so a resumed run's
    sampler starts there; Lightning keeps that count only in the epoch loop's progress
    tracker (``fit_loop.epoch_loop.batch_progress.current.processed``).
    """
    # a _ProcessedTracker, which Lightning annotates as its base class (without ``processed``)
    processed = getattr(trainer.fit_loop.epoch_loop.batch_progress.current, "processed", None)
    if processed is None:
        raise AttributeError(_changed("fit_loop.epoch_loop.batch_progress.current has no processed"))
    return int(processed)


class RefinedLearningRateMonitor(LearningRateMonitor):
    """A ``LearningRateMonitor`` whose subclasses rewrite the values it logs: :meth:`refine_stats`.

    Why private: the monitor builds its ``{tag: lr}`` dict in ``_extract_stats(trainer, interval)``
    and logs it right away; there is no public hook between (Lightning 2.6.6). This class is the one
    place that overrides the private method.
    """

    def _extract_stats(self, trainer: pl.Trainer, interval: str) -> dict[str, float]:
        return self.refine_stats(trainer, super()._extract_stats(trainer, interval))

    def refine_stats(self, trainer: pl.Trainer, stats: dict[str, float]) -> dict[str, float]:
        """The values to log instead of ``stats`` (``{tag: value}``); unchanged by default."""
        return stats


def uses_distributed_sampler(trainer: pl.Trainer) -> bool:
    """The Trainer's ``use_distributed_sampler`` argument.

    Why private: Lightning keeps the flag only on the accelerator connector
    (``trainer._accelerator_connector.use_distributed_sampler``); the Trainer has
    no public property for it. The data module refuses ``true`` with several
    ranks, because resflex's batch sampler shards by rank itself.

    ``False`` when the attribute is gone (the check is then skipped, as before).
    """
    connector = getattr(trainer, "_accelerator_connector", None)
    return bool(getattr(connector, "use_distributed_sampler", False))


def child_process_observers() -> list[threading.Thread]:
    """The watcher threads Lightning's subprocess launcher started (``strategy=ddp`` on one machine).

    Why private: ``lightning_fabric.strategies.launchers.subprocess_script._ChildProcessObserver``
    is a private class; the launcher keeps no public reference to its watcher.
    """
    from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    return [t for t in threading.enumerate() if isinstance(t, _ChildProcessObserver)]


def release_child_processes(observer: threading.Thread) -> list[subprocess.Popen]:
    """Take the child processes away from a Lightning watcher thread; returns them.

    Why private: the watcher SIGKILLs the launching process as soon as a child
    rank exits non-zero. After rank 0 has finished (or failed) the run itself,
    that must stop (in a sweep it would end the sweep); Lightning has no public
    way to stop the watcher, so its list of children
    (``_ChildProcessObserver._child_processes``) is emptied: an empty list is
    "all children exited 0" and the watcher ends on its next look.
    """
    if not hasattr(observer, "_child_processes"):
        raise AttributeError(_changed(f"{type(observer).__name__} has no _child_processes"))
    procs = list(observer._child_processes)
    observer._child_processes = []
    return procs


def tensorboard_file_writer(experiment: Any) -> Any:
    """The ``FileWriter`` of a ``torch.utils.tensorboard.SummaryWriter`` (``TensorBoardLogger.experiment``).

    Why private: writing raw ``Summary`` protos (the HParams plugin's experiment,
    session start and session end, with resflex's own metric columns) needs
    ``FileWriter.add_summary``; ``SummaryWriter`` only exposes it through
    ``_get_file_writer()``, which also reopens the writer after ``close()``.
    """
    get_writer = getattr(experiment, "_get_file_writer", None)
    if get_writer is None:
        raise AttributeError(_changed(f"{type(experiment).__name__} has no _get_file_writer()"))
    return get_writer()


def lightning_precisions() -> tuple[str, ...]:
    """Every ``precision`` Lightning's Trainer takes, as strings (``32-true``, ``bf16-mixed``, ``16``):
    the arguments of lightning_fabric's private ``connector._PRECISION_INPUT_STR`` and
    ``_PRECISION_INPUT_STR_ALIAS`` Literal types (lightning-fabric 2.6.6). Why: ``scripts/eval.py`` runs
    outside a Trainer, which alone checks the value, and Lightning has no public list of them."""
    from typing import get_args

    from lightning_fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    return (*get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS))


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The trainer ``module`` is attached to, or None: ``LightningModule.trainer`` raises when detached
    (a module built for evaluation, a unit test), and Lightning has no public "is attached" check.
    Reads the private ``_trainer`` (Lightning 2.6)."""
    if not hasattr(module, "_trainer"):
        raise AttributeError(_changed("LightningModule._trainer is gone"))
    return module._trainer


def is_compiled(module: Any) -> bool:
    """True when ``nn.Module.compile()`` was called on ``module`` (in place: it sets the private
    ``_compiled_call_impl``; torch has no public flag for it). Checked against torch 2.14.1."""
    return getattr(module, "_compiled_call_impl", None) is not None


def compiled_graph_count() -> int:
    """Graphs TorchDynamo has compiled in this process so far (``torch._dynamo.utils.counters``).

    Why private: the benchmark reports recompilations per size schedule, and torch exposes the
    count only in Dynamo's counters (torch 2.14.1). 0 when the counters are gone (a diagnostic,
    never a reason to fail a benchmark; ``tests/test_compat.py`` fails instead).
    """
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(counters["stats"]["unique_graphs"])


def size_oblivious_tracing() -> contextlib.AbstractContextManager[Any]:
    """While exporting: symbolic sizes are not specialised to 0 or 1 (a 1x1 feature map stays valid).

    Why private: the switch is ``torch.fx.experimental._config.backed_size_oblivious`` (torch 2.14.1),
    with no public context manager; a torch without it gets a no-op (the export's check at several
    sizes still catches a size that was specialised).
    """
    import torch.fx.experimental._config as config
    from torch.utils._config_module import ConfigModule

    # torch's install_config_module turns the module into a ConfigModule, which adds patch()
    if not isinstance(config, ConfigModule) or not hasattr(config, "backed_size_oblivious"):
        return contextlib.nullcontext()
    return config.patch("backed_size_oblivious", True)
