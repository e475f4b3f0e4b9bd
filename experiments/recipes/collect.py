"""One CSV row per finished run folder: cell, seed, best val/acc, test/acc, wall time, command.

python experiments/recipes/collect.py OUT.csv CELL=RUN_DIR [CELL=RUN_DIR ...]
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def main() -> None:
    out, pairs = Path(sys.argv[1]), [arg.rsplit("=", 1) for arg in sys.argv[2:]]
    rows = []
    for cell, run_dir in pairs:
        record = json.loads((Path(run_dir) / "metrics.json").read_text())
        overrides = record.get("overrides", [])
        rows.append(
            {
                "cell": cell,
                "seed": next((o.split("=", 1)[1] for o in overrides if o.startswith("seed=")), ""),
                "val_acc_best": record["best"]["val/acc"],
                "test_acc": record["metrics"].get("test/acc"),
                "wall_time_s": record["wall_time_s"],
                "command": "python scripts/train.py " + " ".join(overrides),
            }
        )
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
