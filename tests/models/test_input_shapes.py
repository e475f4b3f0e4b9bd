"""Any timm model: the sizes it cannot take are refused in one line before training, found by a forward on
the meta device (resflex.models.input_shapes); models that return tokens without timm's grid helper map a
non-square input to its grid; arguments a model does not take are named."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resflex.build import check_sizes_fit_backbone
from resflex.data.resolution import FixedResolution
from resflex.errors import ConfigError
from resflex.models.backbone import TimmBackbone
from resflex.models.input_shapes import constructor_arguments
from resflex.training.scale_consistency import smallest_side


def on_meta(name: str, **model_kwargs: object) -> TimmBackbone:
    """The backbone built on the meta device (shapes only: the large models cost nothing here)."""
    with torch.device("meta"):
        return TimmBackbone(name, model_kwargs=model_kwargs)


def test_a_model_built_for_one_grid_is_refused_elsewhere_naming_its_size() -> None:
    """LeViT's attention biases are for the 14x14 grid of 224 px: no rule of the backbone describes it, and
    it used to train until the first batch raised a broadcast error. Now 64x64 is refused with the model's
    own reason and the size it was built for; 224x224 is accepted."""
    levit = on_meta("levit_128s")
    levit.check_input_size((224, 224))
    with pytest.raises(ConfigError) as info:
        levit.check_input_size((64, 64), "eval.resolutions")
    line = info.value.one_line()
    assert line.startswith("eval.resolutions=64x64: levit_128s cannot take a 64x64 input (RuntimeError: ")
    assert "levit_128s is built for 224x224 inputs: 'eval.resolutions=[224]'" in line
    assert "\n" not in line


def test_the_check_finds_what_the_real_model_does_and_leaves_its_tensors_alone() -> None:
    """DLA adds the maps of two branches, which differ by a pixel unless each side is a multiple of 32:
    the check refuses 48x80 and 40x40, where the real model fails, and accepts 64x64 and 96x64, where it
    runs. The check runs a meta twin: the real model's tensors stay on the CPU with their values."""
    dla = TimmBackbone("dla46_c").eval()
    before = {k: v.clone() for k, v in dla.state_dict().items()}
    for size in ((48, 80), (40, 40)):
        with pytest.raises(ConfigError, match=f"dla46_c cannot take a {size[0]}x{size[1]} input") as info:
            dla.check_input_size(size)
        assert "multiples of its stride 32" in str(info.value)
        with pytest.raises(ConfigError, match="at its first") as failed, torch.no_grad():
            dla(torch.zeros(1, 3, *size))
        assert isinstance(failed.value.__cause__, RuntimeError)  # the model's own error, underneath
    for size in ((64, 64), (96, 64)):
        dla.check_input_size(size)
        with torch.no_grad():
            assert dla(torch.zeros(1, 3, *size)).shape[-2:] == (size[0] // 32, size[1] // 32)
    after = dla.state_dict()
    assert all(not t.is_meta for t in after.values())
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_vit_checked_on_the_cpu_keeps_every_tensor_there() -> None:
    """A ViT's patch embedding is registered twice (``patch_embed`` and ``model.patch_embed``): a swap of
    its tensors for meta ones left them on meta, and the run failed moving the model to its device."""
    vit = TimmBackbone("test_vit", model_kwargs={"dynamic_img_size": True})
    vit.check_input_size((48, 80))
    assert not any(t.is_meta for t in vit.state_dict().values())
    with torch.no_grad():
        assert vit(torch.zeros(1, 3, 48, 80)).shape[-2:] == (3, 5)


def test_a_model_too_small_for_its_kernels_is_told_the_smallest_side_it_takes() -> None:
    """Inception-v3 needs about 75 px (a 3x3 kernel on its last map): the hint says where it starts."""
    with pytest.raises(ConfigError, match="inception_v3 cannot take a 64x64 input") as info:
        on_meta("inception_v3").check_input_size((64, 64))
    assert "takes sides from about 80 px" in str(info.value)


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "deit_tiny_patch16_224"])
def test_a_fixed_size_model_is_told_the_arguments_its_own_class_takes(name: str) -> None:
    """The hint names only arguments of the model's class (Swin takes ``dynamic_img_size`` in newer timm,
    ``strict_img_size`` in older, never ``dynamic_img_pad``, which the old hint named, so the run that
    followed it failed on the unexpected argument); following the hint, the model takes 48x80."""
    with pytest.raises(ConfigError, match="only accepts 224x224") as info:
        on_meta(name).check_input_size((64, 64))
    hint = info.value.hint or ""
    named = dict(
        arg[len("++backbone.model_kwargs.") :].split("=") for arg in hint.split() if arg.startswith("++")
    )
    assert named, hint
    takes = constructor_arguments(on_meta(name).model)
    assert set(named) <= takes, (named, hint)
    on_meta(name, **{key: value == "true" for key, value in named.items()}).check_input_size((48, 80))
    if name.startswith("deit"):  # a ViT's class takes both: the grid follows and the last patch pads
        assert set(named) == {"dynamic_img_size", "dynamic_img_pad"}


