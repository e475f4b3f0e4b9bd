#!/usr/bin/env python
"""Export a trained run with dynamic batch, height and width (see ``configs/export.yaml``):
``python scripts/export.py ckpt_path=RUN/checkpoints/last.ckpt format=onnx output=model.onnx``."""

from resflex.export import main

if __name__ == "__main__":
    main()
