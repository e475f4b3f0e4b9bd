"""The embedded default dataset: procedurally drawn shapes, no download needed.

Each sample is a pure function of (seed, index): an image of random size and
aspect ratio (sides drawn independently from [min_side, max_side]), a textured
background with small distractor blobs, and one object whose class is its
shape, drawn at a random scale (``object_scale`` of the shorter side), position,
rotation and colour. Size and scale vary on purpose: a classifier must cope with
objects that cover 20% or 80% of an image, which is what makes the pooling head
and the resolution schedule matter.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

SHAPES: tuple[str, ...] = (
    "circle",
    "ring",
    "square",
    "frame",
    "triangle",
    "diamond",
    "cross",
    "star",
    "stripes_h",
    "stripes_v",
)


def _rotate(
    points: list[tuple[float, float]], angle: float, cx: float, cy: float
) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def _regular_polygon(cx: float, cy: float, r: float, n: int, phase: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(phase + 2 * math.pi * k / n), cy + r * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float, fill: tuple
) -> None:
    """Draw ``shape`` centred at (cx, cy) with half-extent r."""
    width = max(1, round(r * 0.3))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=width)
    elif shape in ("square", "frame"):
        corners = _rotate(
            [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)], angle * 0.3, cx, cy
        )
        if shape == "square":
            draw.polygon(corners, fill=fill)
        else:
            draw.line([*corners, corners[0]], fill=fill, width=width, joint="curve")
    elif shape == "triangle":
        draw.polygon(_regular_polygon(cx, cy, r, 3, -math.pi / 2 + angle * 0.3), fill=fill)
    elif shape == "diamond":
        draw.polygon(
            _rotate(
                [(cx, cy - r), (cx + r * 0.6, cy), (cx, cy + r), (cx - r * 0.6, cy)], angle * 0.2, cx, cy
            ),
            fill=fill,
        )
    elif shape == "cross":
        arm = r * 0.3
        for box in (
            [(cx - r, cy - arm), (cx + r, cy - arm), (cx + r, cy + arm), (cx - r, cy + arm)],
            [(cx - arm, cy - r), (cx + arm, cy - r), (cx + arm, cy + r), (cx - arm, cy + r)],
        ):
            draw.polygon(_rotate(box, angle * 0.3, cx, cy), fill=fill)
    elif shape == "star":
        outer = _regular_polygon(cx, cy, r, 5, -math.pi / 2 + angle)
        inner = _regular_polygon(cx, cy, r * 0.4, 5, -math.pi / 2 + angle + math.pi / 5)
        draw.polygon([p for pair in zip(outer, inner, strict=True) for p in pair], fill=fill)
    elif shape in ("stripes_h", "stripes_v"):
        bar = r * 2 / 5
        for k in (0, 2, 4):
            lo = -r + k * bar
            if shape == "stripes_h":
                draw.rectangle([cx - r, cy + lo, cx + r, cy + lo + bar], fill=fill)
            else:
                draw.rectangle([cx + lo, cy - r, cx + lo + bar, cy + r], fill=fill)
    else:  # pragma: no cover - guarded by SHAPES
        raise ValueError(f"unknown shape {shape!r}")


class SyntheticShapes(Dataset):
    """``dataset[i] -> (RGB PIL image, label)``, deterministic in (seed, i)."""

    classes: tuple[str, ...] = SHAPES

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        min_side: int = 40,
        max_side: int = 112,
        object_scale: Sequence[float] = (0.35, 0.9),
        distractors: int = 1,
        noise: float = 10.0,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("num_samples must be positive")
        if not 8 <= min_side <= max_side:
            raise ValueError(f"need 8 <= min_side <= max_side, got {min_side}, {max_side}")
        self.num_samples = num_samples
        self.seed = seed
        self.min_side = min_side
        self.max_side = max_side
        self.object_scale = tuple(object_scale)
        self.distractors = distractors
        self.noise = noise

    def __len__(self) -> int:
        return self.num_samples

    def label(self, index: int) -> int:
        return index % len(self.classes)

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) of item ``index`` without drawing it (for aspect-ratio buckets)."""
        rng = random.Random(self.seed * 1_000_003 + index)
        return rng.randint(self.min_side, self.max_side), rng.randint(self.min_side, self.max_side)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        rng = random.Random(self.seed * 1_000_003 + index)
        label = self.label(index)
        width = rng.randint(self.min_side, self.max_side)
        height = rng.randint(self.min_side, self.max_side)
        background = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
        foreground = tuple(int((b + rng.randint(80, 176)) % 256) for b in background)

        # textured background: a colour plus low-frequency gradient plus pixel noise
        noise_rng = np.random.default_rng(self.seed * 7_919 + index)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        gradient = (xx / width * rng.uniform(-40, 40) + yy / height * rng.uniform(-40, 40))[..., None]
        pixels = (
            background + gradient + noise_rng.normal(0, self.noise, (height, width, 1)).astype(np.float32)
        )
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)

        short = min(width, height)
        for _ in range(self.distractors):
            dr = rng.uniform(0.02, 0.06) * short
            dx, dy = rng.uniform(0, width), rng.uniform(0, height)
            tint = tuple(int((c + rng.randint(-60, 60)) % 256) for c in foreground)
            draw.ellipse([dx - dr, dy - dr, dx + dr, dy + dr], fill=tint)

        r = rng.uniform(*self.object_scale) * short / 2
        cx = rng.uniform(r, width - r)
        cy = rng.uniform(r, height - r)
        draw_shape(draw, SHAPES[label], cx, cy, r, rng.uniform(-math.pi, math.pi), foreground)
        return image, label
