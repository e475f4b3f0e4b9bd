#!/usr/bin/env python
"""Predict with a trained run (see ``configs/predict.yaml``):
``python scripts/predict.py ckpt_path=RUN/checkpoints/last.ckpt input=PATH output=preds.csv``."""

from resflex.predict import main

if __name__ == "__main__":
    main()
