"""Write a variable-aspect image folder of rendered digits: the data of issue 30's NaFlex target.

10 classes (``0`` to ``9``); canvases 24-96 px high with aspect (w/h) drawn log-uniformly in 0.5-2;
on each, one digit in Pillow's built-in scalable font (no font files, no downloads) at 55-90 % of
the canvas's short side, at a random place. ``--colours grey`` (default, MNIST-like): a light digit
on a dark noisy background; ``random``: a random colour on a random noisy background (much harder
for a ViT from scratch: docs/resolution.md). Deterministic in ``--seed``; PNG.

    python experiments/naflex/make_digits.py OUT [--train-per-class 400] [--val-per-class 100] \
        [--test-per-class 0]

``--test-per-class N`` adds a ``test`` split (drawn after train and val from the same stream, so
train and val are the same images with or without it), used for no decision in a study.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def make_image(digit: int, rng: np.random.Generator, colours: str = "grey") -> Image.Image:
    height = int(rng.integers(24, 97))
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    width = max(12, round(height * aspect))
    if colours == "grey":
        background = np.full(3, rng.integers(0, 70))
        colour = (int(rng.integers(170, 256)),) * 3
    else:
        background = rng.integers(0, 256, 3)
        colour = tuple(int(c) for c in (background + rng.integers(90, 166, 3)) % 256)  # distinct
    pixels = background + rng.normal(0, 12, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    font = ImageFont.load_default(size=max(8, round(min(height, width) * rng.uniform(0.55, 0.9))))
    left, top, right, bottom = font.getbbox(str(digit))
    x = rng.uniform(0, max(0.0, width - (right - left))) - left
    y = rng.uniform(0, max(0.0, height - (bottom - top))) - top
    ImageDraw.Draw(image).text((x, y), str(digit), fill=colour, font=font)
    return image


def build(
    out: Path,
    train_per_class: int,
    val_per_class: int,
    seed: int,
    colours: str = "grey",
    test_per_class: int = 0,
) -> None:
    rng = np.random.default_rng(seed)
    splits = [("train", train_per_class), ("val", val_per_class)]
    if test_per_class:
        splits.append(("test", test_per_class))
    for split, per_class in splits:
        for digit in range(10):
            folder = out / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                make_image(digit, rng, colours).save(folder / f"{digit}_{k:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=0, help="0: no test split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--colours", choices=("grey", "random"), default="grey")
    args = parser.parse_args()
    build(args.out, args.train_per_class, args.val_per_class, args.seed, args.colours, args.test_per_class)
    counts = f"{args.train_per_class}/{args.val_per_class}/{args.test_per_class} train/val/test"
    print(f"wrote {args.out} ({counts} images a class)")


if __name__ == "__main__":
    main()
