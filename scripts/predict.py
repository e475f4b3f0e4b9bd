#!/usr/bin/env python
"""Predict with a trained run (see ``configs/predict.yaml``):
``python scripts/predict.py ckpt_path=RUN/checkpoints/last.ckpt input=PATH output=preds.csv``."""

try:  # importing torch takes seconds: Ctrl-C then is a quiet exit, not a page of traceback
    from resflex.predict import main
except KeyboardInterrupt:
    raise SystemExit(130) from None

if __name__ == "__main__":
    main()
