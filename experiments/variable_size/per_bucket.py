"""Validation accuracy per aspect bucket of a finished keep_aspect run (best checkpoint).

    python experiments/variable_size/per_bucket.py RUN_DIR [--out per_bucket.json]

Also evaluates with BatchNorm on batch statistics (running statistics reset), to tell a
train/eval statistics mismatch across bucket shapes from a model that is simply worse on
some shapes. Reads the run's own config (``RUN_DIR/.hydra/config.yaml``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from resflex.build import build_datamodule, build_module
from resflex.run import read_config


def evaluate(module: torch.nn.Module, loader, batch_statistics: bool) -> dict:
    module.eval()
    if batch_statistics:
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.train()
                m.momentum = None
                m.reset_running_stats()
    per: dict[str, list[int]] = {}
    with torch.no_grad():
        for images, labels in loader:
            predicted = module(module.normalize(images)).argmax(1)
            h, w = images.shape[-2:]
            counts = per.setdefault(f"{h}x{w}", [0, 0])
            counts[0] += int((predicted == labels).sum())
            counts[1] += len(labels)
    total = sum(c for c, _ in per.values()) / sum(n for _, n in per.values())
    return {
        "acc": round(total, 4),
        "per_bucket": {k: [round(c / n, 4), n] for k, (c, n) in sorted(per.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cfg = read_config(args.run_dir / ".hydra" / "config.yaml")  # old layouts migrated to today's
    cfg.paths.log_dir = str(args.run_dir)  # ${hydra:...} is not resolvable here
    cfg.data.num_workers = 0
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.num_classes)
    best = json.loads((args.run_dir / "metrics.json").read_text())["best"]["checkpoint"]
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state, strict=False)
    loader = datamodule.val_dataloader()
    loader = loader[0] if isinstance(loader, list | tuple) else loader
    result = {
        "run": str(args.run_dir),
        "running_statistics": evaluate(module, loader, batch_statistics=False),
        "batch_statistics": evaluate(module, loader, batch_statistics=True),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
