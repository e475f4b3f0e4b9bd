#!/usr/bin/env python
"""Train a classifier: ``python scripts/train.py [hydra overrides]`` (see ``configs/train.yaml``)."""

try:  # importing torch takes seconds: Ctrl-C then is a quiet exit, not a page of traceback
    from resflex.train import main
except KeyboardInterrupt:
    raise SystemExit(130) from None

if __name__ == "__main__":
    main()
