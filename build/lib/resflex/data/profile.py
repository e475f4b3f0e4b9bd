"""What the training images look like, and which geometry suits them (``resolution.geometry=auto``).

Read from image headers only (the same cheap size lookup the aspect buckets use,
:mod:`resflex.data.buckets`), on a seeded sample of at most ``max_images`` images,
before the first batch. The profile reports size and aspect-ratio percentiles,
and what each geometry costs the *average* image:

- ``square`` (centre crop at ``crop_pct=1``) discards ``1 - min(a, 1/a)`` of an
  image of aspect a = w/h: half of a 2:1 image;
- ``keep_aspect`` discards nothing (it stretches by at most half a bucket step);
- ``squash`` discards nothing (it distorts instead), ``pad`` discards nothing
  (its canvas carries ``1 - min(a, 1/a)`` padding instead).

``auto`` picks ``square`` when a square centre crop would discard less than
:data:`AUTO_CROP_LOSS` of the average image (the classic recipe, nothing to
gain), and otherwise :data:`AUTO_WIDE_GEOMETRY`, ``keep_aspect``: the whole
image, its aspect kept within half a bucket step. Which one was measured, not
assumed (experiments/variable_size/, 3 seeds, validation accuracy: that study has
no test split): on images of aspect 0.5-2 with
an object anywhere (resnet18, 40 px) keep_aspect is within noise of ``squash``
with the average head (0.389 vs 0.402) and ahead with the pyramid head (0.403
vs 0.394), and on the embedded synthetic shapes, where stretching changes what
a shape looks like, it is far ahead (the default run: val/acc 0.786 vs 0.692).
``pad`` spends up to half of a small canvas on padding; square crops cut
objects at the edges out.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resflex.data.sizes import DEFAULT_ASPECTS

#: a square centre crop losing at least this share of the average image means "aspects spread widely"
AUTO_CROP_LOSS = 0.10
#: the geometry ``auto`` picks for widely spread aspects (measured: experiments/variable_size/)
AUTO_WIDE_GEOMETRY = "keep_aspect"
PERCENTILES = (5, 25, 50, 75, 95)


def crop_loss(width: int, height: int, target_aspect: float = 1.0) -> float:
    """Share of a (width, height) image that a centre crop to ``target_aspect`` (w/h) discards."""
    aspect = width / height
    return 1.0 - min(aspect / target_aspect, target_aspect / aspect)


@dataclass
class DatasetProfile:
    """Sizes of (a sample of) a split's images, as (width, height), and what follows from them."""

    sizes: list[tuple[int, int]]
    total: int
    aspect_ratios: Sequence[float] = DEFAULT_ASPECTS
    geometry: str | None = None
    reason: str = ""
    mean_color: tuple[int, int, int] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_sizes(
        cls,
        sizes: Sequence[tuple[int, int]],
        aspect_ratios: Sequence[float] = DEFAULT_ASPECTS,
        total: int | None = None,
    ) -> DatasetProfile:
        if not sizes:
            raise ValueError("a dataset profile needs at least one image size")
        return cls(list(sizes), total if total is not None else len(sizes), tuple(aspect_ratios))

    # ---- statistics ------------------------------------------------------------
    @property
    def aspects(self) -> np.ndarray:
        return np.array([w / h for w, h in self.sizes], dtype=np.float64)

    def percentiles(self) -> dict[str, dict[str, float]]:
        widths = np.array([w for w, _ in self.sizes], dtype=np.float64)
        heights = np.array([h for _, h in self.sizes], dtype=np.float64)
        out = {}
        for name, values in (("width", widths), ("height", heights), ("aspect", self.aspects)):
            out[name] = {f"p{p}": round(float(np.percentile(values, p)), 3) for p in PERCENTILES}
        return out

    def discarded(self, geometry: str) -> float:
        """Mean share of an image that ``geometry``'s evaluation framing discards (crop_pct=1)."""
        if geometry in ("squash", "pad", "keep_aspect"):
            return 0.0
        return float(np.mean([crop_loss(w, h) for w, h in self.sizes]))

    def padding(self) -> float:
        """Mean share of a square ``pad`` canvas that is padding."""
        return float(np.mean([crop_loss(w, h) for w, h in self.sizes]))

    # ---- the choice ------------------------------------------------------------
    def choose_geometry(self) -> tuple[str, str]:
        """(geometry, one-line reason) for ``resolution.geometry=auto``."""
        loss = self.discarded("square")
        p5, p95 = (float(np.percentile(self.aspects, p)) for p in (5, 95))
        spread = f"aspect w/h {p5:.2f}-{p95:.2f} (5th-95th percentile)"
        if loss < AUTO_CROP_LOSS:
            return "square", f"{spread}: a square centre crop keeps {1 - loss:.0%} of the average image"
        return AUTO_WIDE_GEOMETRY, (
            f"{spread}: a square centre crop would discard {loss:.0%} of the average image; "
            f"{AUTO_WIDE_GEOMETRY} keeps all of it (experiments/variable_size/)"
        )

    # ---- reporting -------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.total,
            "profiled": len(self.sizes),
            **self.percentiles(),
            "discarded": {g: round(self.discarded(g), 4) for g in ("square", "keep_aspect", "squash", "pad")},
            "pad_share": round(self.padding(), 4),
            "geometry": self.geometry,
            "reason": self.reason,
            "mean_color": list(self.mean_color) if self.mean_color else None,
            **self.extras,
        }

    def lines(self) -> list[str]:
        """The console summary: a few lines a person reads before training starts."""
        pct = self.percentiles()

        def row(name: str, fmt: str) -> str:
            return " ".join(f"{k}={v:{fmt}}" for k, v in pct[name].items())

        sample = "" if len(self.sizes) == self.total else f" (profiled a sample of {len(self.sizes)})"
        lines = [
            f"data profile: {self.total} training images{sample}",
            f"  width  {row('width', '.0f')}",
            f"  height {row('height', '.0f')}",
            f"  aspect {row('aspect', '.2f')} (w/h)",
            "  centre crop discards, per average image: "
            + ", ".join(f"{g} {self.discarded(g):.0%}" for g in ("square", "keep_aspect", "squash", "pad")),
        ]
        if self.geometry:
            lines.append(f"  geometry: {self.geometry} ({self.reason})")
        return lines

    def figure(self) -> Any:
        """Histograms of aspect ratio (log scale) and of the sides: for TensorBoard's IMAGES tab."""
        from matplotlib.figure import Figure  # no pyplot: no global figure state in a training process

        fig = Figure(figsize=(9, 3.2))
        ax_aspect, ax_side = fig.subplots(1, 2)
        aspects = self.aspects
        bins = np.exp(np.linspace(math.log(min(aspects.min(), 0.5)), math.log(max(aspects.max(), 2.0)), 30))
        ax_aspect.hist(aspects, bins=bins, color="#4477aa")
        ax_aspect.set_xscale("log")
        ax_aspect.set_xlabel("aspect ratio w/h (log)")
        ax_aspect.set_ylabel("images")
        for a in self.aspect_ratios:
            ax_aspect.axvline(a, color="#999999", lw=0.8, ls=":")
        ax_side.hist([w for w, _ in self.sizes], bins=30, alpha=0.6, label="width", color="#ee6677")
        ax_side.hist([h for _, h in self.sizes], bins=30, alpha=0.6, label="height", color="#228833")
        ax_side.set_xlabel("pixels")
        ax_side.legend()
        title = f"training images: {self.total}"
        if self.geometry:
            title += f" - geometry {self.geometry}"
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        return fig


def sample_indices(count: int, max_images: int, seed: int = 0) -> list[int]:
    """All indices when ``count <= max_images``, else a seeded sorted sample of ``max_images``."""
    if count <= max_images:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), max_images))
