"""NaFlex backbones and the pooling heads on a masked token grid (resflex.models.naflex)."""

from __future__ import annotations

import pytest
import torch

from resflex.data.naflex import TokenBatch, collate_tokens
from resflex.errors import ConfigError
from resflex.models.classifier import ImageClassifier
from resflex.models.naflex import NaFlexBackbone, TokenGrid, pool_tokens
from resflex.models.pooling import AvgMaxPool, AvgPool, GeMPool, MaxPool, PyramidPool

# odd, non-square, one-row, one-column and single-cell grids (rows, columns)
GRIDS = [(3, 5), (1, 7), (4, 4), (1, 1), (6, 2), (5, 1), (2, 3)]
PATCH = 4


def token_grid(grids=GRIDS, channels: int = 6, pad_value: float = 0.0, seed: int = 0):
    """A padded token grid and, per image, its (1, C, h, w) feature map (the per-image reference)."""
    g = torch.Generator().manual_seed(seed)
    longest = max(h * w for h, w in grids) + 3  # always some padding, even on the longest
    tokens = torch.full((len(grids), longest, channels), pad_value)
    coord = torch.zeros(len(grids), longest, 2, dtype=torch.int64)
    valid = torch.zeros(len(grids), longest, dtype=torch.bool)
    maps = []
    for b, (h, w) in enumerate(grids):
        feature_map = torch.randn(1, channels, h, w, generator=g)
        maps.append(feature_map)
        tokens[b, : h * w] = feature_map[0].flatten(1).T  # row-major, as timm patchifies
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        coord[b, : h * w] = torch.stack([ys.flatten(), xs.flatten()], dim=1)
        valid[b, : h * w] = True
    return TokenGrid(tokens, coord, valid), maps


HEADS = {
    "avg": lambda: AvgPool(),
    "max": lambda: MaxPool(),
    "avgmax": lambda: AvgMaxPool(),
    "gem": lambda: GeMPool(p=2.5),
    # gains of 1: the finer levels count (at the default 0 they would vanish and hide any cell error)
    "pyramid": lambda: PyramidPool(levels=[1, 2, 3, 4], proj_channels=5, level_scale_init=1.0),
    "pyramid_max_raw": lambda: PyramidPool(
        levels=[1, 2, 3], pool_type="max", proj_channels=None, level_scale_init=None
    ),
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_masked_pooling_equals_the_head_on_each_images_own_map(name: str) -> None:
    torch.manual_seed(0)
    head = HEADS[name]()
    head.setup(6)
    if isinstance(head, PyramidPool) and head.proj_channels:  # non-trivial BatchNorm statistics
        bn = head.proj[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    head.eval()
    # padding filled with a huge value: any padded token that leaked in would show
    grid, maps = token_grid(pad_value=1e4 if name != "gem" else 7.0)
    with torch.no_grad():
        batched = pool_tokens(head, grid)
        per_image = torch.cat([head(feature_map) for feature_map in maps])
    assert batched.shape == per_image.shape == (len(GRIDS), head.out_features(6))
    torch.testing.assert_close(batched, per_image, rtol=1e-5, atol=1e-5)


def test_pyramid_batchnorm_statistics_come_from_valid_tokens_only() -> None:
    head = PyramidPool(levels=[1, 2], proj_channels=3, level_scale_init=1.0)
    head.setup(6)
    grid, _ = token_grid(pad_value=1e4)
    head.train()
    pool_tokens(head, grid)
    reference = PyramidPool(levels=[1, 2], proj_channels=3, level_scale_init=1.0)
    reference.setup(6)
    weights = {k: v for k, v in head.state_dict().items() if "running" not in k}
    reference.load_state_dict(weights, strict=False)
    reference.proj[1].reset_running_stats()
    reference.train()
    # the valid tokens as a batch of 1x1 maps: the statistics a CNN head would collect from them
    valid_tokens = grid.tokens[grid.valid][..., None, None]
    reference.proj(valid_tokens)
    torch.testing.assert_close(head.proj[1].running_mean, reference.proj[1].running_mean)
    torch.testing.assert_close(head.proj[1].running_var, reference.proj[1].running_var)


def small_backbone(**kwargs) -> NaFlexBackbone:
    model_kwargs = dict(patch_size=PATCH, embed_dim=24, depth=2, num_heads=2, **kwargs)
    return NaFlexBackbone("naflexvit_base_patch16_gap", model_kwargs=model_kwargs)


def images_of_shapes(shapes, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), k)
        for k, (h, w) in enumerate(shapes)
    ]


