"""NaFlex vision transformers on token batches, and resflex's pooling heads on a masked token grid.

:class:`NaFlexBackbone` is timm's ``NaFlexVit`` (``naflexvit_*`` names, or any ``vit_*`` built with
timm's ``use_naflex=True``) from timm's registry: its patch embedding, factorised/learned position
embeddings per image grid and masked attention are timm's. It returns a :class:`TokenGrid`: the patch
tokens (prefix tokens dropped) with their grid coordinates and validity mask.

The pooling heads (``pooling=avg|max|avgmax|gem|pyramid``) are the same modules, with the same
parameters, as for CNNs; :func:`pool_tokens` computes each of them over each image's own valid patch
grid, never counting padding. Written here because timm has no such thing: its
``global_pool_naflex`` does masked avg/max/avgmax only, and nothing of GeM or a pyramid on a
masked grid. The pyramid's l x l cells follow ``adaptive_avg_pool2d``'s cell bounds
(``floor(i*h/l)`` to ``ceil((i+1)*h/l)``) on each image's (h, w) grid, so a token batch gives, image
for image, what the head gives on that image's feature map (``tests/models/test_naflex.py`` checks
it against a per-image loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import timm
import torch
from torch import nn

from resflex.errors import ConfigError, find_user_error
from resflex.models.backbone import TimmBackbone
from resflex.models.pooling import AvgMaxPool, AvgPool, GeMPool, MaxPool, PoolingHead, PyramidPool
from resflex.types import TokenBatch

if TYPE_CHECKING:
    from timm.models.naflexvit import NaFlexVit


@dataclass
class TokenGrid:
    """Backbone output for a token batch: ``tokens`` (B, N, C), ``coord`` (B, N, 2) (row, column),
    ``valid`` (B, N)."""

    tokens: torch.Tensor
    coord: torch.Tensor
    valid: torch.Tensor

    def grid_sizes(self) -> torch.Tensor:
        """(B, 2): each image's grid (rows, columns)."""
        return self.coord.masked_fill(~self.valid[..., None], -1).amax(dim=1) + 1


def model_patch_size(model: nn.Module) -> int | None:
    """The patch side of a NaFlexVit (None: not a NaFlex model)."""
    embeds = getattr(model, "embeds", None)
    patch = getattr(embeds, "patch_size", None)
    if type(model).__name__ != "NaFlexVit" or patch is None:
        return None
    ph, pw = patch
    return int(ph) if ph == pw else None


