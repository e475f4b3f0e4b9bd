"""TimmBackbone beyond the shapes of tests/models/test_models.py: the size checks a run makes before it
trains, the map of ViTs with register tokens and of NHWC models, normalisation constants, where weights
come from, and which errors are one-line config errors (mutation audit, round 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from resflex.errors import ConfigError
from resflex.models import hub
from resflex.models.backbone import IMAGENET_MEAN, IMAGENET_STD, TimmBackbone


def test_a_fixed_size_vit_takes_its_own_non_square_size_and_refuses_it_transposed() -> None:
    """A ViT built for 32x48 (h x w) without dynamic_img_size takes (32, 48) and nothing else; (48, 32),
    the same pixels turned, is refused naming the size it accepts (h and w must not be swapped)."""
    vit = TimmBackbone("test_vit", model_kwargs={"img_size": (32, 48), "dynamic_img_size": False})
    vit.check_input_size((32, 48))
    with pytest.raises(ConfigError, match="resolution.size=48x32 but test_vit only accepts 32x48") as info:
        vit.check_input_size((48, 32))
    assert "dynamic_img_size=true" in str(info.value)


def test_a_dynamic_vit_refuses_either_side_below_one_patch_unless_it_pads() -> None:
    """Without dynamic_img_pad each side needs a whole 16-px patch: 8x64 and 64x8 are refused (one side is
    enough), 16x16 is fine; with dynamic_img_pad the patch grid rounds up, so 8x8 is accepted."""
    vit = TimmBackbone("test_vit", model_kwargs={"dynamic_img_size": True})
    vit.check_input_size((16, 16))
    vit.check_input_size((32, 64), key="eval.resolutions")
    for size in ((8, 64), (64, 8)):
        with pytest.raises(ConfigError, match=f"eval.resolutions={size[0]}x{size[1]} is smaller than"):
            vit.check_input_size(size, key="eval.resolutions")
    padded = TimmBackbone("test_vit", model_kwargs={"dynamic_img_size": True, "dynamic_img_pad": True})
    padded.check_input_size((8, 8))


def test_a_cnn_needs_half_its_stride_on_the_shorter_side() -> None:
    """test_resnet has a total stride of 32: each side must be at least 16. 16x16 is the smallest size
    accepted; 15x64 and 64x8 are refused because of their short side, with the minimum in the message."""
    cnn = TimmBackbone("test_resnet")
    assert cnn.reduction == 32
    cnn.check_input_size((16, 16))
    cnn.check_input_size((16, 200))
    for size in ((15, 64), (64, 8)):
        with pytest.raises(ConfigError, match="each side must be at least 16"):
            cnn.check_input_size(size)


def test_a_dynamic_vit_without_padding_maps_a_non_square_input_to_its_h_by_w_grid() -> None:
    """32x64 pixels with 16-px patches: a 2x4 map (rows, columns), the patch tokens in row-major order."""
    vit = TimmBackbone("test_vit", model_kwargs={"dynamic_img_size": True}).eval()
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        spatial = vit(x)
        tokens = vit.model.forward_features(x)[:, vit.num_prefix_tokens :]
    assert spatial.shape == (1, vit.num_features, 2, 4)
    torch.testing.assert_close(spatial, tokens.transpose(1, 2).reshape(1, -1, 2, 4))


def test_register_tokens_are_dropped_with_the_class_token() -> None:
    """A ViT with 3 register tokens has 4 prefix tokens; none of them may land in the feature map."""
    vit = TimmBackbone("test_vit", model_kwargs={"dynamic_img_size": True, "reg_tokens": 3}).eval()
    assert vit.num_prefix_tokens == 4
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        spatial = vit(x)
        tokens = vit.model.forward_features(x)[:, 4:]
    torch.testing.assert_close(spatial, tokens.transpose(1, 2).reshape(2, -1, 2, 3))


def test_an_nhwc_model_is_permuted_to_channels_first_keeping_h_and_w() -> None:
    """timm's MambaOut returns (B, h, w, C); the backbone returns (B, C, h, w) of the same values."""
    net = TimmBackbone("test_mambaout").eval()
    assert net.output_fmt == "NHWC"
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        spatial = net(x)
        nhwc = net.model.forward_features(x)
    assert spatial.shape == (1, net.num_features, 2, 3)
    torch.testing.assert_close(spatial, nhwc.permute(0, 3, 1, 2))


