#!/usr/bin/env python
"""Export a trained run with dynamic batch, height and width (see ``configs/export.yaml``):
``python scripts/export.py ckpt_path=RUN/checkpoints/last.ckpt format=onnx output=model.onnx``."""

try:  # importing torch takes seconds: Ctrl-C then is a quiet exit, not a page of traceback
    from resflex.export import main
except KeyboardInterrupt:
    raise SystemExit(130) from None

if __name__ == "__main__":
    main()
