"""The studies' variable-size folder generator (experiments/variable_size/make_data.py), shapes variant.

The robustness study measures its targets on a folder drawn by this script; the numbers are only
worth what the folder is: every class present, canvases of the promised sizes and aspects, the
object whole (a clipped square looks like an octagon), and the same folder for the same seed.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from resflex.data.synthetic import SHAPES
from tests.conftest import load_experiment


def _make_data() -> ModuleType:
    return load_experiment("variable_size", "make_data")


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_glyph_is_whole_at_every_angle(shape: str) -> None:
    """The glyph's border is empty whatever the rotation: no shape is cut by its own box."""
    make_data = _make_data()
    rng = np.random.default_rng(0)
    for _ in range(16):
        glyph = make_data.shape_glyph(shape, rng, side=56)
        assert glyph.shape == (56, 56) and glyph.dtype == np.uint8
        border = np.concatenate([glyph[0], glyph[-1], glyph[:, 0], glyph[:, -1]])
        assert border.max() == 0, f"{shape} touches its box"
        assert glyph.max() == 255 and (glyph > 127).mean() > 0.05  # drawn, not a speck


def test_shapes_folder_has_every_class_in_every_split_and_is_deterministic(tmp_path: Path) -> None:
    make_data = _make_data()
    make_data.build(tmp_path / "a", 3, 2, seed=5, mnist_root="unused", test_per_class=1, objects="shapes")
    make_data.build(tmp_path / "b", 3, 2, seed=5, mnist_root="unused", test_per_class=1, objects="shapes")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    for split, per_class in (("train", 3), ("val", 2), ("test", 1)):
        folders = sorted(p.name for p in (tmp_path / "a" / split).iterdir())
        assert folders == sorted(SHAPES)
        for folder in folders:
            files = sorted((tmp_path / "a" / split / folder).iterdir())
            assert len(files) == per_class
            for file in files:
                with Image.open(file) as image:
                    width, height = image.size
                assert 24 <= height <= 128
                assert 0.5 - 1 / height <= width / height <= 2 + 1 / height
    make_data.build(tmp_path / "c", 3, 2, seed=6, mnist_root="unused", test_per_class=1, objects="shapes")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_shapes_object_is_visible_on_its_canvas() -> None:
    """The object differs from the background: the canvas has two colour clusters, not one."""
    make_data = _make_data()
    rng = np.random.default_rng(1)
    glyph = make_data.shape_glyph("circle", rng, side=112)
    image = np.asarray(make_data.make_image(glyph, rng, noise_sd=0.0, object_scale=(0.9, 1.0)), np.float32)
    colours = image.reshape(-1, 3)
    spread = np.linalg.norm(colours - colours[0], axis=1)
    assert math.isclose(float((spread < 1).mean()) + float((spread > 60).mean()), 1.0, abs_tol=0.1)
