#!/usr/bin/env python
"""Evaluate a checkpoint at several resolutions (see ``configs/eval.yaml``):
``python scripts/eval.py ckpt_path=PATH eval.resolutions=[48,64]``."""

try:  # importing torch takes seconds: Ctrl-C then is a quiet exit, not a page of traceback
    from resflex.evaluate import main
except KeyboardInterrupt:
    raise SystemExit(130) from None

if __name__ == "__main__":
    main()
