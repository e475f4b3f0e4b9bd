"""nvJPEG against the CPU: ``data.source.decoder=device`` on CUDA vs the same batches decoded on the CPU.

Issue #18 asks for the device decode path to be "checked for equal pictures (mean abs difference
in levels) against the CPU path" on a GPU. ``tests/data/test_device_decode.py`` has that check, but
the GPU image has no Hydra (the tests import it); this script needs only torch, torchvision and
resflex's data modules. It writes photo-sized JPEGs (the loader benchmark's), builds the device
decoder's loaders (train and eval framing, square, 128 and 224 px) and decodes every batch twice:
on the CPU (libjpeg-turbo, the pixels ``decoder=torchvision`` gives, exactly) and on CUDA (nvJPEG).
Prints and writes (``--json``) the mean and max absolute difference in levels per case; exit 1 if a
mean is above ``--bound``. Run by ``gpu_run.sh``:

    python experiments/performance/gpu_decode_check.py --json OUT/decode_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "src"), str(Path(__file__).resolve().parents[2])]

from benchmarks.loader import resflex_loader, write_photo_folder  # noqa: E402 (after sys.path)


def compare(root: Path, split: str, size: int, batches: int) -> dict[str, float | int | str]:
    """Mean and max |CUDA - CPU| in levels over the first ``batches`` batches of one case."""
    total, count, worst = 0.0, 0, 0
    for k, (encoded, labels) in enumerate(resflex_loader(root, "device", split, "square", size)):
        if k == batches:
            break
        cpu, _ = encoded.to("cpu").decode(labels)
        gpu, _ = encoded.to("cuda").decode(labels.cuda())
        difference = (gpu.cpu().int() - cpu.int()).abs()
        total += difference.double().sum().item()
        count += difference.numel()
        worst = max(worst, int(difference.max()))
    return {"split": split, "size": size, "mean_abs_levels": total / max(count, 1), "max_abs_levels": worst}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--bound", type=float, default=1.5, help="largest acceptable mean, levels")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check (the CPU path is tests/data/test_device_decode.py)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = write_photo_folder(root, args.images)
        cases = [compare(root, s, z, args.batches) for s in ("train", "val") for z in (128, 224)]
    for case in cases:
        print(f"{case['split']:5s} {case['size']:4d} px  mean |cuda - cpu| {case['mean_abs_levels']:.3f} "
              f"levels, max {case['max_abs_levels']}")  # fmt: skip
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "folder": folder,
        "cases": cases,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if all(c["mean_abs_levels"] <= args.bound for c in cases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
