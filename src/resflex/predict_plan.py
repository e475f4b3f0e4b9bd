"""What ``scripts/predict.py`` predicts and at which size: the input files, the size each image runs at,
and batches of one shape.

Apart from :mod:`resflex.predict` (the command: decode, classify, write, print) because choosing sizes is
its own piece of logic, tested without a model (``tests/test_predict_auto_size.py``), and the command
reads better without it.

``input`` is an image, a folder, or a folder tree (image files by extension, as image folders are read
for training); a folder is *labelled* when every image lies in ``<input>/<class>/...``.

Sizes: ``predict.size=null`` (the run's eval size), ``64`` or ``[h, w]``, or
``native``: every image near its own size and aspect — the image's area, capped
by ``predict.max_side``, on its aspect-ratio bucket's shape (the run's
``aspect_ratios``), sides rounded to the run's ``multiple`` — and batched by bucket
and shape, so a batch never mixes shapes and no image is resized far from what it is.

``auto``: every image at the size the model is best at for it. The candidates are the
run's *robust sizes*: of its accuracy-per-size curve (``metrics.json``'s
``val/acc@<size>``, else ``test/acc@<size>``) the contiguous sizes around the best one
whose accuracy stays within 0.03 of the best, as
:func:`resflex.training.robustness.summarize_sizes` defines ``acc_range``; a run without
a curve has one candidate, its eval size. Each image gets the candidate whose shape is
closest to the image in log scale — by the side of the square of equal area,
sqrt(h*w), of the image and of the candidate's shape (for ``keep_aspect`` runs its
aspect bucket's shape at that size, as for a fixed size; otherwise the size itself) —
so an image smaller than every robust size runs at the smallest, a larger one at the
largest, and none at a size the model was not measured to hold up at. Images are
batched by shape, as for ``native``.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from resflex.data.bad_images import BadImageError
from resflex.data.buckets import assign_buckets, file_image_size
from resflex.data.images import IMAGE_EXTENSIONS
from resflex.data.sizes import check_bucketed_size, parse_size, round_to
from resflex.errors import ConfigError, DataError
from resflex.inference import ResflexClassifier
from resflex.robust_range import robust_ranges
from resflex.types import Size


@dataclass
class Inputs:
    """The files to predict, their labels when ``input`` is a labelled folder, and what was left out."""

    root: Path
    files: list[Path]
    labels: list[int | None]
    ignored: int = 0  # files without an image extension

    @property
    def labelled(self) -> bool:
        return bool(self.files) and all(label is not None for label in self.labels)


def input_path(path: object) -> Path:
    """``input``, set and existing, or a one-line error (checked before the checkpoint is loaded)."""
    if path is None or str(path) in ("", "None", "???"):
        raise ConfigError("input is not set", hint="pass input=/path/to/image_or_folder")
    root = Path(str(path)).expanduser()
    if not root.exists():
        raise DataError(f"input not found: {root}", hint="pass an image file or a folder of images")
    return root


def collect_inputs(path: str | Path, classes: list[str]) -> Inputs:
    """An image file, or every image under a folder (recursive, sorted like ``DatasetFolder``).

    The folder is *labelled* when every image lies in ``<input>/<class>/...`` with a
    class name of the model: the layout of a training/validation split.
    """
    root = input_path(path)
    if root.is_file():
        return Inputs(root=root.parent, files=[root], labels=[None])
    files: list[Path] = []
    ignored = 0
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(Path(folder) / name)
            elif not name.startswith("."):
                ignored += 1
    if not files:
        raise DataError(
            f"no image files under {root}" + (f" ({ignored} other files)" if ignored else ""),
            hint=f"image extensions: {', '.join(IMAGE_EXTENSIONS)}",
        )
    index = {name: i for i, name in enumerate(classes)}
    labels: list[int | None] = []
    for file in files:
        parts = file.relative_to(root).parts
        labels.append(index.get(parts[0]) if len(parts) > 1 else None)
    return Inputs(root=root, files=files, labels=labels, ignored=ignored)


#: the named ``predict.size`` values (a side or [h, w] otherwise)
NAMED_SIZES = ("native", "auto")


def parse_predict_size(value: Any, classifier: ResflexClassifier) -> Size | str:
    """``null`` -> the run's eval size; ``native``; ``auto``; ``64`` or ``[h, w]`` (checked against the
    backbone; ``[h, w]`` must be square on a ``keep_aspect`` run: :func:`check_bucketed_size`)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if value is None:
        size = classifier.eval_size or (64, 64)
    elif isinstance(value, str) and value.lower() in NAMED_SIZES:
        return value.lower()
    else:
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        try:
            size = parse_size(value, "predict.size")
        except ConfigError as exc:
            raise ConfigError(
                exc.message, hint="predict.size=64, predict.size=[48,80], predict.size=native or auto"
            ) from None
        # keep_aspect: one side gives every bucket's shape; [h, w] is refused as scripts/eval.py does
        info = classifier.info
        check_bucketed_size(
            size, str(info.get("geometry")), str(info.get("bucket_size", "short_side")), "predict.size"
        )
    classifier.check_size(size, "predict.size")
    return size


def auto_sizes(metrics: Mapping[str, Any], main: Size) -> tuple[list[Size], str]:
    """``predict.size=auto``'s candidates and where they come from: the robust sizes of the val
    curve (``"val"``), else of the test curve (``"test"``), else ``[main]`` (``"eval size"``).

    ``metrics``: the run's ``metrics.json`` metrics (``ResflexClassifier.info["metrics"]``).
    """
    ranges = robust_ranges(metrics, main)
    if not ranges:
        return [main], "eval size"
    return ranges[0].sizes, ranges[0].stage