class NaFlexBackbone(TimmBackbone):
    """timm's NaFlexVit without its head, on :class:`~resflex.data.naflex.TokenBatch` inputs.

    Same arguments as :class:`TimmBackbone` (weights, ``init_from``, ``drop_path_rate``); a ``vit_*``
    name is built with ``use_naflex=True``. Anything that is not a NaFlexVit is refused in one line.
    """

    def __init__(self, name: str, model_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        model_kwargs = dict(model_kwargs or {})
        if not name.split(".", 1)[0].startswith("naflexvit"):
            model_kwargs.setdefault("use_naflex", True)
        try:
            super().__init__(name, model_kwargs=model_kwargs, **kwargs)
        except (TypeError, ConfigError) as exc:  # a CNN (or any model) that takes no use_naflex keyword
            if isinstance(exc, ConfigError) and "'use_naflex'" not in exc.message:
                raise  # another argument the model does not take: the backbone's own one line
            reason = exc.message if isinstance(exc, ConfigError) else str(exc)
            raise ConfigError(
                f"backbone {name} is not a NaFlex vision transformer ({reason})",
                hint="backbone=naflexvit, or a vit_* name (built with timm's use_naflex=True)",
            ) from None
        patch = model_patch_size(self.model)
        if patch is None:
            raise ConfigError(
                f"backbone {name} is not a NaFlex vision transformer ({type(self.model).__name__})",
                hint="backbone=naflexvit, or a vit_* name (built with timm's use_naflex=True)",
            )
        self.patch_size = patch
        # timm's head side (``forward_head``: an attention pool, the ``fc_norm`` after the pool) is never
        # run: resflex's pooling heads pool the tokens of ``forward_features``. Its parameters would never
        # get a gradient, and DDP stops at them ("parameters that were not used in producing the loss":
        # a gap NaFlexVit's fc_norm, issue 30), so they are dropped; the forward is unchanged, and
        # checkpoints written before still load (their tensors for these modules are skipped).
        self.dropped_head_side = [
            name for name in HEAD_SIDE if _has_parameters(getattr(self.model, name, None))
        ]
        for name in self.dropped_head_side:
            setattr(self.model, name, nn.Identity())
        if self.dropped_head_side:
            self.register_load_state_dict_pre_hook(_skip_dropped_head_side)

    @property
    def reduction(self) -> int:
        return self.patch_size

    def check_input_size(
        self, size: tuple[int, int], key: str = "resolution.size", largest_side: int | None = None
    ) -> None:
        """Token batches: sizes are sequence lengths (s, s), any s >= 1 works."""

    # token batches in, a token grid out, where TimmBackbone takes and gives images: by design (the
    # classifier hands each backbone what its own loader makes), refused below for anything else
    def forward(self, x: TokenBatch) -> TokenGrid:  # type: ignore[override]
        if not isinstance(x, TokenBatch):
            raise TypeError(f"{self.name} (NaFlex) takes token batches (resolution=naflex), got {type(x)}")
        model = cast("NaFlexVit", self.model)  # __init__ refuses any other model (model_patch_size)
        out = model.forward_features(**x.model_inputs())
        if not isinstance(out, dict):  # timm's NaFlex mode (patch_coord given) returns a dict
            raise TypeError(f"{self.name}: forward_features gave {type(out).__name__}, not a dict of tokens")
        tokens = out["patches"][:, self.num_prefix_tokens :]
        return TokenGrid(tokens, x.patch_coord, out["patch_valid"])


#: NaFlexVit modules of timm's ``forward_head`` that resflex's pooling replaces (see NaFlexBackbone)
HEAD_SIDE = ("fc_norm", "attn_pool")


def _has_parameters(module: nn.Module | None) -> bool:
    return module is not None and any(True for _ in module.parameters())


def _skip_dropped_head_side(module: NaFlexBackbone, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-state hook: an earlier checkpoint's tensors of the dropped head-side modules are skipped."""
    for name in module.dropped_head_side:
        for key in [k for k in state_dict if k.startswith(f"{prefix}model.{name}.")]:
            del state_dict[key]


# ---- the trained classifier on plain tensors: prediction and export ------------------------------

#: the input names of a token classifier, in order (the ONNX inputs; timm's ``forward_features`` keywords)
TOKEN_INPUTS = ("patches", "patch_coord", "patch_valid")


class TokenClassifier(nn.Module):
    """A NaFlex run's classifier on three tensors, with its pixel normalisation inside.

    ``forward(patches, patch_coord, patch_valid)``: ``patches`` (B, N, P*P*3) in timm's channels-last
    patch layout (``timm.data.naflex_transforms.patchify_image``), float32 in [0, 1] or uint8;
    ``patch_coord`` int64 (B, N, 2) (row, column); ``patch_valid`` bool (B, N), False on padding
    -> logits (B, classes). Why plain tensors rather than a :class:`~resflex.types.TokenBatch`: an
    exporter and a user outside resflex see tensors only. Normalisation is the LightningModule's
    (:meth:`TokenBatch.normalized`), so uint8 input gives bit-identical network input to what
    training and evaluation fed it, and [0, 1] input ``k/255`` gives it too (``k/255*255 == k`` in float32).
    """

    # buffers: the LightningModule's pixel mean/std
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, model: nn.Module, mean: Any, std: Any) -> None:
        super().__init__()
        self.model = model
        # the LightningModule's buffers: 0..255 scale, one value per channel
        self.register_buffer("pixel_mean", torch.as_tensor(mean, dtype=torch.float32).reshape(3).clone())
        self.register_buffer("pixel_std", torch.as_tensor(std, dtype=torch.float32).reshape(3).clone())

    def naflex_backbone(self) -> NaFlexBackbone:
        """The backbone of :attr:`model` (a NaFlex run's ``ImageClassifier``)."""
        backbone = self.model.backbone
        if not isinstance(backbone, NaFlexBackbone):
            raise TypeError(f"a token classifier needs a NaFlex backbone, got {type(backbone).__name__}")
        return backbone

    @property
    def patch_size(self) -> int:
        return self.naflex_backbone().patch_size

    def forward(
        self, patches: torch.Tensor, patch_coord: torch.Tensor, patch_valid: torch.Tensor
    ) -> torch.Tensor:
        pixels = patches if patches.dtype == torch.uint8 else patches * 255.0
        # seq_len: the tensor's own (symbolic under export; the backbone does not read it)
        batch = TokenBatch(pixels, patch_coord, patch_valid, patches.shape[1])
        return self.model(batch.normalized(self.pixel_mean, self.pixel_std))


def export_blocker(model: nn.Module) -> str | None:
    """Why a NaFlexVit cannot be captured with a dynamic sequence length (None: nothing known).

    timm's default NaFlex position embedding (learned or factorized, ``pos_embed_use_grid_sample``
    false) reads each image's grid size from the data (``int(h.item())`` per image, then one
    ``F.interpolate`` per grid size): ``torch.export`` stops at that data-dependent value
    (``GuardOnDataDependentSymNode``; timm 1.0.31, torch 2.14). The ``grid_sample`` formulation is
    tensor-only and exports (measured: ONNX equal to eager to 3e-8 at several lengths), but its
    numbers differ from the interpolation's when a grid is smaller than the table (antialiasing), so a
    model trained with one cannot be exported with the other.
    """
    embeds = getattr(model, "embeds", None)
    kind = getattr(embeds, "pos_embed_type", "none")
    if kind in ("learned", "factorized") and not getattr(embeds, "pos_embed_use_grid_sample", False):
        return (
            f"timm's NaFlexVit interpolates its {kind} position embeddings per image at a grid size read "
            "from the data (.item()), which torch.export cannot capture with a dynamic sequence length"
        )
    return None


# ---- pooling on a masked token grid -------------------------------------------------------------


def masked_mean(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, N, C) tokens, (B, K, N) 0/1 weights -> (B, K, C) means over each row's tokens."""
    w = weights.to(x.dtype)
    return (w @ x) / w.sum(dim=-1, keepdim=True).clamp(min=1)


def masked_max(x: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """(B, N, C) tokens, (B, K, N) bool -> (B, K, C) maxima over each row's tokens (one cell at a time:
    a (B, K, N, C) tensor would be K times the tokens)."""
    low = torch.finfo(x.dtype).min
    cells = [x.masked_fill(~members[:, k, :, None], low).amax(dim=1) for k in range(members.shape[1])]
    return torch.stack(cells, dim=1)


def cell_members(grid: TokenGrid, level: int) -> torch.Tensor:
    """(B, level*level, N) bool: token n lies in cell (i, j) of its image's level x level adaptive grid.

    Cell bounds are ``adaptive_avg_pool2d``'s on the image's (h, w): rows ``floor(i*h/l)`` to
    ``ceil((i+1)*h/l)`` (cells overlap when l does not divide h, and repeat rows when h < l).
    """
    sizes = grid.grid_sizes()  # (B, 2)
    i = torch.arange(level, device=sizes.device)
    out = []
    for axis in (0, 1):
        n = sizes[:, axis, None]  # (B, 1)
        start = (i[None] * n) // level  # (B, l)
        end = ((i[None] + 1) * n + level - 1) // level
        pos = grid.coord[..., axis][:, None, :]  # (B, 1, N)
        out.append((pos >= start[..., None]) & (pos < end[..., None]))  # (B, l, N)
    rows, cols = out
    members = rows[:, :, None, :] & cols[:, None, :, :]  # (B, l, l, N)
    return members.flatten(1, 2) & grid.valid[:, None, :]


def _global(x: torch.Tensor, valid: torch.Tensor, pool_type: str) -> torch.Tensor:
    members = valid[:, None, :]
    if pool_type == "avg":
        return masked_mean(x, members)[:, 0]
    if pool_type == "max":
        return masked_max(x, members)[:, 0]
    if pool_type == "avgmax":
        return 0.5 * (masked_mean(x, members)[:, 0] + masked_max(x, members)[:, 0])
    raise ValueError(f"unknown pool type {pool_type!r}")


def _pyramid(head: PyramidPool, grid: TokenGrid) -> torch.Tensor:
    x, valid = grid.tokens, grid.valid
    parts = [_global(x, valid, head.pool_type)] if 1 in head.levels else []
    if head.fine_levels:
        projected = x
        if head.proj_channels is not None:
            if head.in_channels is None:
                raise RuntimeError("PyramidPool.setup(in_channels) must be called before forward")
            if head.proj.training:  # 1x1 conv + BatchNorm + ReLU on the valid tokens only (statistics too)
                flat = head.proj(x[valid][..., None, None])[..., 0, 0]
                projected = x.new_zeros((*valid.shape, flat.shape[-1]))
                projected[valid] = flat
            else:  # per token: every token, padding zeroed (no data-dependent shape: exportable)
                b, n, c = x.shape
                dense = head.proj(x.reshape(b * n, c, 1, 1)).reshape(b, n, -1)
                projected = dense.masked_fill(~valid[..., None], 0.0)
        for k, level in enumerate(head.fine_levels):
            members = cell_members(grid, level)
            cells = (
                masked_mean(projected, members) if head.pool_type == "avg" else masked_max(projected, members)
            )
            pooled = cells.transpose(1, 2).flatten(1)  # channel-major, as SelectAdaptivePool2d flattens
            parts.append(pooled * head.level_scales[k] if head.level_scales is not None else pooled)
    return torch.cat(parts, dim=1)


def pool_tokens(head: PoolingHead, grid: TokenGrid) -> torch.Tensor:
    """``head`` (a resflex pooling head) applied to each image's valid token grid: (B, D)."""
    x, valid = grid.tokens, grid.valid
    if isinstance(head, PyramidPool):
        return _pyramid(head, grid)
    if isinstance(head, AvgMaxPool):
        return _global(x, valid, "avgmax")
    if isinstance(head, AvgPool):
        return _global(x, valid, "avg")
    if isinstance(head, MaxPool):
        return _global(x, valid, "max")
    if isinstance(head, GeMPool):
        p = head.p.to(x.dtype)
        return _global(x.clamp(min=head.eps).pow(p), valid, "avg").pow(1.0 / p)
    raise ConfigError(
        f"pooling head {type(head).__name__} has no token-grid version for NaFlex backbones",
        hint="pooling=avg, max, avgmax, gem or pyramid",
    )


# ---- refusing bad combinations before any work ----------------------------------------------------


def _target(node: Any) -> str:
    return str(node.get("_target_", "")) if node is not None and hasattr(node, "get") else ""


def check_naflex_config(cfg: Any) -> None:
    """One-line :class:`ConfigError` for combinations a NaFlex run cannot make, from the composed config
    alone (the model is probed on the meta device: no weights, no data read):

    - ``resolution=naflex`` with a backbone that takes images (a CNN, a plain ViT), and the reverse;
    - a ``resolution.patch_size`` the model cannot take (not its patch size);
    - a token budget below one image (``NaFlexResolution`` checks it), bad sequence lengths;
    - mixing / random erasing / scale consistency, which work on image batches only (not yet on token
      batches).
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    backbone, resolution = cfg.get("backbone"), cfg.get("resolution")
    token_data = _target(resolution).endswith("NaFlexResolution")
    token_model = _target(backbone).endswith("NaFlexBackbone")
    if not token_data and not token_model:
        return
    name = str(backbone.get("name", "?")) if backbone is not None else "?"
    if token_data and not token_model:
        raise ConfigError(
            f"resolution=naflex makes token batches, and backbone {name} takes image batches "
            f"({_target(backbone).rsplit('.', 1)[-1] or 'no backbone'})",
            hint="backbone=naflexvit (a NaFlex ViT), or a resolution that makes images (resolution=fixed)",
        )
    if token_model and not token_data:
        kind = _target(resolution).rsplit(".", 1)[-1]
        raise ConfigError(
            f"backbone {name} (NaFlex) takes token batches, and resolution {kind} makes image batches",
            hint="resolution=naflex",
        )
    try:  # the schedule checks its sequence lengths and budget itself
        schedule = instantiate(OmegaConf.to_container(resolution, resolve=True))
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        raise user_error from None
    model_kwargs = backbone.get("model_kwargs")
    container = OmegaConf.to_container(model_kwargs, resolve=True) if model_kwargs else {}
    if not isinstance(container, dict):
        raise ConfigError(f"backbone.model_kwargs must be a mapping, got {model_kwargs!r}")
    kwargs = {str(k): v for k, v in container.items()}
    if not name.startswith("naflexvit"):
        kwargs.setdefault("use_naflex", True)
    try:
        with torch.device("meta"):  # architecture only: no memory, no weights
            probe = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except (TypeError, RuntimeError) as exc:
        raise ConfigError(
            f"backbone {name} is not a NaFlex vision transformer ({str(exc).splitlines()[0]})",
            hint="backbone=naflexvit, or a vit_* name (built with timm's use_naflex=True)",
        ) from None
    patch = model_patch_size(probe)
    if patch is None:
        raise ConfigError(
            f"backbone {name} is not a NaFlex vision transformer (timm builds a {type(probe).__name__})",
            hint="backbone=naflexvit, or a vit_* name (built with timm's use_naflex=True)",
        )
    if schedule.patch_size != patch:
        raise ConfigError(
            f"resolution.patch_size={schedule.patch_size} but {name} takes {patch}x{patch} patches",
            hint=f"resolution.patch_size={patch}, or backbone.model_kwargs.patch_size={schedule.patch_size}",
        )
    resolutions = OmegaConf.select(cfg, "eval.resolutions", default=None)
    if resolutions not in (None, "auto") and resolutions:  # as scripts/eval.py refuses it, not ignored
        shown = OmegaConf.to_container(resolutions) if OmegaConf.is_config(resolutions) else resolutions
        raise ConfigError(
            f"eval.resolutions={shown} sizes images, and this NaFlex run is evaluated at sequence lengths "
            "(tokens per image, each image at its own aspect)",
            hint="eval.seq_lens=[32,64,96] (the first one is val/acc's)",
        )
    if OmegaConf.select(cfg, "resolution.batch_scaling", default=False):  # the token budget is the batch
        raise ConfigError(
            "resolution.batch_scaling=true scales an image batch by its pixels; a NaFlex batch is already "
            "sized by its tokens (resolution.tokens_per_batch)",
            hint="resolution.batch_scaling=false with resolution=naflex",
        )
    for key in ("mixup", "cutmix", "random_erasing"):  # scale_consistency switches itself off
        value = OmegaConf.select(cfg, f"model.{key}", default=0)
        if value:
            raise ConfigError(
                f"model.{key}={value} works on image batches; NaFlex token batches do not have it yet",
                hint=f"model.{key}=0 with resolution=naflex",
            )