def test_a_model_with_several_feature_maps_is_refused_in_one_line() -> None:
    """CrossViT returns one map per branch: a pooling head takes one."""
    with pytest.raises(ConfigError, match="crossvit_tiny_240: its forward_features returns 2 feature maps"):
        on_meta("crossvit_tiny_240").check_input_size((240, 240))


class StridedTokens(nn.Module):
    """A model that returns (B, h*w, C) tokens, the average of each 32x32 cell in row-major order, and no
    ``patch_embed`` (as MViTv2 and Twins): the grid is the input's sides over the stride, rounded up
    (``ceil``) or down as the model's layers round them."""

    feature_info = [{"reduction": 32}]
    num_features = 3

    def __init__(self, ceil: bool) -> None:
        super().__init__()
        self.ceil = ceil

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 32, ceil_mode=self.ceil).flatten(2).transpose(1, 2)


@pytest.mark.parametrize("ceil", [True, False])
@pytest.mark.parametrize("size", [(64, 96), (48, 80), (80, 48), (96, 96)])
def test_tokens_without_a_grid_helper_map_to_the_inputs_grid_in_row_major_order(
    size: tuple[int, int], ceil: bool
) -> None:
    """The map is the cells where they lie: a non-square input was reshaped to a square grid (refused
    when the count was not a square, scrambled rows when it was)."""
    backbone = TimmBackbone("test_resnet")
    backbone.model = StridedTokens(ceil)  # type: ignore[assignment]
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(backbone(x), F.avg_pool2d(x, 32, ceil_mode=ceil))


def test_a_real_token_model_takes_a_non_square_size() -> None:
    """MViTv2 and Twins return tokens: 48x80 is a 2x3 grid (MViTv2 rounds up) and a 1x2 one (Twins down)."""
    for name, grid in (("mvitv2_tiny", (2, 3)), ("twins_svt_small", (1, 2))):
        backbone = on_meta(name)
        backbone.check_input_size((48, 80))
        assert backbone(torch.empty(1, 3, 48, 80, device="meta")).shape[-2:] == grid


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"drop_rte": 0.1}, ["resnet18 takes no argument 'drop_rte'", "did you mean drop_rate"]),
        ({"foo": 1}, ["resnet18 takes no argument 'foo'", "~backbone.model_kwargs.foo"]),
    ],
)
def test_an_argument_the_model_does_not_take_is_one_line_with_the_close_names(
    kwargs: dict[str, object], fragments: list[str]
) -> None:
    """It was Hydra's "Error in call to target" report around timm's TypeError."""
    with pytest.raises(ConfigError) as info:
        on_meta("resnet18", **kwargs)
    for fragment in fragments:
        assert fragment in info.value.one_line()


def test_scale_consistency_says_which_sizes_a_stride_bound_model_takes() -> None:
    """The views are rounded to 8 px: a model that takes 32x32 but not 40x40 cannot have them, and the
    message says so instead of calling it a one-size model."""
    with pytest.raises(ConfigError, match="dla46_c takes 32x32 but not 40x40") as info:
        smallest_side(on_meta("dla46_c"))
    assert info.value.hint == "model.scale_consistency=0"
    assert smallest_side(on_meta("test_resnet")) == 16


