"""``data.num_workers=auto``: how many loader processes a run gets.

A rule rather than one number because the right count depends on where the
compute runs. On a GPU the workers decode on otherwise idle cores, so more of
them is free speed up to the point where the device is fed (8 is plenty for a
ResNet-50 at 224 px on one GPU); the node's cores are shared among its ranks and
one is left to each main process. On a CPU-only run every worker takes a core
from the threads that compute: on the 2-core machine each worker millisecond cost
the step up to ~2 ms (experiments/performance/), and two workers were enough to
keep the step from waiting; a single core loads in the main process.

:func:`init_worker` is what every loader worker does first: ignore SIGTERM, so that a
SIGTERM sent to the whole process group reaches the main process only (see there).
"""

from __future__ import annotations

import os
import signal
import sys

AUTO = "auto"


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_num_workers(on_gpu: bool, processes_per_node: int = 1, cores: int | None = None) -> int:
    """Loader workers for one process (see the module docstring for the rule and why)."""
    share = max(1, (cores or usable_cores()) // max(1, processes_per_node))
    if on_gpu:
        return max(1, min(8, share - 1))
    return min(2, share) if share >= 2 else 0


def init_worker(worker_id: int, rank: int | None = None) -> None:
    """A loader worker's ``worker_init_fn``: ignore SIGTERM, die with the main process, seed as Lightning.

    ``timeout``, ``scancel`` and container stops send SIGTERM to the whole process group. A
    worker killed by it first makes the main process fail with "DataLoader worker (pid N) is
    killed by signal: Terminated" (a traceback, status failed, no interrupt checkpoint). Ignoring
    it here leaves the signal to the main process, which stops after the batch and saves
    ``last.ckpt`` as for a SIGTERM sent to it alone, then shuts its workers down as usual
    (Ctrl-C works the same way: PyTorch's workers already ignore SIGINT). A worker whose main
    process is gone still exits: PyTorch's watchdog sees it within seconds, and on Linux the
    kernel kills it at once (``PR_SET_PDEATHSIG``), also one stuck in a read, so none is left.

    A DataLoader with a ``worker_init_fn`` does not get Lightning's (``seed_everything(workers=True)``
    adds ``pl_worker_init_function`` only to loaders without one), so it is called here, with the
    ``rank`` Lightning would pass.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank=rank)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the process (thread) that started it ends; elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no libc prctl: PyTorch's watchdog alone
        pass
