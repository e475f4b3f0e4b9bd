#!/usr/bin/env python
"""Export two image folders with DISJOINT label sets, for pre-training and few-shot fine-tuning.

    OUT/pretrain/{train,val}/<source classes>/*.png   many images per class
    OUT/finetune/{train,val}/<target classes>/*.png   few images per class

``--dataset fashion_mnist`` (default; the Debian package ``dataset-fashion-mnist``
puts the idx files in /usr/share/datasets/fashion-mnist): source = T-shirt,
trouser, pullover, dress, coat, sandal; target = shirt, sneaker, bag, ankle boot.
``--dataset shapes``: resflex's synthetic shapes, source = the first six
shapes, target = the other four (no files needed).

Fine-tuning must learn classes the backbone never saw; what can transfer is
its visual vocabulary. Train and val images of each part are disjoint.

    python experiments/transfer/make_folders.py OUT [--pretrain-per-class 150] [--finetune-per-class 20]
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = (
    "tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)  # fmt: skip


def read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def fashion_mnist(root: Path, seed: int) -> tuple[tuple[str, ...], list[tuple[Image.Image, int]]]:
    """A shuffled stream of (image, label) from the Fashion-MNIST training file."""
    images = read_idx(root / "train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = read_idx(root / "train-labels-idx1-ubyte.gz", 8)
    order = np.random.default_rng(seed).permutation(len(labels))
    return FMNIST_CLASSES, [(Image.fromarray(images[i], "L"), int(labels[i])) for i in order[:12000]]


def shapes(seed: int) -> tuple[tuple[str, ...], list[tuple[Image.Image, int]]]:
    from resflex.data.synthetic import SHAPES, SyntheticShapes

    data = SyntheticShapes(3000, seed=seed)
    return SHAPES, [data[i] for i in range(len(data))]


def export(
    stream, classes, wanted: tuple[str, ...], quotas: dict[str, int], out: Path, used: set[int]
) -> None:
    """Write ``quotas[split]`` images per wanted class, taking stream items not used before."""
    for split, per_class in quotas.items():
        counts = dict.fromkeys(wanted, 0)
        for index, (image, label) in enumerate(stream):
            name = classes[label]
            if index in used or name not in counts or counts[name] >= per_class:
                continue
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{index:05d}.png")
            counts[name] += 1
            used.add(index)
        short = {k: v for k, v in counts.items() if v < per_class}
        if short:
            raise SystemExit(f"not enough images for {split}: {short}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dataset", choices=("fashion_mnist", "shapes"), default="fashion_mnist")
    parser.add_argument(
        "--root", type=Path, default=FMNIST_DIR, help="folder with the Fashion-MNIST idx files"
    )
    parser.add_argument("--pretrain-per-class", type=int, default=150)
    parser.add_argument("--pretrain-val-per-class", type=int, default=30)
    parser.add_argument("--finetune-per-class", type=int, default=20)
    parser.add_argument("--finetune-val-per-class", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.dataset == "fashion_mnist":
        if not (args.root / "train-images-idx3-ubyte.gz").is_file():
            raise SystemExit(
                f"no Fashion-MNIST files in {args.root}: `apt-get install dataset-fashion-mnist`, "
                "pass --root, or use --dataset shapes"
            )
        classes, stream = fashion_mnist(args.root, args.seed)
    else:
        classes, stream = shapes(args.seed)
    source, target = tuple(classes[:6]), tuple(classes[6:])
    used: set[int] = set()
    export(stream, classes, source, {"train": args.pretrain_per_class, "val": args.pretrain_val_per_class},
           args.out / "pretrain", used)  # fmt: skip
    export(stream, classes, target, {"train": args.finetune_per_class, "val": args.finetune_val_per_class},
           args.out / "finetune", used)  # fmt: skip
    for part, names in (("pretrain", source), ("finetune", target)):
        for split in ("train", "val"):
            n = len(list((args.out / part / split).rglob("*.png")))
            print(f"{part}/{split}: {n} images, classes {', '.join(names)}")


if __name__ == "__main__":
    main()
