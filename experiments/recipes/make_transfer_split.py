"""Two image folders from Fashion-MNIST for the transfer arm of the recipe study (issue #17).

    python experiments/recipes/make_transfer_split.py /tmp/fm_transfer

- ``OUT/pretrain``: classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat), ``--pretrain-per-class``
  training and 200 validation images a class: what a resflex checkpoint is pre-trained on;
- ``OUT/target``: classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot), ``--target-per-class`` training
  (about 300, "a few hundred a class"), 100 validation and 400 test images a class (test from the
  official test set): what the switches are measured on, from scratch and fine-tuned.

Disjoint classes, so fine-tuning transfers features, not labels. PNG, 28x28 grey, as in the source.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from PIL import Image

from resflex.data.fashion_mnist import CLASSES, DEBIAN_ROOT, FILES, find_idx_file, read_idx


def load(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = (read_idx(find_idx_file(root, stem)) for stem in FILES[split])  # type: ignore[arg-type]
    return images, labels


def write(folder: Path, images: np.ndarray, labels: np.ndarray, picks: dict[int, np.ndarray]) -> None:
    for label, indices in picks.items():
        class_dir = folder / CLASSES[label].replace("/", "-")
        class_dir.mkdir(parents=True, exist_ok=True)
        for i in indices:
            Image.fromarray(images[i]).save(class_dir / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--root", type=Path, default=Path(DEBIAN_ROOT))
    parser.add_argument("--pretrain-per-class", type=int, default=2000)
    parser.add_argument("--target-per-class", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    train_images, train_labels = load(args.root, "train")
    test_images, test_labels = load(args.root, "test")

    def pick(labels: np.ndarray, label: int, *counts: int) -> list[np.ndarray]:
        indices = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.cumsum((0, *counts))
        return [indices[a:b] for a, b in itertools.pairwise(bounds)]

    for label in range(5):
        train, val = pick(train_labels, label, args.pretrain_per_class, 200)
        write(args.out / "pretrain" / "train", train_images, train_labels, {label: train})
        write(args.out / "pretrain" / "val", train_images, train_labels, {label: val})
    for label in range(5, 10):
        train, val = pick(train_labels, label, args.target_per_class, 100)
        (test,) = pick(test_labels, label, 400)
        write(args.out / "target" / "train", train_images, train_labels, {label: train})
        write(args.out / "target" / "val", train_images, train_labels, {label: val})
        write(args.out / "target" / "test", test_images, test_labels, {label: test})
    for part in ("pretrain", "target"):
        counts = {s.name: sum(1 for _ in s.rglob("*.png")) for s in sorted((args.out / part).iterdir())}
        print(part, counts)


if __name__ == "__main__":
    main()
