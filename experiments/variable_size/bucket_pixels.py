"""Mean pixels per training image with geometry=keep_aspect, against a square batch of the same size.

    python experiments/variable_size/bucket_pixels.py DATA_ROOT --size 40 [--bucket-size short_side|area]

Reads image headers only (the buckets the sampler would form); prints JSON.
"""

from __future__ import annotations

import argparse
import json

from resflex.data.buckets import assign_buckets, image_sizes
from resflex.data.datasets import ImageFolderSource
from resflex.data.resolution import FixedResolution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--size", type=int, default=40)
    parser.add_argument("--bucket-size", default="short_side")
    args = parser.parse_args()
    schedule = FixedResolution(args.size, geometry="keep_aspect", bucket_size=args.bucket_size)
    sizes = image_sizes(ImageFolderSource(args.root).splits["train"])
    buckets = assign_buckets(sizes, schedule.aspect_ratios)
    shapes = [schedule.shape_for((args.size, args.size), schedule.aspect_ratios[b]) for b in buckets]
    mean_pixels = sum(h * w for h, w in shapes) / len(shapes)
    print(json.dumps({"images": len(shapes), "size": args.size, "bucket_size": args.bucket_size,
                      "mean_pixels": round(mean_pixels, 1),
                      "ratio_to_square": round(mean_pixels / args.size**2, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
