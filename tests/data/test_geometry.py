"""Geometries (square, keep_aspect, squash, pad, auto): what a person sees come out of the transforms.

A disc must stay a disc: drawn on canvases of aspect 0.5, 1 and 2, it leaves the
training pipeline of every schedule with its aspect inside the configured ratio
range (``squash`` stretches by design and is checked to stretch exactly as
promised), and leaves evaluation round within a pixel.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from resflex.data.buckets import assign_buckets
from resflex.data.datamodule import ResflexDataModule
from resflex.data.datasets import ImageSource
from resflex.data.profile import DatasetProfile
from resflex.data.resolution import (
    FixedResolution,
    FixResResolution,
    MultigridResolution,
    ProgressiveResolution,
    RandomResolution,
)
from resflex.data.transforms import EvalTransform, TrainTransform
from resflex.errors import ConfigError

RATIO = (3 / 4, 4 / 3)
CANVASES = [(240, 120), (160, 160), (120, 240)]  # (width, height): aspect 2, 1, 0.5


def disc_image(
    width: int, height: int, centre: tuple[float, float] | None = None, radius: float | None = None
):
    image = Image.new("RGB", (width, height), (0, 0, 0))
    r = radius or 0.22 * min(width, height)
    cx, cy = centre or (width / 2, height / 2)
    ImageDraw.Draw(image).ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 255, 255))
    return image


def disc_aspect(tensor: torch.Tensor) -> float | None:
    """w/h of the white disc from its second moments; None when it touches the border (cut)."""
    mask = tensor.float().mean(dim=0) > 127
    if mask.sum() < 30 or mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
        return None
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return math.sqrt(xs.float().var().item() / ys.float().var().item())


class DiscSource(ImageSource):
    """Discs on canvases of aspect 0.5, 1 and 2 (two classes, so the data module has labels)."""

    def __init__(self, repeats: int = 8) -> None:
        images = [disc_image(w, h) for w, h in CANVASES for _ in range(repeats)]
        self.classes = ["a", "b"]
        self.splits = {"train": _Images(images), "val": _Images(images)}


class _Images(Dataset):
    def __init__(self, images: Sequence[Image.Image]) -> None:
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.images[index], index % 2


SCHEDULES = {
    "fixed": lambda g: FixedResolution(64, geometry=g),
    "progressive": lambda g: ProgressiveResolution(48, 64, geometry=g).bind(3),
    "random": lambda g: RandomResolution([48, 64], geometry=g),
    "multigrid": lambda g: MultigridResolution(64, geometry=g, long_factors=[0.75, 1.0]).bind(3),
    "fixres": lambda g: FixResResolution(48, 64, final_epochs=1, geometry=g).bind(3),
}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("geometry", ["square", "keep_aspect", "pad", "squash", "auto"])
def test_disc_keeps_its_aspect_through_training_batches(schedule: str, geometry: str) -> None:
    data = ResflexDataModule(DiscSource(), SCHEDULES[schedule](geometry), batch_size=6, num_workers=0)
    assert data.schedule.geometry != "auto"  # resolved from the profile (these canvases: squash)
    loader = data.train_dataloader()
    sampler = loader.batch_sampler
    measured = 0
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for images, _ in loader:
            for image in images:
                aspect = disc_aspect(image)
                if aspect is None:
                    continue
                measured += 1
                if data.schedule.geometry == "squash":
                    continue  # checked exactly in test_squash_stretches_by_the_canvas_aspect
                assert RATIO[0] - 0.06 <= aspect <= RATIO[1] + 0.06, (geometry, tuple(image.shape), aspect)
    assert measured >= 20


@pytest.mark.parametrize("geometry", ["square", "keep_aspect", "pad"])
@pytest.mark.parametrize("canvas", CANVASES)
@pytest.mark.parametrize("size", [(64, 64), (48, 96), (96, 48), (40, 56)])
def test_eval_keeps_the_disc_round_within_a_pixel(geometry: str, canvas: tuple[int, int], size) -> None:
    if geometry == "keep_aspect":  # evaluated at its bucket's shape, as the data module does
        schedule = FixedResolution(list(size), geometry="keep_aspect")
        bucket = assign_buckets([canvas], schedule.aspect_ratios)[0]
        size = schedule.shape_for(size, schedule.aspect_ratios[bucket])
    out = EvalTransform(geometry=geometry)(disc_image(*canvas), size)
    assert out.shape == (3, *size)
    mask = out.float().mean(dim=0) > 127
    ys, xs = torch.nonzero(mask, as_tuple=True)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert abs(int(width) - int(height)) <= 1, (width, height)


@pytest.mark.parametrize("canvas", CANVASES)
def test_squash_stretches_by_the_canvas_aspect(canvas: tuple[int, int]) -> None:
    """squash ignores aspect on purpose: a disc on a w:h canvas comes out (h/w)-stretched, whole."""
    out = EvalTransform(geometry="squash")(disc_image(*canvas), (64, 64))
    aspect = disc_aspect(out)
    assert aspect is not None
    assert aspect == pytest.approx(canvas[1] / canvas[0], rel=0.06)


@pytest.mark.parametrize("geometry", ["pad", "squash", "keep_aspect"])
def test_whole_image_geometries_never_cut_an_edge_object_out(geometry: str) -> None:
    """A disc touching the right edge of a 2:1 canvas stays (almost) whole in every training draw;
    a square random-resized crop loses it in a good share of draws."""
    image = disc_image(200, 100, centre=(160, 50), radius=40)  # 80 % of the short side, at the edge
    whole = TrainTransform(geometry=geometry, hflip=False)
    crop = TrainTransform(geometry="square", hflip=False)
    full = EvalTransform(geometry=geometry)(image, (48, 48)).float().mean(dim=0).gt(127).sum().item()
    lost_by_crop = 0
    for seed in range(40):
        torch.manual_seed(seed)
        visible = whole(image, (48, 48)).float().mean(dim=0).gt(127).sum().item()
        assert visible >= 0.6 * full, (seed, visible, full)  # shrunk by at most whole_scale, never cut away
        torch.manual_seed(seed)
        lost_by_crop += crop(image, (48, 48)).float().mean(dim=0).gt(127).sum().item() < 0.5 * full
    assert lost_by_crop >= 5


def test_pad_fills_with_the_given_colour_and_centres_in_eval() -> None:
    image = Image.new("RGB", (100, 50), (255, 0, 0))
    out = EvalTransform(geometry="pad", fill=(1, 2, 3))(image, (40, 40))
    assert out[:, :10].reshape(3, -1).T.unique(dim=0).tolist() == [[1, 2, 3]]  # top band
    assert out[:, 30:].reshape(3, -1).T.unique(dim=0).tolist() == [[1, 2, 3]]  # bottom band
    assert out[0, 10:30].min() > 200 and out[1, 10:30].max() < 30  # the red image, whole width


def test_train_pad_shrinks_the_fitted_image_to_whole_scale_of_its_area() -> None:
    """whole_scale is a share of the *area*: at 0.64 each side of the fitted image keeps 0.8."""
    image = Image.new("RGB", (100, 50), (255, 0, 0))
    pad = TrainTransform(geometry="pad", whole_scale=(0.64, 0.64), fill=(0, 0, 255), hflip=False)
    for seed in range(5):
        torch.manual_seed(seed)
        red = pad(image, (60, 60))[0] > 127  # fitted 60 x 30, then 0.8 of each side: 48 x 24
        rows, cols = red.any(dim=1).nonzero(), red.any(dim=0).nonzero()
        assert (len(rows), len(cols)) == (24, 48), seed
        assert int(red.sum()) == 24 * 48


def test_eval_square_covers_the_size_over_crop_pct_before_the_centre_crop() -> None:
    """crop_pct=0.875 (timm's): resize so the crop is 87.5 % of the resized image, then crop the centre."""
    square = EvalTransform(crop_pct=0.875)
    assert square.cover_size(100, 100, (64, 64)) == [74, 74]  # 64 / 0.875 = 73.1, rounded up
    assert square.cover_size(200, 100, (64, 64)) == [74, 147]  # the short side covers, aspect kept
    assert EvalTransform(crop_pct=1.0).cover_size(200, 100, (64, 64)) == [64, 128]
    image = Image.new("RGB", (100, 100), (0, 0, 0))
    ImageDraw.Draw(image).rectangle([0, 0, 5, 99], fill=(255, 255, 255))  # a white band at the left edge
    assert EvalTransform(crop_pct=1.0)(image, (64, 64))[:, :, 0].float().mean() > 200
    assert square(image, (64, 64))[:, :, 0].float().mean() < 30  # cropped away with the border


def test_square_geometry_is_torchvision_random_resized_crop_relative_to_the_target() -> None:
    """For a non-square target the crop's ratio range is relative to w/h: v2 RRC with ratio * w/h."""
    from torchvision.transforms import v2

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (83, 121, 3), dtype=np.uint8))
    size = (24, 56)
    aspect = size[1] / size[0]
    reference = v2.Compose(
        [
            v2.RandomResizedCrop(
                size, scale=(0.35, 1.0), ratio=(0.75 * aspect, 1.3333 * aspect), antialias=True
            ),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
        ]
    )
    ours = TrainTransform(scale=(0.35, 1.0), ratio=(0.75, 1.3333), geometry="square")
    for seed in range(8):
        torch.manual_seed(seed)
        expected = reference(image)
        torch.manual_seed(seed)
        assert torch.equal(ours(image, size), expected), seed


