"""load_classifier on a run folder made without training (a composed config and a freshly built module's
weights): what ``.info``, ``.train_sizes`` and ``.eval_size`` say of the run (what predict plans with),
the smallest input side, which BatchNorm statistics an input uses, and its robust range."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from resflex.inference import ResflexClassifier, load_classifier
from resflex.models.backbone import TimmBackbone
from resflex.models.classifier import ImageClassifier
from tests.conftest import TINY, pooling_from_config
from tests.test_eval_script import compose_config

MULTISCALE = (
    "resolution=multiscale",
    "resolution.size=32",
    "resolution.scales=[0.5,1.0,1.5]",
    "resolution.probs=null",
    "resolution.geometry=keep_aspect",
    "resolution.multiple=16",
    "resolution.aspect_ratios=[0.5,1.0,2.0]",
    "data.eval_crop_pct=0.875",
)


def untrained_run(root: Path, *overrides: str, record: dict | None = None) -> Path:
    """A run folder as training leaves it (.hydra/config.yaml, checkpoints/last.ckpt, classes.json,
    metrics.json), the weights a freshly built module's: no training step needed to reopen it."""
    from resflex.build import build_module

    run_dir = root / "run"
    cfg = compose_config("train", [*TINY, *overrides, "logger=none"], run_dir)
    saved = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(saved, run_dir / ".hydra" / "config.yaml")
    module = build_module(saved, 3)
    (run_dir / "checkpoints").mkdir()
    torch.save({"state_dict": module.state_dict()}, run_dir / "checkpoints" / "last.ckpt")
    (run_dir / "classes.json").write_text(json.dumps(["cat", "dog", "owl"]))
    metrics = {"val/acc@16": 0.5, "val/acc@32": 0.8, "val/acc@48": 0.79}
    record = {"status": "completed", "metrics": metrics, **(record or {})}
    (run_dir / "metrics.json").write_text(json.dumps(record))
    return run_dir


@pytest.fixture(scope="module")
def multiscale_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_run(tmp_path_factory.mktemp("infer"), *MULTISCALE)


@pytest.fixture(scope="module")
def multiscale(multiscale_run: Path) -> ResflexClassifier:
    return load_classifier(multiscale_run)


def test_the_classifier_normalises_as_the_training_module_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images in [0, 1] (or uint8) give the logits the run's own module gives on its normalised batch:
    the backbone's mean and std, each in its place (ImageNet's here: test_resnet's are both 0.5)."""
    import timm

    from resflex.run import open_run

    imagenet = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    monkeypatch.setattr(timm.data, "resolve_data_config", lambda *args, **kwargs: dict(imagenet))
    run_dir = untrained_run(tmp_path)
    loaded = load_classifier(run_dir)
    module = open_run(run_dir).build_module().eval()
    assert (loaded.mean, loaded.std) == (imagenet["mean"], imagenet["std"])
    x = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8)
    with torch.no_grad():
        expected = module(module.normalize(x))
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(loaded(x.float() / 255), expected, rtol=0, atol=1e-5)


def test_one_image_numpy_float64_and_grey_give_the_batchs_logits(multiscale: ResflexClassifier) -> None:
    """What a notebook hands over: each the same logits as the documented (B, 3, H, W) float32 batch."""
    batch = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        expected = multiscale(batch)
        torch.testing.assert_close(multiscale(batch[0]), expected[:1], rtol=0, atol=1e-6)  # a batch of one
        torch.testing.assert_close(multiscale(batch.numpy()), expected, rtol=0, atol=0)
        torch.testing.assert_close(multiscale(batch.double()), expected, rtol=0, atol=0)
        grey = batch[:, :1]  # one channel: the grey image replicated, as the loader converts L to RGB
        torch.testing.assert_close(multiscale(grey), multiscale(grey.expand(-1, 3, -1, -1)), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 32, 48, 3), r"got shape \(2, 32, 48, 3\) \(channels last\? x.permute\(0, 3, 1, 2\)\)"),
        ((32, 48), r"expected images \(B, 3, H, W\) or \(3, H, W\), got shape \(32, 48\)$"),
    ],
)
def test_another_layout_is_refused_by_its_shape(
    multiscale: ResflexClassifier, shape: tuple, message: str
) -> None:
    """Not the normalisation's broadcast error, which names no shape."""
    with pytest.raises(ValueError, match=message):
        multiscale(torch.rand(*shape))


def test_the_loaded_classifier_says_how_its_run_framed_images(multiscale: ResflexClassifier) -> None:
    """predict plans native and auto sizes from these: the run's multiple, aspect buckets, crop, sizes."""
    info = multiscale.info
    assert multiscale.classes == ["cat", "dog", "owl"] and not multiscale.training
    assert multiscale.train_sizes == [(16, 16), (32, 32), (48, 48)] and multiscale.eval_size == (32, 32)
    assert (info["multiple"], info["aspect_ratios"], info["eval_crop_pct"]) == (16, [0.5, 1.0, 2.0], 0.875)
    assert (info["geometry"], info["bucket_size"]) == ("keep_aspect", "short_side")
    assert info["backbone"] == "test_resnet"
    assert info["metrics"]["val/acc@32"] == 0.8


