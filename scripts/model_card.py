#!/usr/bin/env python
"""(Re)write a run folder's model card: ``python scripts/model_card.py logs/train/runs/<time> [--print]``."""

from resflex.model_card import main

if __name__ == "__main__":
    raise SystemExit(main())
