"""The data profile (:mod:`resflex.data.profile`): the numbers a person reads before training, and
the framing ``resolution.geometry=auto`` takes from them.

Each expected value here is worked out by hand from the sizes given, so a profile that mixes up
widths and heights, miscounts the images or moves the auto threshold shows up as a wrong number.
"""

from __future__ import annotations

import logging

import pytest

from resflex.data.datamodule import ResflexDataModule
from resflex.data.datasets import SyntheticSource
from resflex.data.profile import AUTO_CROP_LOSS, DatasetProfile, crop_loss, sample_indices
from resflex.data.resolution import FixedResolution


def test_auto_discarding_exactly_the_threshold_is_already_wide() -> None:
    """``auto`` keeps ``square`` only while a centre crop discards *less than* 10% of the average image.

    Two 4:3 images (each loses 25%) among five make exactly 10%: keep_aspect. One more square
    image (8.3%) stays square.
    """
    assert AUTO_CROP_LOSS == 0.10
    at_threshold = DatasetProfile.from_sizes([(400, 300)] * 2 + [(300, 300)] * 3)
    assert at_threshold.discarded("square") == AUTO_CROP_LOSS
    geometry, reason = at_threshold.choose_geometry()
    assert geometry == "keep_aspect" and "would discard 10% of the average image" in reason
    below = DatasetProfile.from_sizes([(400, 300)] * 2 + [(300, 300)] * 4)
    geometry, reason = below.choose_geometry()
    assert geometry == "square" and "keeps 92% of the average image" in reason


def test_auto_reason_quotes_the_5th_and_95th_percentile_aspects() -> None:
    """31 images of aspect 0.50 to 2.00 in steps of 0.05: the 5th percentile is 0.575, the 95th 1.925."""
    profile = DatasetProfile.from_sizes([(w, 100) for w in range(50, 201, 5)])
    geometry, reason = profile.choose_geometry()
    assert geometry == "keep_aspect"
    assert reason.startswith(
        "aspect w/h 0.57-1.92 (5th-95th percentile): a square centre crop would discard 29%"
    )


def test_crop_loss_is_measured_against_the_target_aspect() -> None:
    """A 2:1 image loses nothing to a 2:1 crop and half to a square one; a square image half to 2:1."""
    assert crop_loss(200, 100) == pytest.approx(0.5)
    assert crop_loss(200, 100, target_aspect=2.0) == pytest.approx(0.0)
    assert crop_loss(100, 100, target_aspect=2.0) == pytest.approx(0.5)
    assert crop_loss(100, 300, target_aspect=0.5) == pytest.approx(1 - (1 / 3) / 0.5)


def test_widths_and_heights_are_reported_under_their_own_names() -> None:
    """Portrait images (h = 2w): the width row holds the small numbers, the height row the large ones."""
    profile = DatasetProfile.from_sizes([(w, 2 * w) for w in (30, 40, 50, 60, 70)])
    pct = profile.percentiles()
    assert pct["width"]["p50"] == 50.0 and pct["height"]["p50"] == 100.0
    assert pct["width"]["p5"] == 32.0 and pct["height"]["p95"] == 136.0
    assert pct["aspect"]["p50"] == 0.5
    lines = profile.lines()
    assert lines[1] == "  width  p5=32 p25=40 p50=50 p75=60 p95=68"
    assert lines[2] == "  height p5=64 p25=80 p50=100 p75=120 p95=136"


def test_only_the_square_crop_discards_and_the_console_says_so() -> None:
    """keep_aspect, squash and pad keep the whole image; the square crop cuts half of a 1:2 image."""
    profile = DatasetProfile.from_sizes([(50, 100)] * 4)
    assert profile.as_dict()["discarded"] == {"square": 0.5, "keep_aspect": 0.0, "squash": 0.0, "pad": 0.0}
    assert profile.as_dict()["pad_share"] == 0.5
    assert profile.lines()[4].endswith("square 50%, keep_aspect 0%, squash 0%, pad 0%")


def test_a_sampled_profile_counts_every_image_and_says_it_sampled() -> None:
    """Five sizes read out of 40 images: the report counts 40 and says only five were profiled."""
    sampled = DatasetProfile.from_sizes([(w, 2 * w) for w in (30, 40, 50, 60, 70)], total=40)
    assert sampled.lines()[0] == "data profile: 40 training images (profiled a sample of 5)"
    assert {k: sampled.as_dict()[k] for k in ("images", "profiled")} == {"images": 40, "profiled": 5}
    whole = DatasetProfile.from_sizes([(30, 60)] * 5)
    assert whole.lines()[0] == "data profile: 5 training images"
    assert {k: whole.as_dict()[k] for k in ("images", "profiled")} == {"images": 5, "profiled": 5}


def test_the_data_module_profiles_a_seeded_sample_of_a_large_split(caplog: pytest.LogCaptureFixture) -> None:
    """``profile_images`` below the split's size: a sample is profiled, the console counts every image."""
    source = SyntheticSource(num_train=30, num_val=4, num_test=0)
    with caplog.at_level(logging.INFO, logger="resflex"):
        data = ResflexDataModule(source, FixedResolution(32), num_workers=0, profile_images=12)
    assert data.profile.total == 30 and len(data.profile.sizes) == 12
    assert "data profile: 30 training images (profiled a sample of 12)" in caplog.text
    train = source.splits["train"]
    assert data.profile.sizes == [train.image_size(i) for i in sample_indices(30, 12, seed=0)]


def test_sample_indices_are_all_of_a_small_split_and_a_seeded_sorted_sample_of_a_large_one() -> None:
    """The seed picks the sample (two seeds, two samples; one seed, always the same one)."""
    assert sample_indices(5, 5) == [0, 1, 2, 3, 4]
    first = sample_indices(1000, 20, seed=1)
    assert first == sample_indices(1000, 20, seed=1)
    assert first == sorted(set(first)) and len(first) == 20 and all(0 <= i < 1000 for i in first)
    assert sample_indices(1000, 20, seed=2) != first