def test_its_robust_range_is_in_times_of_the_runs_eval_size(multiscale: ResflexClassifier) -> None:
    (robust,) = multiscale.robust_ranges()
    record = robust.as_dict()
    assert record["trained_size"] == [32, 32]
    assert (record["low"], record["high"], record["low_scale"], record["high_scale"]) == (
        [32, 32],
        [48, 48],
        1.0,
        1.5,
    )


def tiny(backbone: str = "test_resnet", info: dict | None = None, **kwargs: object) -> ResflexClassifier:
    bb = TimmBackbone(backbone, model_kwargs=kwargs)
    model = ImageClassifier(bb, pooling_from_config("avg"), num_classes=2)
    return ResflexClassifier(model, bb.mean, bb.std, ["a", "b"], [(32, 32)], (32, 32), info).eval()


def test_the_smallest_side_is_half_the_reduction_or_the_patch() -> None:
    """A CNN takes sides down to half its reduction (a 1x1 map); a ViT its patch, any side when it pads."""
    cnn = tiny()
    assert cnn.min_side == max(1, cnn.model.backbone.reduction // 2)
    vit = ("vit_small_patch16_224", {"depth": 1, "dynamic_img_size": True})
    assert tiny(vit[0], **vit[1]).min_side == 16
    assert tiny(vit[0], **vit[1], dynamic_img_pad=True).min_side == 1


@pytest.mark.parametrize(
    ("info", "side"),
    [
        ({"geometry": "keep_aspect"}, 32),  # a short-side bucket's statistics are its scheduled size's
        ({"geometry": "keep_aspect", "bucket_size": "short_side"}, 32),
        ({"geometry": "keep_aspect", "bucket_size": "area"}, 45),  # side of the square of equal area
        ({"geometry": "square"}, 45),
    ],
)
def test_which_statistics_a_non_square_input_uses(info: dict, side: int) -> None:
    assert tiny(info=info).stats_side(32, 64) == side
    assert tiny(info=info).stats_side(64, 32) == side


def test_geometry_auto_is_what_training_resolved_and_picks_the_statistics_side(tmp_path: Path) -> None:
    """A geometry=auto run that trained keep_aspect (its record's data_profile) says keep_aspect, so an
    input's BatchNorm statistics are its short side's, as in training, not the square of equal area's."""
    profile = {"data_profile": {"geometry": "keep_aspect", "mean_color": [1, 2, 3]}}
    overrides = [o for o in MULTISCALE if not o.startswith("resolution.geometry")]
    loaded = load_classifier(untrained_run(tmp_path, *overrides, "resolution.geometry=auto", record=profile))
    assert loaded.info["geometry"] == "keep_aspect" and loaded.stats_side(32, 64) == 32


class MeanPatchTokens(torch.nn.Module):
    """A stand-in token classifier: logits from the mean normalised value of the valid patches."""

    patch_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.full((3,), 100.0))
        self.register_buffer("pixel_std", torch.full((3,), 50.0))

    def forward(self, patches: torch.Tensor, coord: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = (patches.float() - self.pixel_mean.repeat(patches.shape[-1] // 3)) / self.pixel_std[0]
        mean = (x * valid[..., None]).sum((1, 2)) / valid.sum(1)
        return torch.stack([mean, -mean], dim=1)


def test_a_naflex_classifier_rounds_float_pixels_to_the_nearest_byte() -> None:
    """Float input that is not exactly k/255 (a resized or augmented image) is rounded to the nearest
    8-bit value, as documented: 0.6 above k gives k+1's logits, not k's."""
    from resflex.data.naflex import NaFlexResolution
    from resflex.inference import NaFlexImageClassifier

    schedule = NaFlexResolution(seq_lens=(4,), max_seq_len=4, patch_size=8)

    def transform(pixels: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        return pixels[:, : shape[0], : shape[1]]

    model = NaFlexImageClassifier(MeanPatchTokens(), schedule, transform, 4, ["a", "b"], {}).eval()
    k = torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(model((k.float() + 0.6) / 255), model(k + 1), rtol=0, atol=1e-6)
        torch.testing.assert_close(model((k.float() + 0.4) / 255), model(k), rtol=0, atol=1e-6)


def test_float_input_outside_zero_one_is_warned_once() -> None:
    """0..255 floats gave logits 349 away from the right ones without a word."""
    import warnings

    from tests.test_export import tiny_classifier

    x = torch.rand(2, 3, 32, 32)
    quiet = tiny_classifier("avg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet(x)
        quiet(x * 255)  # checked on the first float batch only
        tiny_classifier("avg")((x * 255).to(torch.uint8))  # uint8 is 0..255 by definition
    model = tiny_classifier("avg")
    with pytest.warns(UserWarning, match=r"float input from \S+ to 25\d: the model takes RGB in \[0, 1\]"):
        model(x * 255)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x * 255)  # once per model
    with pytest.warns(UserWarning, match="normalised images"):
        tiny_classifier("avg")((x - 0.45) / 0.225)
