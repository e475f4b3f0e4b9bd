#!/usr/bin/env python
"""Benchmark resflex against a plain PyTorch loop: ``python scripts/benchmark.py --help``.

The benchmark lives in ``benchmarks/`` beside ``src/``, outside the installed package
(timm keeps its benchmark script outside its package too), and imports resflex as a
user would. Needs torch, timm and Lightning only (no Hydra); works from a source
checkout without installing the package (``src/`` is put on the path).
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks/
try:
    import resflex  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO / "src"))

from benchmarks.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
