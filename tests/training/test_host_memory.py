"""CPU runs keep freed host memory for the next batch (``resflex.runtime.retain_freed_host_memory``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

import pytest

from resflex.runtime import MALLOC_ENVIRONMENT, retain_freed_host_memory

GLIBC = sys.platform.startswith("linux") and "musl" not in (sysconfig.get_config_var("HOST_GNU_TYPE") or "")

# Allocates, touches and frees a 64 MiB tensor 12 times (what each batch's large activations do) and
# prints the page faults that took: glibc's default serves each one with a fresh mmap. The first
# rounds are left out: retained, the heap grows for a few rounds before freed blocks fit (torch's
# aligned allocations are a little larger than the block they free), then it stops faulting.
_CHURN = """
import json, resource, sys, torch
from resflex.runtime import retain_freed_host_memory
applied = retain_freed_host_memory() if sys.argv[1] == "retain" else False
for _ in range(12):
    torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(12):
    torch.empty(16 << 20).fill_(1.0)
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _churn(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENVIRONMENT}
    done = subprocess.run(
        [sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, env=env, check=True, timeout=120
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    system, retained = _churn("system"), _churn("retain")
    assert retained["applied"] is True
    pages = 12 * (64 << 20) // 4096  # what 12 fresh 64 MiB blocks fault in
    assert system["faults"] > pages // 2  # the default: every block mapped afresh
    assert retained["faults"] < pages // 10, (system, retained)


@pytest.mark.parametrize("name", MALLOC_ENVIRONMENT)
def test_malloc_settings_in_the_environment_win(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, "131072")
    assert retain_freed_host_memory() is False


def test_other_platforms_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert retain_freed_host_memory() is False