def nearest_size(side: float, sizes: Sequence[Size], shape_of: Callable[[Size], Size] | None = None) -> Size:
    """The size in ``sizes`` whose shape is closest to an image of side ``side`` (sqrt of its area),
    in log scale: ratios count, not pixels (24 px is as far from 48 as 96 is).

    ``shape_of(size)``: the (h, w) an image runs at for ``size`` (its aspect bucket's shape for
    ``keep_aspect``); default the size itself. A tie goes to the larger size (more detail).
    """
    if not sizes:
        raise ValueError("nearest_size needs at least one size")
    side = max(float(side), 1e-6)

    def distance(size: Size) -> tuple[float, int]:
        h, w = shape_of(size) if shape_of is not None else size
        # rounded: a tie up to float error (an image at the geometric mean of two sizes) is a tie
        return round(abs(math.log(math.sqrt(h * w) / side)), 9), -size[0] * size[1]

    return min(sizes, key=distance)


def framed_shape(schedule: Any, size: Size, aspect: float) -> Size:
    """The (h, w) a fixed ``size`` runs at for an image in the aspect bucket ``aspect``: the bucket's
    shape for ``keep_aspect`` (:meth:`ResolutionSchedule.shape_for`, as evaluation frames it), else
    the size itself."""
    if schedule is None:
        return size
    h, w = schedule.shape_for(size, aspect)
    return int(h), int(w)


@dataclass
class Plan:
    """Batches of file indices, each with one (h, w); ``bucket`` per batch (None: no bucketing);
    ``sizes``: the size each file runs at (``predict.size``'s value for it: auto's choice,
    native's shape)."""

    batches: list[tuple[Size, list[int], int | None]] = field(default_factory=list)
    unreadable: dict[int, str] = field(default_factory=dict)
    sizes: dict[int, Size] = field(default_factory=dict)


def plan_batches(
    files: list[Path],
    size: Size | str,
    batch_size: int,
    geometry: str,
    schedule: Any,
    aspect_ratios: list[float],
    multiple: int,
    min_side: int,
    max_side: int,
    candidates: list[Size] | None = None,
) -> Plan:
    """Group files into batches of one shape.

    A fixed size with ``keep_aspect`` mirrors evaluation (bucket shape at the size's
    area, :meth:`ResolutionSchedule.shape_for`); other geometries use the size as is.
    ``native``: bucket by aspect, then the image's own area (sides clamped to
    ``[min_side, max_side]``) on the bucket's shape, rounded to ``multiple``.
    ``auto``: each image at the size of ``candidates`` (:func:`auto_sizes`) nearest to it
    (:func:`nearest_size`), framed as that fixed size would be. Header reads only;
    files whose header does not parse are set aside as unreadable.
    """
    plan = Plan()
    if size == "auto" and not candidates:
        raise ValueError("predict.size=auto needs candidate sizes")
    need_sizes = size in NAMED_SIZES or geometry == "keep_aspect"
    sizes: dict[int, tuple[int, int]] = {}
    if need_sizes:
        for i, file in enumerate(files):
            try:
                sizes[i] = file_image_size(str(file))
            except Exception as exc:
                plan.unreadable[i] = str(BadImageError(file, exc).message)
    readable = [i for i in range(len(files)) if i not in plan.unreadable]
    groups: dict[tuple[Size, int | None], list[int]] = defaultdict(list)
    if not need_sizes:
        assert not isinstance(size, str)  # a named size (NAMED_SIZES) needs the images' sizes
        groups[(size, None)] = readable
        plan.sizes = dict.fromkeys(readable, size)
    else:
        ratios = aspect_ratios or [1.0]
        buckets = assign_buckets([sizes[i] for i in readable], ratios)
        for i, bucket in zip(readable, buckets, strict=True):
            aspect = ratios[bucket]
            framed = partial(framed_shape, schedule, aspect=aspect)
            if size == "native":
                width, height = sizes[i]
                side = max(math.sqrt(width * height), min_side)
                h, w = side / math.sqrt(aspect), side * math.sqrt(aspect)  # the bucket's aspect
                scale = min(1.0, max_side / max(h, w))  # the long side within max_side, aspect kept
                h, w = h * scale, w * scale
                shape = (
                    min(max(round_to(h, multiple), min_side), max_side),
                    min(max(round_to(w, multiple), min_side), max_side),
                )
                plan.sizes[i] = shape
            elif size == "auto":
                width, height = sizes[i]
                plan.sizes[i] = nearest_size(math.sqrt(width * height), candidates or [], framed)
                shape = framed(plan.sizes[i])
            else:
                assert not isinstance(size, str)  # neither name: a fixed (h, w)
                shape = framed(size)
                plan.sizes[i] = size
            # auto buckets only where the framing does (keep_aspect); native always does
            bucketed = size != "auto" or geometry == "keep_aspect"
            groups[(shape, bucket if bucketed else None)].append(i)
    for (batch_shape, batch_bucket), members in sorted(
        groups.items(), key=lambda item: (item[0][1] or 0, item[0][0])
    ):
        for start in range(0, len(members), batch_size):
            plan.batches.append((batch_shape, members[start : start + batch_size], batch_bucket))
    return plan
