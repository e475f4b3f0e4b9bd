"""Every use of a private Lightning / TensorBoard attribute, in one place.

resflex needs a handful of things Lightning (and ``torch.utils.tensorboard``)
have no public API for. Each one is a small named function here, with why it is
needed and the version it was checked against; nothing else in ``src/`` touches a
private attribute of these libraries. ``tests/test_compat.py`` exercises each
function against the installed libraries with real, tiny objects and asserts
that the private attribute still exists with the expected type and effect, so
an upgrade that renames or changes one fails there with a message naming it,
not somewhere in a training run.

Checked against pytorch-lightning / lightning-fabric 2.6.6 and torch 2.14
(``torch.utils.tensorboard``).
"""

from __future__ import annotations

import subprocess
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytorch_lightning as pl

#: The Lightning version these private accesses were last checked against.
CHECKED_LIGHTNING_VERSION = "2.6.6"


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


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The trainer ``module`` is attached to, or None: ``LightningModule.trainer`` raises when detached
    (a module built for evaluation, a unit test), and Lightning has no public "is attached" check.
    Reads the private ``_trainer`` (Lightning 2.6)."""
    if not hasattr(module, "_trainer"):
        raise AttributeError(_changed("LightningModule._trainer is gone"))
    return module._trainer


def is_compiled(module: Any) -> bool:
    """True when ``nn.Module.compile()`` was called on ``module`` (in place: it sets the private
    ``_compiled_call_impl``; torch has no public flag for it). Checked against torch 2.14."""
    return getattr(module, "_compiled_call_impl", None) is not None
