"""The embedded shapes (:mod:`resflex.data.synthetic`): what the default run learns from.

The module docstring promises each image one whole object, drawn at ``object_scale`` of the shorter
side, ten shapes that differ, and an ``image_size`` that agrees with the drawn image (the aspect
buckets and the data profile read it instead of drawing). These tests hold it to that.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

import resflex.data.synthetic as synthetic
from resflex.data.synthetic import SHAPES, SyntheticShapes, draw_shape


@pytest.mark.parametrize("seed", [0, 5])
def test_image_size_is_the_size_of_the_drawn_image(seed: int) -> None:
    """Width first, as PIL reports it: a swapped draw order would put portrait images in landscape buckets."""
    shapes = SyntheticShapes(40, seed=seed, min_side=20, max_side=90)
    sizes = [shapes.image_size(i) for i in range(40)]
    assert sizes == [shapes[i][0].size for i in range(40)]
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)


def test_indices_past_the_end_raise_index_error_so_iteration_stops() -> None:
    shapes = SyntheticShapes(7)
    assert len(list(shapes)) == 7
    for index in (7, -1):
        with pytest.raises(IndexError):
            shapes[index]


@pytest.mark.parametrize(("min_side", "max_side"), [(7, 40), (50, 40)])
def test_sides_outside_8_to_max_are_refused(min_side: int, max_side: int) -> None:
    with pytest.raises(ValueError, match="need 8 <= min_side <= max_side"):
        SyntheticShapes(4, min_side=min_side, max_side=max_side)


def test_each_object_lies_whole_inside_its_image_at_object_scale_of_the_shorter_side(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The object's half-extent r is object_scale/2 of the shorter side and its centre at least r from
    every edge: no shape is cut by the image border (the crop cuts it, if anything)."""
    drawn: list[tuple[float, float, float]] = []

    def record(draw, shape, cx, cy, r, angle, fill) -> None:
        drawn.append((cx, cy, r))
        draw_shape(draw, shape, cx, cy, r, angle, fill)

    monkeypatch.setattr(synthetic, "draw_shape", record)
    shapes = SyntheticShapes(30, seed=2, min_side=24, max_side=96, object_scale=(0.4, 0.8))
    for i in range(30):
        width, height = shapes[i][0].size
        cx, cy, r = drawn[i]
        short = min(width, height)
        assert 0.4 * short / 2 <= r <= 0.8 * short / 2
        assert r <= cx <= width - r and r <= cy <= height - r


def _drawn(shape: str) -> np.ndarray:
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    draw_shape(ImageDraw.Draw(image), shape, 32, 32, 24, 0.0, (255, 255, 255))
    return np.asarray(image)[..., 0] > 127


def test_the_ten_shapes_are_ten_different_pictures_and_outlines_are_hollow() -> None:
    """A class is its shape: two classes drawn alike could not be learned apart. The ring and the frame
    are outlines (their centre is background), the circle and the square filled."""
    masks = {shape: _drawn(shape) for shape in SHAPES}
    for i, a in enumerate(SHAPES):
        for b in SHAPES[i + 1 :]:
            assert (masks[a] != masks[b]).sum() > 20, (a, b)
    assert not masks["ring"][32, 32] and not masks["frame"][32, 32]
    assert masks["circle"][32, 32] and masks["square"][32, 32]
