"""Build a variable-size, variable-aspect image folder with off-centre objects from Fashion-MNIST.

The data the variable-size study (README beside this file) trains on, and the kind
of folder issue #13 was reported on: 10 classes; canvases 24-128 px high with aspect
(w/h) drawn log-uniformly in 0.5-2; on each, one Fashion-MNIST glyph (the object)
scaled to cover 60-100 % of the canvas's short side, placed at a random position,
in a random colour, over a noisy coloured background; PNG and JPEG mixed.

    python experiments/variable_size/make_data.py OUT [--train-per-class 400] [--val-per-class 100]
        [--test-per-class 0] [--noise-sd 20] [--object-scale 0.6 1.0] [--objects shapes]

``--noise-sd 0 --object-scale 0.9 1.0`` makes an easier folder (flat background, the object
filling the short side); the random draws are the same, so only those two properties change.

``--objects shapes`` draws the object from ten geometric shapes instead (the embedded dataset's
classes, ``resflex.data.synthetic.SHAPES``: circle, ring, square, ... at a random rotation), on the
same canvases: a folder whose fixed 40 px run lands where the robustness issue's folder did
(about 0.9 at 40 px), so that issue's absolute targets can be measured on data of that difficulty.
Its test split is more random draws (no glyph pool to keep disjoint).

The test split (``--test-per-class N``: OUT/test/<class>/) draws its glyphs from Fashion-MNIST's
own test set, so its objects are disjoint from train and val; it is drawn after train and val,
so adding it leaves those two splits identical for a given --seed.

Needs the Debian package dataset-fashion-mnist (or the IDX files under --mnist-root), except with
``--objects shapes``.
Deterministic in --seed.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from resflex.data.fashion_mnist import CLASSES, DEBIAN_ROOT, find_idx_file, read_idx
from resflex.data.synthetic import SHAPES, draw_shape

SUPERSAMPLE = 4  # shapes are drawn at 4x and downsampled: anti-aliased edges like the glyphs'


def shape_glyph(shape: str, rng: np.random.Generator, side: int = 112) -> np.ndarray:
    """A ``side`` x ``side`` uint8 mask of ``shape`` at a random rotation (the glyph of a shapes folder)."""
    big = side * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    angle = float(rng.uniform(-math.pi, math.pi))
    # half-extent big/2/1.75: a rotated square (corners at sqrt(2) r) with a frame's line width still
    # fits inside the glyph, so no shape is cut into another (a clipped square looks like an octagon)
    draw_shape(ImageDraw.Draw(canvas), shape, big / 2, big / 2, big / (2 * 1.75), angle, 255)
    return np.asarray(canvas.resize((side, side), Image.Resampling.BOX))


def make_image(
    glyph: np.ndarray,
    rng: np.random.Generator,
    noise_sd: float = 20.0,
    object_scale: tuple[float, float] = (0.6, 1.0),
) -> Image.Image:
    height = int(rng.integers(24, 129))
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    width = max(8, round(height * aspect))
    background = rng.integers(0, 256, 3).astype(np.float32)
    pixels = background + (rng.normal(0, 1, (height, width, 3)) * noise_sd).astype(np.float32)
    side = max(6, round(min(height, width) * rng.uniform(*object_scale)))
    mask = (
        np.asarray(Image.fromarray(glyph).resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255
    )
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    colour = (background + rng.integers(90, 166, 3)) % 256  # always distinct from the background
    region = pixels[top : top + side, left : left + side]
    pixels[top : top + side, left : left + side] = region * (1 - mask[..., None]) + colour * mask[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def save_mixed(image: Image.Image, folder: Path, k: int) -> None:
    """Image ``k`` of a class: PNG for even k, JPEG (quality 90) for odd, so loaders meet both."""
    if k % 2:
        image.save(folder / f"{k:04d}.jpg", quality=90)
    else:
        image.save(folder / f"{k:04d}.png")


def build(
    out: Path,
    train_per_class: int,
    val_per_class: int,
    seed: int,
    mnist_root: str,
    test_per_class: int = 0,
    noise_sd: float = 20.0,
    object_scale: tuple[float, float] = (0.6, 1.0),
    objects: str = "fashion_mnist",
) -> None:
    if objects == "shapes":
        build_shapes(out, train_per_class, val_per_class, seed, test_per_class, noise_sd, object_scale)
        return
    root = Path(mnist_root)
    train_images = read_idx(find_idx_file(root, "train-images-idx3-ubyte"))
    train_labels = read_idx(find_idx_file(root, "train-labels-idx1-ubyte"))
    rng = np.random.default_rng(seed)
    splits = [("train", train_per_class), ("val", val_per_class)]
    if test_per_class:
        splits.append(("test", test_per_class))
    for split, per_class in splits:
        if split == "test":  # objects never seen in train or val: Fashion-MNIST's test set
            images = read_idx(find_idx_file(root, "t10k-images-idx3-ubyte"))
            labels = read_idx(find_idx_file(root, "t10k-labels-idx1-ubyte"))
        else:
            images, labels = train_images, train_labels
        for label, name in enumerate(CLASSES):
            folder = out / split / name.replace("/", "_").replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            pool = np.flatnonzero(labels == label)
            # train and val glyphs come from disjoint halves of the class's pool
            half = len(pool) // 2
            if split != "test":
                pool = pool[:half] if split == "train" else pool[half:]
            for k, index in enumerate(rng.choice(pool, per_class, replace=False)):
                save_mixed(make_image(images[index], rng, noise_sd, object_scale), folder, k)


def build_shapes(
    out: Path,
    train_per_class: int,
    val_per_class: int,
    seed: int,
    test_per_class: int = 0,
    noise_sd: float = 20.0,
    object_scale: tuple[float, float] = (0.6, 1.0),
) -> None:
    """The same canvases with a geometric shape as the object (``--objects shapes``)."""
    rng = np.random.default_rng(seed)
    splits = [("train", train_per_class), ("val", val_per_class), ("test", test_per_class)]
    for split, per_class in splits:
        for shape in SHAPES:
            folder = out / split / shape
            if per_class:
                folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                save_mixed(make_image(shape_glyph(shape, rng), rng, noise_sd, object_scale), folder, k)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mnist-root", default=DEBIAN_ROOT)
    parser.add_argument("--noise-sd", type=float, default=20.0, help="background noise (grey levels)")
    parser.add_argument(
        "--object-scale",
        type=float,
        nargs=2,
        default=(0.6, 1.0),
        metavar=("MIN", "MAX"),
        help="the object's side as a share of the canvas's short side",
    )
    parser.add_argument(
        "--objects",
        choices=("fashion_mnist", "shapes"),
        default="fashion_mnist",
        help="what the object is: a Fashion-MNIST glyph, or one of ten geometric shapes",
    )
    args = parser.parse_args()
    build(
        args.out,
        args.train_per_class,
        args.val_per_class,
        args.seed,
        args.mnist_root,
        args.test_per_class,
        args.noise_sd,
        tuple(args.object_scale),
        args.objects,
    )
    print(
        f"wrote {args.out} ({args.train_per_class}/{args.val_per_class}/{args.test_per_class}"
        " train/val/test images a class)"
    )


if __name__ == "__main__":
    main()
