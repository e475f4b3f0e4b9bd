#!/usr/bin/env python
"""Benchmark resflex against a plain PyTorch loop: ``python scripts/benchmark.py --help``.

Needs torch, timm and Lightning only (no Hydra); works from a source checkout
without installing the package (``src/`` is put on the path).
"""

import sys
from pathlib import Path

try:
    import resflex  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from resflex.benchmark.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
