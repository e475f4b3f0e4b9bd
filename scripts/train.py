#!/usr/bin/env python
"""Train a classifier: ``python scripts/train.py [hydra overrides]`` (see ``configs/train.yaml``)."""

from resflex.train import main

if __name__ == "__main__":
    main()