@pytest.mark.parametrize(
    ("name", "mean", "std"),
    [("test_resnet", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ("resnet18", IMAGENET_MEAN, IMAGENET_STD)],
)
def test_normalisation_constants_are_the_models_own(name: str, mean: tuple, std: tuple) -> None:
    """The mean and std the module normalises with are timm's for that model (0.5 for timm's test
    models, ImageNet's for resnet18), the mean as the mean and the std as the std."""
    backbone = TimmBackbone(name)
    assert backbone.mean == pytest.approx(mean) and backbone.std == pytest.approx(std)


def test_local_weights_with_pretrained_true_never_ask_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """backbone.weights=<file> with pretrained=true: the file's weights, and timm is never asked for its
    pretrained ones (offline that would fail the run; online, download weights then thrown away)."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    reference = timm.create_model("test_resnet", num_classes=0)
    path = tmp_path / "weights.safetensors"
    save_file(reference.state_dict(), str(path))
    asked: list[bool] = []
    real = timm.create_model

    def offline(name: str, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        asked.append(pretrained)
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(timm, "create_model", offline)
    backbone = TimmBackbone("test_resnet", pretrained=True, weights=str(path))
    assert asked == [False]
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(backbone.model.state_dict()[key], value)


def test_drop_path_rate_of_one_is_refused() -> None:
    """The rate must be in [0, 1): 1 would drop every residual branch of the deepest block."""
    with pytest.raises(ConfigError, match=r"backbone.drop_path_rate=1.0 is invalid"):
        TimmBackbone("test_resnet", drop_path_rate=1.0)


def test_another_bad_model_argument_is_not_blamed_on_drop_path_rate() -> None:
    """With drop_path_rate set, a typo in model_kwargs is named as the argument the model does not take,
    not "has no stochastic depth" (that message is only for a model that lacks drop_path_rate)."""
    with pytest.raises(ConfigError, match=r"takes no argument 'no_such_arg' \(backbone.model_kwargs") as info:
        TimmBackbone("test_resnet", drop_path_rate=0.1, model_kwargs={"no_such_arg": 1})
    assert "stochastic depth" not in str(info.value)


def test_a_model_without_pretrained_weights_is_a_one_line_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """timm raises ValueError for a name that has no pretrained weights ("No pretrained weights exist"):
    online, that is a one-line error naming the model and timm's reason, like a failed download."""

    def no_weights(name: str, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        raise ValueError(f"No pretrained weights exist for {name}. Use `pretrained=False` for random init.")

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(timm, "create_model", no_weights)
    with pytest.raises(ConfigError, match="could not get pretrained weights for test_resnet") as info:
        TimmBackbone("test_resnet", pretrained=True)
    assert "No pretrained weights exist for test_resnet" in str(info.value) and "\n" not in str(info.value)


def test_the_weight_sources_say_which_wins_or_refuse_what_cannot_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``init_head=true`` without ``init_from`` loaded nothing, without a word; ``pretrained=true`` with a
    weights file was silently not downloaded (found by a transfer audit; both sources at once is
    refused already)."""
    with pytest.raises(ConfigError, match="backbone.init_head=true loads the pooling and head of"):
        TimmBackbone("test_resnet", init_head=True)
    weights = tmp_path / "w.pth"
    torch.save(TimmBackbone("test_resnet").model.state_dict(), weights)
    with caplog.at_level("INFO", logger="resflex"):
        TimmBackbone("test_resnet", pretrained=True, weights=str(weights))
    assert "the hub's weights are not downloaded, backbone.weights replaces them" in caplog.text