def test_unknown_geometry_is_one_line() -> None:
    with pytest.raises(ConfigError, match="resolution.geometry must be one of"):
        FixedResolution(64, geometry="round")
    with pytest.raises(ConfigError, match="resolution.geometry must be one of"):
        TrainTransform(geometry="round")


def test_auto_picks_an_aspect_preserving_geometry_for_spread_aspects_and_square_otherwise() -> None:
    """Spread aspects: keep_aspect, the measured choice (experiments/variable_size/); else square."""
    spread = DatasetProfile.from_sizes([(240, 120), (160, 160), (120, 240)] * 10)
    geometry, reason = spread.choose_geometry()
    assert geometry == "keep_aspect" and "discard 33%" in reason and "keeps all of it" in reason
    near_square = DatasetProfile.from_sizes([(100, 100), (110, 100), (100, 105)] * 10)
    assert near_square.choose_geometry()[0] == "square"
    assert spread.discarded("square") == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert spread.discarded("pad") == 0.0


def test_profile_lines_and_geometry_reach_the_console(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="resflex"):
        data = ResflexDataModule(DiscSource(2), FixedResolution(32), batch_size=4, num_workers=0)
    text = caplog.text
    assert "data profile: 6 training images" in text
    assert "aspect p5=0.50" in text and "p95=2.00" in text
    assert f"geometry: {data.schedule.geometry} (" in text and "discard 33%" in text
    numbers = data.profile.as_dict()
    assert numbers["discarded"]["square"] == pytest.approx(1 / 3, abs=1e-3)
    assert numbers["geometry"] == "keep_aspect" and numbers["mean_color"] is None  # a fill only for pad
    padded = ResflexDataModule(DiscSource(2), FixedResolution(32, geometry="pad"), num_workers=0)
    assert padded.profile.mean_color is not None and padded.eval_transform.fill == padded.profile.mean_color
    figure = data.profile.figure()
    assert len(figure.axes) == 2


def test_explicit_geometry_is_kept_and_said(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="resflex"):
        data = ResflexDataModule(DiscSource(2), FixedResolution(32, geometry="keep_aspect"), num_workers=0)
    assert data.schedule.geometry == "keep_aspect"
    assert "geometry: keep_aspect (set by resolution.geometry)" in caplog.text


def test_profile_of_a_held_out_split_reads_headers(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """Without a val/ folder the train split is a Subset: the profile maps it to the folder's headers."""
    from resflex.data.datasets import ImageFolderSource
    from tests.conftest import make_image_folder

    source = ImageFolderSource(str(make_image_folder(tmp_path / "images", per_class=8)), val_fraction=0.25)
    with caplog.at_level(logging.WARNING):
        data = ResflexDataModule(source, FixedResolution(32), num_workers=0)
    assert "decoding every image" not in caplog.text
    assert data.profile.total == len(source.splits["train"]) == 18
