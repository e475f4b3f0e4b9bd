"""Backbones and the classifier: feature maps and logits for odd, non-square and tiny inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resflex.config import group_options
from resflex.errors import ConfigError
from resflex.models.backbone import TimmBackbone, check_model_name
from resflex.models.classifier import ImageClassifier
from tests.conftest import pooling_from_config

INPUT_SIZES = [(32, 32), (37, 53), (61, 29), (8, 8), (1, 1)]


@pytest.fixture(scope="module")
def cnn() -> TimmBackbone:
    return TimmBackbone("test_resnet").eval()


@pytest.fixture(scope="module")
def vit() -> TimmBackbone:
    return TimmBackbone("test_vit", model_kwargs={"dynamic_img_size": True, "dynamic_img_pad": True}).eval()


@pytest.mark.parametrize("size", INPUT_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_cnn_returns_a_feature_map_for_any_input(cnn: TimmBackbone, size: tuple[int, int]) -> None:
    with torch.no_grad():
        out = cnn(torch.randn(2, 3, *size))
    assert out.ndim == 4 and out.shape[:2] == (2, cnn.num_features)
    # a stride-32 network: ceil-ish division, never zero
    assert 1 <= out.shape[2] <= max(1, -(-size[0] // 16)) and out.shape[3] >= 1


@pytest.mark.parametrize("size", [(32, 32), (48, 80), (37, 53), (16, 16)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_vit_tokens_become_a_map_of_the_patch_grid(vit: TimmBackbone, size: tuple[int, int]) -> None:
    patch = vit.patch_embed.patch_size
    with torch.no_grad():
        out = vit(torch.randn(2, 3, *size))
    expected = (-(-size[0] // patch[0]), -(-size[1] // patch[1]))  # dynamic_img_pad rounds up
    assert out.shape == (2, vit.num_features, *expected)


def test_vit_map_equals_reshaped_patch_tokens(vit: TimmBackbone) -> None:
    """Reference: timm's own tokens without the prefix, reshaped row-major."""
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        tokens = vit.model.forward_features(x)[:, vit.num_prefix_tokens :]
        spatial = vit(x)
    h, w = spatial.shape[-2:]
    torch.testing.assert_close(spatial, tokens.transpose(1, 2).reshape(1, -1, h, w))


@pytest.mark.parametrize("pooling", group_options("pooling"))
@pytest.mark.parametrize("size", [(33, 47), (8, 8), (64, 20)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_classifier_logits_for_every_head_and_size(
    cnn: TimmBackbone, pooling: str, size: tuple[int, int]
) -> None:
    model = ImageClassifier(cnn, pooling_from_config(pooling), num_classes=7).eval()
    with torch.no_grad():
        logits = model(torch.randn(3, 3, *size))
    assert logits.shape == (3, 7)
    assert torch.isfinite(logits).all()


def test_classifier_on_vit_with_pyramid(vit: TimmBackbone) -> None:
    model = ImageClassifier(vit, pooling_from_config("pyramid", levels=[1, 2]), num_classes=4).eval()
    assert model.num_features == vit.num_features + 128 * 4  # global average + projected 2x2 level
    with torch.no_grad():
        assert model(torch.randn(2, 3, 40, 24)).shape == (2, 4)


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(ConfigError) as info:
        check_model_name("resnet19")
    message = str(info.value)
    assert "unknown backbone 'resnet19'" in message and "resnet18" in message and "\n" not in message


def test_pretrained_tag_names_are_accepted(cnn: TimmBackbone) -> None:
    import timm

    assert "resnet18.a1_in1k" in timm.list_pretrained("resnet18.*")  # a real timm tag
    assert check_model_name("resnet18.a1_in1k") is None  # architecture + pretrained tag: accepted
    # the tagged name reaches timm, which builds the tagged architecture (pretrained=false: no download)
    tagged = TimmBackbone("test_resnet.r160_in1k")
    assert tagged.name == "test_resnet.r160_in1k" and tagged.num_features == cnn.num_features
    with torch.no_grad():
        assert tagged.eval()(torch.randn(1, 3, 32, 32)).shape == cnn(torch.randn(1, 3, 32, 32)).shape
    # the tag does not hide an unknown architecture: refused, naming what was typed, suggesting names
    with pytest.raises(ConfigError) as info:
        check_model_name("resnet19.a1_in1k")
    assert "unknown backbone 'resnet19.a1_in1k'" in str(info.value) and "resnet18" in str(info.value)


@pytest.mark.parametrize(
    ("option", "channels"),
    [("resnet50", 2048), ("convnext_atto", 320), ("efficientnet_b0", 1280)],
)
def test_backbone_presets_build_without_weights_and_map_64px_to_2x2(
    option: str, channels: int, tmp_path: Path
) -> None:
    """configs/backbone/<option>.yaml built as a run builds it (pretrained=false: nothing downloaded)."""
    from hydra.utils import instantiate

    from tests.test_configs import compose_train

    cfg = compose_train([f"backbone={option}", "backbone.pretrained=false"], tmp_path)
    backbone = instantiate(cfg.backbone).eval()
    assert backbone.name == option and backbone.reduction == 32
    model = ImageClassifier(backbone, pooling_from_config("avg"), num_classes=5).eval()
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 64, 64))
        logits = model(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, channels, 2, 2)  # stride 32
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()


def test_backbone_reports_normalisation_and_stride(cnn: TimmBackbone) -> None:
    assert len(cnn.mean) == 3 and len(cnn.std) == 3
    assert cnn.reduction in (16, 32)