def test_the_hint_speaks_of_the_key_that_asked() -> None:
    """At prediction the fix is ``predict.size=224``, not the training keys."""
    for name, size, fragment in (
        ("levit_128s", (64, 64), "predict.size=224"),
        ("dla46_c", (48, 48), "(32, 64, 96"),
    ):
        with pytest.raises(ConfigError) as info:
            on_meta(name).check_input_size(size, "predict.size")
        assert info.value.hint is not None and fragment in info.value.hint
        assert "resolution." not in info.value.hint and "eval.resolutions" not in info.value.hint


def test_an_index_past_a_table_built_for_one_size_is_refused_though_the_meta_device_runs_it() -> None:
    """MViTv2's relative-position tables are sized for its ``img_size`` (224): at 256 px the index runs
    past them, which the meta device (shapes, not values) cannot see; the run used to train until its
    first such batch. A fixed-size model away from its size is also run on real tensors: 256x256 is
    refused with the model's IndexError, 160 and 224 are taken, and the hint (``img_size`` covering
    the run's largest side, rounded up to the stride) is one a real model then runs."""
    mvit = on_meta("mvitv2_tiny")
    for size in ((224, 224), (160, 160)):
        mvit.check_input_size(size)
    with pytest.raises(ConfigError) as info:
        mvit.check_input_size((256, 256), "resolution.size", largest_side=300)
    line = info.value.one_line()
    assert line.startswith("resolution.size=256x256: mvitv2_tiny cannot take a 256x256 input (IndexError: ")
    assert (
        info.value.hint == "++backbone.model_kwargs.img_size=320 (then mvitv2_tiny takes sides up to 320 px)"
    )
    on_meta("mvitv2_tiny", img_size=320).check_input_size((256, 256))
    real = TimmBackbone("mvitv2_tiny", model_kwargs={"img_size": 320}).eval()
    with torch.no_grad():
        assert real(torch.zeros(1, 3, 300, 96)).shape[-2:] == (10, 3)


def test_the_real_check_leaves_the_runs_random_draws_alone() -> None:
    """The real twin's random init happens after the run is seeded (the data module is built first): it
    must not move the run's random stream, or the check would change what the run draws."""
    mvit = on_meta("mvitv2_tiny", drop_rate=0.0123)  # arguments no other test builds: a twin is built here
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    mvit.check_input_size((160, 160))
    torch.testing.assert_close(torch.rand(4), expected)


def test_the_first_batch_of_a_shape_no_check_saw_is_refused_in_one_line() -> None:
    """A shape nobody checked (a user's own loop, a size the run was not asked about) fails at its first
    batch as a one-line refusal with the hint, the model's error as its cause; the model's failure for
    another reason than the size (four channels) stays the model's own error."""
    mvit = TimmBackbone("mvitv2_tiny").eval()
    with torch.no_grad():
        assert mvit(torch.zeros(2, 3, 64, 64)).shape[-2:] == (2, 2)
        with pytest.raises(ConfigError) as info:
            mvit(torch.zeros(2, 3, 256, 256))
    assert "mvitv2_tiny cannot take a 256x256 input (IndexError: " in info.value.message
    assert info.value.message.endswith("at its first 256x256 batch")
    assert "img_size=256" in (info.value.hint or "")
    assert isinstance(info.value.__cause__, IndexError)
    cnn = TimmBackbone("test_resnet").eval()
    with torch.no_grad():
        cnn(torch.zeros(1, 3, 32, 32))
        with pytest.raises(RuntimeError, match="channels") as own:
            cnn(torch.zeros(1, 4, 32, 32))
    assert not isinstance(own.value, ConfigError)


