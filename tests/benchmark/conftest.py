"""The benchmark tests run the benchmark's own set-up, which quiets the library loggers for the
process (what ``scripts/benchmark.py`` wants): each test gets the levels back, or a later test on the
same worker would find the ``resflex`` logger at ERROR and its ``caplog`` empty."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from benchmarks.runners import QUIET_LOGGERS


@pytest.fixture(autouse=True)
def _logger_levels_restored() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