def normalized(batch: TokenBatch) -> TokenBatch:
    return batch.normalized(torch.full((3,), 127.0), torch.full((3,), 64.0))


@pytest.mark.parametrize("pooling", ["avg", "pyramid"])
def test_classifier_on_odd_non_square_and_tiny_images(pooling: str) -> None:
    torch.manual_seed(0)
    # image shapes as the loader frames them (multiples of the patch), plus sides that are not
    shapes = [(4, 4), (4, 28), (12, 8), (8, 12), (16, 16), (5, 9), (1, 1)]
    batch, _ = collate_tokens(images_of_shapes(shapes), PATCH, seq_len=16)
    grids = [((h + PATCH - 1) // PATCH, (w + PATCH - 1) // PATCH) for h, w in shapes]
    assert batch.patch_valid.sum(1).tolist() == [h * w for h, w in grids]
    assert batch.grid_sizes().tolist() == [list(g) for g in grids]
    head = PyramidPool(levels=[1, 2], proj_channels=8) if pooling == "pyramid" else AvgPool()
    net = ImageClassifier(small_backbone(), head, num_classes=5).eval()
    grid = net.backbone(normalized(batch))
    assert grid.tokens.shape == (len(shapes), batch.patches.shape[1], 24)
    logits = net(normalized(batch))
    assert logits.shape == (len(shapes), 5) and torch.isfinite(logits).all()


def test_an_images_logits_do_not_depend_on_its_batch() -> None:
    """Masked attention and masked pooling: padding and the other images change nothing."""
    torch.manual_seed(0)
    net = ImageClassifier(small_backbone(), PyramidPool(levels=[1, 2], proj_channels=8), 4).eval()
    items = images_of_shapes([(4, 28), (16, 16), (8, 4), (12, 12)])
    together, _ = collate_tokens(items, PATCH, seq_len=16)
    with torch.no_grad():
        batched = net(normalized(together))
        alone = torch.cat([net(normalized(collate_tokens([item], PATCH, seq_len=16)[0])) for item in items])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def test_backbone_refuses_a_cnn_and_a_plain_input() -> None:
    with pytest.raises(ConfigError, match="not a NaFlex vision transformer"):
        NaFlexBackbone("resnet18")
    with pytest.raises(TypeError, match="token batches"):
        small_backbone()(torch.zeros(1, 3, 8, 8))


def test_a_vit_name_is_built_with_timm_use_naflex() -> None:
    backbone = NaFlexBackbone(
        "vit_tiny_patch16_224", model_kwargs={"embed_dim": 24, "depth": 1, "num_heads": 2, "patch_size": 8}
    )
    assert type(backbone.model).__name__ == "NaFlexVit" and backbone.patch_size == 8


def test_every_parameter_gets_a_gradient_and_earlier_checkpoints_still_load() -> None:
    """timm's head side of a gap NaFlexVit (``fc_norm``, applied after timm's own pool) never runs under
    resflex's pooling: it is dropped, so DDP finds no unused parameter (issue 30); a state dict saved
    with it (every NaFlex checkpoint before) loads strictly, its fc_norm tensors skipped."""
    torch.manual_seed(0)
    net = ImageClassifier(small_backbone(), PyramidPool(levels=[1, 2], proj_channels=8), num_classes=3)
    assert net.backbone.dropped_head_side == ["fc_norm"]
    batch, _ = collate_tokens(images_of_shapes([(4, 28), (16, 16), (8, 4)]), PATCH, seq_len=16)
    net(normalized(batch)).sum().backward()
    assert [name for name, p in net.named_parameters() if p.grad is None] == []
    earlier = {**net.state_dict(), "backbone.model.fc_norm.weight": torch.ones(24)}
    earlier["backbone.model.fc_norm.bias"] = torch.zeros(24)
    net.load_state_dict(earlier, strict=True)
