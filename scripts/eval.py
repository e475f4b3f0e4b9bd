#!/usr/bin/env python
"""Evaluate a checkpoint at several resolutions (see ``configs/eval.yaml``):
``python scripts/eval.py ckpt_path=PATH eval.resolutions=[48,64]``."""

from resflex.evaluate import main

if __name__ == "__main__":
    main()
