"""One CSV row per finished resflex run folder: cell, seed, best val/acc, test/acc, wall time, command.

For runs outside ``study.py`` (the ablations here, experiments/recipes/; commands in their READMEs):

    python experiments/variable_size/collect_extra.py OUT.csv NAME=RUN_DIR [NAME=RUN_DIR ...]
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def main() -> None:
    out, pairs = Path(sys.argv[1]), [arg.rsplit("=", 1) for arg in sys.argv[2:]]
    rows = []
    for name, run_dir in pairs:
        record = json.loads((Path(run_dir) / "metrics.json").read_text())
        overrides = " ".join(record.get("overrides", []))
        seed = next((o.split("=", 1)[1] for o in record.get("overrides", []) if o.startswith("seed=")), "")
        rows.append({"cell": name, "seed": seed, "val_acc_best": record["best"]["val/acc"],
                     "test_acc": record["metrics"].get("test/acc"), "wall_time_s": record.get("wall_time_s"),
                     "command": f"python scripts/train.py {overrides}"})  # fmt: skip
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