def test_a_bucket_past_the_table_is_refused_and_auto_sizes_past_it_are_dropped() -> None:
    """Under keep_aspect the 0.5 bucket of 160 px is 320x160: refused before the first step, naming the
    bucket, with an ``img_size`` that covers every shape of the run (the 240 px eval size's 480x240
    bucket too). Training at 96 px (buckets up to 192), the auto eval sizes past 224 are dropped."""
    schedule = FixedResolution(160, geometry="keep_aspect", aspect_ratios=[1.0, 0.5])
    data = SimpleNamespace(schedule=schedule, eval_sizes=[(160, 160), (240, 240)], eval_sizes_auto=True)
    with pytest.raises(ConfigError) as info:
        check_sizes_fit_backbone(data, on_meta("mvitv2_tiny"))  # type: ignore[arg-type]
    assert "mvitv2_tiny cannot take a 320x160 input" in info.value.message
    assert "in the keep_aspect bucket of aspect 0.5 (w/h) at resolution.size=160" in info.value.message
    assert "++backbone.model_kwargs.img_size=480 " in (info.value.hint or "")
    schedule = FixedResolution(96, geometry="keep_aspect", aspect_ratios=[1.0, 0.5])
    data = SimpleNamespace(
        schedule=schedule, eval_sizes=[(96, 96), (112, 112), (144, 144)], eval_sizes_auto=True
    )
    check_sizes_fit_backbone(data, on_meta("mvitv2_tiny"))  # type: ignore[arg-type]
    assert data.eval_sizes == [(96, 96), (112, 112)]  # 144's bucket is 288x144


def test_out_of_memory_at_a_new_shape_builds_no_twin_and_stays_the_allocators_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Memory is what ran out: the guard builds no second model then (the run reports it in one line:
    resflex/training/out_of_memory.py)."""
    cnn = TimmBackbone("test_resnet").eval()

    def no_twin(*args: object, **kwargs: object) -> TimmBackbone:
        raise AssertionError("a twin was built while out of memory")

    def out_of_memory(x: torch.Tensor) -> torch.Tensor:  # the CPU allocator's own failure
        return torch.empty(2**62, dtype=torch.uint8)

    monkeypatch.setattr(TimmBackbone, "_real_twin", no_twin)
    monkeypatch.setattr(cnn.model, "forward_features", out_of_memory)
    with pytest.raises(RuntimeError, match="can't allocate memory"), torch.no_grad():
        cnn(torch.zeros(1, 3, 48, 48))


def test_a_vit_with_free_sizes_but_no_padding_is_told_the_next_multiple_of_its_patch() -> None:
    """``dynamic_img_size=true`` without ``dynamic_img_pad``: any multiple of the patch runs. The hint
    said "built for 224x224 inputs" and named dynamic_img_size, already set (found by a ViT audit)."""
    vit = on_meta("vit_tiny_patch16_224", dynamic_img_size=True, depth=1)
    vit.check_input_size((48, 48))
    with pytest.raises(ConfigError) as info:
        vit.check_input_size((40, 40))
    assert info.value.hint == (
        "vit_tiny_patch16_224 takes multiples of its 16x16 patch: resolution.size=48, or "
        "++backbone.model_kwargs.dynamic_img_pad=true (pads each side up to one)"
    )
    on_meta("vit_tiny_patch16_224", dynamic_img_size=True, dynamic_img_pad=True, depth=1).check_input_size(
        (40, 40)
    )


def test_a_trained_fixed_size_vit_is_told_its_size_not_a_model_argument_it_cannot_change_now() -> None:
    """At prediction or export the model is trained: ``++backbone.model_kwargs.dynamic_img_size=true``
    there was ignored and the same hint came back (found by a ViT audit)."""
    vit = on_meta("vit_tiny_patch16_224", depth=1, img_size=96)
    for key in ("predict.size", "check.sizes"):
        with pytest.raises(ConfigError) as info:
            vit.check_input_size((64, 64), key)
        assert str(info.value.hint).startswith(
            f"vit_tiny_patch16_224 was trained for 96x96 only: {key}=96, or "
        )
    with pytest.raises(ConfigError) as info:
        vit.check_input_size((64, 64), "resolution.size")
    assert str(info.value.hint).startswith("++backbone.model_kwargs.dynamic_img_size=true")
