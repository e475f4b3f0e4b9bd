"""``data.num_workers=auto``: how many loader processes a run gets.

A rule rather than one number because the right count depends on where the
compute runs. On a GPU the workers decode on otherwise idle cores, so more of
them is free speed up to the point where the device is fed (8 is plenty for a
ResNet-50 at 224 px on one GPU); the node's cores are shared among its ranks and
one is left to each main process. On a CPU-only run every worker takes a core
from the threads that compute: on the 2-core machine each worker millisecond cost
the step up to ~2 ms (experiments/performance/), and two workers were enough to
keep the step from waiting; a single core loads in the main process.
"""

from __future__ import annotations

import os

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
