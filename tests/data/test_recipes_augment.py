"""Issue #17, augmentation in the data path: data.augment.auto (rand / trivial / augmix), magnitude and
color_jitter on the framed uint8 image; each changes the images, and stays a pure function of
(seed, epoch, index)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resflex.build import build_datamodule
from resflex.data.datamodule import SizedDataset
from resflex.data.sampler import SampleRequest
from resflex.data.transforms import TrainTransform, build_color_jitter, build_policy
from resflex.errors import ConfigError
from tests.test_configs import compose_train

SWITCHES = [
    {"auto": "rand"},
    {"auto": "rand", "magnitude": 20},
    {"auto": "trivial"},
    {"auto": "augmix"},
    {"auto": "augmix", "magnitude": 6},
    {"color_jitter": 0.4},
    {"auto": "trivial", "color_jitter": 0.4},
]


def _images(n: int = 6, seed: int = 0) -> list[tuple[Image.Image, int]]:
    """Varied colourful images (sizes, aspects), so every op of every policy has something to change."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(30, 70)), int(rng.integers(30, 70))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[h // 4 : h // 2, w // 3 : 2 * w // 3] = (200, 40 * (i % 6), 90)  # a block with edges
        out.append((Image.fromarray(pixels, "RGB"), i % 3))
    return out


def _batch(
    transform: TrainTransform, epoch: int, seed: int = 0, size: tuple[int, int] = (32, 48)
) -> torch.Tensor:
    dataset = SizedDataset(_images(), transform, seed=seed)
    return torch.stack([dataset[SampleRequest(i, *size, None, epoch)][0] for i in range(len(dataset))])


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("geometry", ["square", "squash", "pad"])
def test_augmented_batches_differ_from_plain_ones_and_repeat_per_seed_epoch_index(
    switch: dict, geometry: str
) -> None:
    plain = _batch(TrainTransform(geometry=geometry), epoch=3)
    augmented = _batch(TrainTransform(geometry=geometry, **switch), epoch=3)
    assert augmented.dtype == torch.uint8 and augmented.shape == plain.shape == (6, 3, 32, 48)
    changed = [not torch.equal(a, p) for a, p in zip(augmented, plain, strict=True)]
    assert sum(changed) >= 4, f"{switch} changed only {sum(changed)} of 6 images"
    # the same (seed, epoch, index): the same pixels, from a fresh transform and dataset
    again = _batch(TrainTransform(geometry=geometry, **switch), epoch=3)
    assert torch.equal(augmented, again)
    # another epoch or seed: other draws
    assert not torch.equal(augmented, _batch(TrainTransform(geometry=geometry, **switch), epoch=4))
    assert not torch.equal(augmented, _batch(TrainTransform(geometry=geometry, **switch), epoch=3, seed=1))


def test_color_jitter_zero_is_off() -> None:
    plain = _batch(TrainTransform(hflip=False), epoch=0, size=(40, 40))
    assert torch.equal(plain, _batch(TrainTransform(hflip=False, color_jitter=0.0), epoch=0, size=(40, 40)))


def test_auto_null_is_the_plain_transform() -> None:
    a = _batch(TrainTransform(), epoch=1)
    b = _batch(TrainTransform(auto=None, magnitude=None, color_jitter=None), epoch=1)
    assert torch.equal(a, b)


def test_magnitude_means_the_policy_strength() -> None:
    assert build_policy("rand").magnitude == 9
    assert build_policy("rand", 15).magnitude == 15
    assert build_policy("augmix").severity == 3
    assert build_policy("augmix", 7).severity == 7
    assert type(build_policy("trivial", 9)).__name__ == "TrivialAugmentWide"  # draws its own strength
    assert build_policy(None, 9) is None
    jitter = build_color_jitter(0.4)
    assert jitter.brightness == jitter.contrast == jitter.saturation == pytest.approx((0.6, 1.4))
    assert jitter.hue is None
    assert build_color_jitter(0) is None and build_color_jitter(None) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"auto": "randaugment"},
            "data.augment.auto must be one of rand, trivial, augmix (or null), got 'randaugment'",
        ),
        (
            {"auto": "rand", "magnitude": 31},
            "data.augment.magnitude=31 is invalid: expected an integer in [0, 30]",
        ),
        (
            {"auto": "augmix", "magnitude": 0},
            "data.augment.magnitude=0 is invalid: expected an integer in [1, 10]",
        ),
        ({"auto": "rand", "magnitude": 2.5}, "data.augment.magnitude=2.5 is invalid"),
        ({"color_jitter": -0.1}, "data.augment.color_jitter=-0.1 is invalid"),
        ({"color_jitter": "strong"}, "data.augment.color_jitter='strong' is invalid"),
    ],
)
def test_bad_augment_values_are_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainTransform(**kwargs)
    line = info.value.one_line()
    assert line.startswith(message) and "\n" not in line, line


def test_the_config_keys_reach_the_train_transform_and_erasing_stays_on_the_device(tmp_path: Path) -> None:
    overrides = [
        "data.source.num_train=24",
        "data.source.num_val=8",
        "data.source.num_test=8",
        "data.num_workers=0",
    ]
    plain = build_datamodule(compose_train(overrides, tmp_path))
    assert plain.train_transform.policy is None and plain.train_transform.color_jitter is None
    cfg = compose_train(
        [
            *overrides,
            "data.augment.auto=augmix",
            "data.augment.magnitude=5",
            "data.augment.color_jitter=0.3",
            "data.augment.random_erasing=0.25",
        ],
        tmp_path,
    )
    transform = build_datamodule(cfg).train_transform
    assert transform.policy.severity == 5 and transform.color_jitter is not None
    assert not hasattr(transform, "random_erasing")  # a batch operation: the LightningModule's
    # FixRes' final phase keeps the policy (its overrides are the framing's)
    fixres = build_datamodule(
        compose_train([*overrides, "resolution=fixres", "data.augment.auto=trivial"], tmp_path)
    )
    assert all(t.policy is not None for t in fixres.phase_transforms.values())
