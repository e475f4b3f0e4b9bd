"""Aspect buckets for ``geometry=keep_aspect`` (:mod:`resflex.data.buckets`): which bucket each image
joins, and where the images of a bucket too small for a batch go.

Both choices are "nearest in log aspect": a 2:1 image is as far from square as a 1:2 one. The
cases below are chosen so that nearest in linear aspect, or nearest by bucket index, would
answer differently.
"""

from __future__ import annotations

import logging

import pytest
from PIL import Image
from torch.utils.data import Dataset, Subset

from resflex.data.buckets import assign_buckets, image_sizes, merge_small_buckets


def test_an_image_joins_the_bucket_nearest_in_log_aspect() -> None:
    """Aspect 1.45 lies above the log midpoint of 1 and 2 (sqrt(2) = 1.414): the 2:1 bucket.

    In linear aspect it would be nearer 1 (0.45 against 0.55). Portrait mirrors landscape.
    """
    assert assign_buckets([(145, 100), (100, 145), (140, 100)], (0.5, 1.0, 2.0)) == [2, 0, 1]
    assert assign_buckets([(300, 100), (100, 300), (64, 64)], (0.5, 1.0, 2.0)) == [2, 0, 1]


def test_buckets_of_exactly_the_minimum_are_kept_and_smaller_ones_merge() -> None:
    """Two images are enough for a batch of two: buckets 0 and 1 stay; bucket 2's single image moves."""
    assert merge_small_buckets([0, 0, 1, 1, 2], (0.5, 1.0, 2.0), minimum=2) == [0, 0, 1, 1, 1]
    assert merge_small_buckets([0, 0, 1, 1, 2, 2], (0.5, 1.0, 2.0), minimum=2) == [0, 0, 1, 1, 2, 2]


def test_a_small_bucket_merges_into_the_kept_bucket_nearest_in_log_aspect_not_in_index() -> None:
    """Buckets of aspect 0.5, 1.8, 1.9, 2.0: the lone 1.8 image goes to 2.0 (next door in aspect),
    not to 0.5 (next door in the list of kept buckets)."""
    merged = merge_small_buckets([0, 0, 0, 1, 3, 3, 3], (0.5, 1.8, 1.9, 2.0), minimum=2)
    assert merged == [0, 0, 0, 3, 3, 3, 3]


def test_when_every_bucket_is_small_all_images_join_the_largest() -> None:
    """No bucket reaches the minimum (two ranks want four images each): the largest takes them all."""
    assert merge_small_buckets([0, 1, 1, 2, 1], (0.5, 1.0, 2.0), minimum=4) == [1, 1, 1, 1, 1]
    assert merge_small_buckets([0, 0, 0], (0.5, 1.0, 2.0), minimum=4) == [0, 0, 0]


class _NoSizes(Dataset):
    """A dataset that can only be decoded: no ``image_size``, no ``samples``."""

    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.new("RGB", self.sizes[index]), 0


def test_sizes_of_a_subset_are_its_own_items_and_a_plain_dataset_is_decoded_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = _NoSizes([(10, 20), (30, 40), (50, 60), (70, 80)])
    with caplog.at_level(logging.WARNING, logger="resflex"):
        assert image_sizes(Subset(base, [3, 1])) == [(70, 80), (30, 40)]
    assert "decoding every image once to bucket by aspect" in caplog.text
