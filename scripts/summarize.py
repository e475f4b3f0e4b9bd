#!/usr/bin/env python
"""Summarise a sweep or run folder: ``python scripts/summarize.py logs/multirun/<sweep> [--sort val/acc]``."""

from resflex.summarize import main

if __name__ == "__main__":
    raise SystemExit(main())
