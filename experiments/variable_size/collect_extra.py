"""One CSV row per finished resflex run folder: cell, seed, best val/acc, test/acc, wall time, training
speed, command, and test/acc at each extra evaluation size (``test_acc@96`` ..., runs with
``eval.resolutions``).

Training speed is the median of the run's logged ``train/images_per_sec`` intervals (CSV logger), and
seconds per epoch the training images divided by it: the training loop alone, without validation,
start-up or the final test, which is what a switch (an augmentation, an optimizer) can change.

For runs outside ``study.py`` (the ablations here, experiments/recipes/; commands in their READMEs):

    python experiments/variable_size/collect_extra.py OUT.csv NAME=RUN_DIR [NAME=RUN_DIR ...]
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path


def training_speed(run_dir: Path) -> float | None:
    """Median logged training rate (images/s) of a run, None without a CSV log."""
    rates = [
        float(row["train/images_per_sec"])
        for log in run_dir.glob("csv/**/metrics.csv")
        for row in csv.DictReader(log.open())
        if row.get("train/images_per_sec")
    ]
    return statistics.median(rates) if rates else None


def resolution_accuracies(metrics: dict[str, float]) -> dict[str, float]:
    """``test/acc@96`` -> ``test_acc@96`` for each square extra evaluation size in a run's metrics."""
    return {
        key.replace("/", "_"): value
        for key, value in metrics.items()
        if key.startswith("test/acc@") and key.split("@")[1].isdigit()
    }


def main() -> None:
    out, pairs = Path(sys.argv[1]), [arg.rsplit("=", 1) for arg in sys.argv[2:]]
    rows = []
    for name, run_dir in pairs:
        record = json.loads((Path(run_dir) / "metrics.json").read_text())
        overrides = " ".join(record.get("overrides", []))
        seed = next((o.split("=", 1)[1] for o in record.get("overrides", []) if o.startswith("seed=")), "")
        speed = training_speed(Path(run_dir))
        images = record.get("data_profile", {}).get("images")
        epoch_s = round(images / speed, 1) if speed and images else None
        rows.append({"cell": name, "seed": seed, "val_acc_best": record["best"]["val/acc"],
                     "test_acc": record["metrics"].get("test/acc"), "wall_time_s": record.get("wall_time_s"),
                     "train_images_per_s": round(speed, 1) if speed else None, "train_s_per_epoch": epoch_s,
                     "command": f"python scripts/train.py {overrides}",
                     **resolution_accuracies(record["metrics"])})  # fmt: skip
    columns = [key for key in rows[0] if "@" not in key]
    extra = sorted({key for row in rows for key in row if "@" in key}, key=lambda k: int(k.split("@")[1]))
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns + extra)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
