"""timm backbones as feature extractors that return a spatial map for any input size.

``TimmBackbone(x)`` always returns ``(B, C, h, w)``: CNNs already do; ViTs built
with ``dynamic_img_size=True`` return tokens, which are reshaped here (prefix
tokens dropped) so the same pooling heads serve both; NHWC models (Swin and
friends) are permuted. Model names, weights and normalisation constants come
from timm's registry and pretrained configs.
"""

from __future__ import annotations

import difflib
import logging
import math
from typing import TYPE_CHECKING, Any, cast

import timm
import torch
from torch import nn

from resflex.errors import ConfigError, first_line
from resflex.models.checkpoint import LoadReport, load_backbone_weights
from resflex.models.hub import hub_or_cache
from resflex.models.input_shapes import (
    ANY_SIZE_BACKBONES,
    SeveralFeatureMaps,
    accepted_keywords,
    built_size,
    constructor_arguments,
    keyword_hint,
    meta_forward_error,
    meta_may_miss,
    real_forward_error,
    size_hint,
    unexpected_keyword,
)
from resflex.runtime import out_of_memory_cause
from resflex.validation import check_value

log = logging.getLogger("resflex")

if TYPE_CHECKING:

    class TimmModel(nn.Module):
        """What resflex reads of a ``timm.create_model(..., num_classes=0)`` model, which timm annotates
        as a plain ``nn.Module``: every timm architecture has these (a type for the checker only)."""

        num_features: int

        def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_model_name(name: str) -> None:
    """Raise :class:`ConfigError` with close timm names when ``name`` is not a timm architecture."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"backbone.name must be a timm model name, got {name!r}")
    architecture = name.split(".", 1)[0]  # "resnet18.a1_in1k" -> "resnet18"
    if timm.is_model(architecture):
        return
    candidates = timm.list_models()
    close = difflib.get_close_matches(architecture, candidates, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models('*pattern*') for names"
    raise ConfigError(f"unknown backbone {name!r} (backbone.name)", hint=hint)


def create_timm_model(name: str, pretrained: bool = False, **kwargs: Any) -> TimmModel:
    """``timm.create_model`` without a classifier; hub download failures become one-line errors.

    Local weight files are *not* passed to timm here: resflex reads them itself
    (:func:`resflex.models.checkpoint.load_backbone_weights`) so that the load is
    always ``weights_only``/safetensors and reports missing keys in one line.
    """
    if not pretrained:
        return cast("TimmModel", timm.create_model(name, pretrained=False, num_classes=0, **kwargs))
    with hub_or_cache(f"backbone.pretrained=true ({name})") as online:
        try:
            return cast("TimmModel", timm.create_model(name, pretrained=True, num_classes=0, **kwargs))
        except (OSError, RuntimeError, ValueError) as exc:
            first = first_line(exc) if online else "the hub is not reachable, and they are not cached"
            raise ConfigError(
                f"could not get pretrained weights for {name} (backbone.pretrained=true): {first}",
                hint="online: check the network/HF hub; offline: backbone.weights=/path/to/file.safetensors",
            ) from None


#: architecture -> the backbone built on the meta device (:meth:`TimmBackbone._shape_twin`)
_SHAPE_TWINS: dict[str, TimmBackbone] = {}


def _is_capturing() -> bool:
    """True while torch.jit.trace / torch.export capture a graph (a Python check would freeze the size)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class TimmBackbone(nn.Module):
    """A timm model without its classifier, returning a (B, C, h, w) feature map.

    ``drop_path_rate``: stochastic depth, timm's ``drop_path_rate`` argument of
    ``create_model`` (the rate of the deepest block; timm scales it down for earlier
    ones); ``None`` leaves the model's own default (0 for most). Active in training only.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        weights: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        init_from: str | None = None,
        init_head: bool = False,
        drop_path_rate: float | None = None,
    ) -> None:
        super().__init__()
        check_model_name(name)
        model_kwargs = dict(model_kwargs or {})
        if drop_path_rate is not None:
            if "drop_path_rate" in model_kwargs:
                raise ConfigError(
                    "backbone.drop_path_rate and backbone.model_kwargs.drop_path_rate both set",
                    hint="keep backbone.drop_path_rate",
                )
            model_kwargs["drop_path_rate"] = check_value(
                "backbone.drop_path_rate", drop_path_rate, float, lambda v: 0 <= v < 1, "a number in [0, 1)"
            )
        if weights and init_from:
            raise ConfigError(
                "backbone.weights and backbone.init_from both set: they are two sources for the same tensors",
                hint="keep one (init_from for a resflex checkpoint, weights for a timm/torch weights file)",
            )
        if init_head and not init_from:
            raise ConfigError(
                "backbone.init_head=true loads the pooling and head of backbone.init_from's run, and "
                "backbone.init_from is not set",
                hint="backbone.init_from=<run folder or checkpoint>, or backbone.init_head=false",
            )
        if pretrained and (weights or init_from):
            log.info(
                "backbone.pretrained=true: the hub's weights are not downloaded, %s replaces them",
                "backbone.weights" if weights else "backbone.init_from",
            )
        self.name = name
        # init_head is applied by the classifier builder (the head lives outside the backbone);
        # both are kept so that the saved config and the model agree on where weights came from.
        self.init_from = str(init_from) if init_from else None
        self.init_head = bool(init_head)
        self.load_reports: list[LoadReport] = []
        try:
            self.model = create_timm_model(
                name, pretrained=bool(pretrained) and not (weights or init_from), **model_kwargs
            )
        except TypeError as exc:  # an argument the model's class does not take
            refused = unexpected_keyword(exc)
            if refused is None:
                raise
            keyword, owner = refused
            if keyword == "drop_path_rate" and drop_path_rate is not None:
                raise ConfigError(
                    f"{name} has no stochastic depth (backbone.drop_path_rate)",
                    hint="backbone.drop_path_rate=null",
                ) from None
            accepted = accepted_keywords(name.split(".", 1)[0], owner)
            raise ConfigError(
                f"{name} takes no argument {keyword!r} (backbone.model_kwargs.{keyword})",
                hint=keyword_hint(keyword, accepted),
            ) from None
        #: the model and the arguments that shape it: the key of the shapes it was found to take
        self.architecture = f"{name} {sorted(model_kwargs.items())!r}"
        self._model_kwargs = model_kwargs
        if weights:
            self.load_reports.append(load_backbone_weights(self.model, weights, key="backbone.weights"))
        if init_from:
            self.load_reports.append(
                load_backbone_weights(self.model, init_from, key="backbone.init_from", require_resflex=True)
            )
        for report in self.load_reports:
            report.log()
        self.num_features: int = int(self.model.num_features)
        # timm's ViTs count their class and register tokens; VOLO has a class token and no count
        self.num_prefix_tokens: int = int(
            getattr(self.model, "num_prefix_tokens", getattr(self.model, "cls_token", None) is not None)
        )
        self.patch_embed = getattr(self.model, "patch_embed", None)
        self.output_fmt: str = str(getattr(self.model, "output_fmt", "NCHW"))
        config = timm.data.resolve_data_config({}, model=self.model)
        self.mean: tuple[float, ...] = tuple(config.get("mean", IMAGENET_MEAN))
        self.std: tuple[float, ...] = tuple(config.get("std", IMAGENET_STD))
        #: the (h, w) inputs this module has run: the first batch of any other shape is guarded (forward);
        #: the twins that the guard and the checks run are not (their failures are the answer)
        self._shapes_run: set[tuple[int, int]] = set()
        self.guard_new_shapes = True

    @property
    def reduction(self) -> int:
        """Total stride from input pixels to the final feature map (32 for ResNets, 16 for ViT-B/16)."""
        info = getattr(self.model, "feature_info", None)
        if info:
            last = info[-1] if isinstance(info, list) else info.info[-1]
            return int(last.get("reduction", 32))
        patch_size = getattr(self.patch_embed, "patch_size", None)  # CrossViT: a list of patch embeddings
        if patch_size is not None:
            return int(max(patch_size))
        return 32

    @property
    def fixed_input_size(self) -> tuple[int, int] | None:
        """The one (h, w) a fixed-size ViT takes (``dynamic_img_size`` off, a strict patch embedding);
        None for a backbone that takes many sizes."""
        patch_embed = self.patch_embed
        if patch_embed is None or not hasattr(patch_embed, "patch_size"):
            return None
        img_size = getattr(patch_embed, "img_size", None)
        dynamic = not getattr(patch_embed, "strict_img_size", True) or getattr(
            self.model, "dynamic_img_size", False
        )
        return None if dynamic or img_size is None else (int(img_size[0]), int(img_size[1]))

    def check_input_size(
        self, size: tuple[int, int], key: str = "resolution.size", largest_side: int | None = None
    ) -> None:
        """Reject sizes the network cannot map to a meaningful feature map, before training starts.

        ViTs: a fixed-size ViT takes only its own size, and without ``dynamic_img_pad`` each
        side must be at least one patch. CNNs: each side must be at least half the total stride
        (below that the last map is padding). Then every model: the size must run, tried on the
        meta device (:mod:`resflex.models.input_shapes`: the models no rule describes), and for a
        fixed-size model away from its size, on real tensors too (:func:`meta_may_miss`).
        ``largest_side``: the longest side the run will feed it, for a hint that covers them all.
        """
        h, w = size
        patch_embed = self.patch_embed
        if patch_embed is not None and hasattr(patch_embed, "patch_size"):
            fixed = self.fixed_input_size
            if fixed is not None and fixed != (h, w):
                raise ConfigError(
                    f"{key}={h}x{w} but {self.name} only accepts {fixed[0]}x{fixed[1]}",
                    hint=self._size_hint(size, key),
                )
            ph, pw = patch_embed.patch_size
            if not getattr(patch_embed, "dynamic_img_pad", False) and (h < ph or w < pw):
                raise ConfigError(
                    f"{key}={h}x{w} is smaller than {self.name}'s {ph}x{pw} patch",
                    hint="use a larger size or ++backbone.model_kwargs.dynamic_img_pad=true",
                )
        else:
            minimum = max(1, self.reduction // 2)
            if min(h, w) < minimum:
                raise ConfigError(
                    f"{key}={h}x{w} is too small for {self.name} (total stride {self.reduction}): "
                    f"each side must be at least {minimum}",
                    hint=f"use {key} >= {minimum}, or a backbone with a smaller stride (output_stride)",
                )
        self._check_runs(size, key, largest_side)

    def _size_hint(self, size: tuple[int, int], key: str) -> str:
        twin = self._shape_twin()
        return size_hint(twin, self.model, self.name, self.reduction, self.architecture, size, key)

    def _shape_twin(self) -> TimmBackbone:
        """This backbone on the meta device, for shape-only forwards: itself when it is there already (the
        preflight's model), else the same architecture built there once, outside the module tree (no
        parameters, no state_dict entry). A twin, not this model's tensors swapped for meta ones: a
        swap can leave meta tensors behind in a module registered under two names (``patch_embed``)."""
        if next(self.parameters()).is_meta:
            return self
        if self.architecture not in _SHAPE_TWINS:  # one per architecture and process, kept out of this
            with torch.device("meta"):  # module (not moved, saved, copied or pickled with it)
                _SHAPE_TWINS[self.architecture] = TimmBackbone(self.name, model_kwargs=self._model_kwargs)
        return _SHAPE_TWINS[self.architecture]

    def _real_twin(self, **model_kwargs: Any) -> TimmBackbone:
        """This architecture with real tensors (random init, no weights read), ``model_kwargs`` on top."""
        twin = TimmBackbone(self.name, model_kwargs={**self._model_kwargs, **model_kwargs})
        twin.guard_new_shapes = False
        return twin

    def _forward_error(self, size: tuple[int, int], real: bool) -> tuple[BaseException | None, bool]:
        """(the error the model raises at ``size``, whether only real tensors showed it): the meta
        forward, then a real one when ``real`` is set or the meta device may miss it."""
        error = meta_forward_error(self._shape_twin(), size, self.architecture)
        if error is not None or not (real or meta_may_miss(self.model, size)):
            return error, False
        error = real_forward_error(self._real_twin, size, self.architecture)
        return error, error is not None

    def _check_runs(
        self, size: tuple[int, int], key: str, largest_side: int | None = None, real: bool = False
    ) -> None:
        """Raise a one-line :class:`ConfigError` when the model fails on a ``size`` input (its own error,
        found on the meta device, no memory and no compute, or on real tensors: ``_forward_error``)."""
        error, value_dependent = self._forward_error(size, real)
        if error is None:
            return
        h, w = size
        if isinstance(error, SeveralFeatureMaps):
            raise ConfigError(
                f"backbone.name={self.name}: {error}, and a pooling head takes one",
                hint=f"choose {ANY_SIZE_BACKBONES}",
            )
        reason = first_line(error)
        reason = reason if len(reason) <= 120 else reason[:117] + "..."
        hint = self._built_size_hint(size, largest_side) if value_dependent else None
        raise ConfigError(
            f"{key}={h}x{w}: {self.name} cannot take a {h}x{w} input ({type(error).__name__}: {reason})",
            hint=hint or self._size_hint(size, key),
        )

    def _built_size_hint(self, size: tuple[int, int], largest_side: int | None) -> str | None:
        """``++backbone.model_kwargs.img_size=N`` when the model's class takes ``img_size`` and, built with
        it, runs ``size`` (MViTv2's relative-position tables then span sides up to N: timm resizes
        pretrained ones to it); N covers ``largest_side``, rounded up to the stride. None otherwise."""
        if "img_size" not in constructor_arguments(self.model):
            return None
        side = max(*size, largest_side or 0)
        side = -(-side // self.reduction) * self.reduction
        built = f"{self.architecture} img_size={side}"
        if real_forward_error(lambda: self._real_twin(img_size=side), size, built) is not None:
            return None
        return f"++backbone.model_kwargs.img_size={side} (then {self.name} takes sides up to {side} px)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map of ``x``; the first batch of each new shape is guarded: a failure the checks
        before training could not see (on the meta device, or a shape they were not asked about) is a
        one-line refusal naming the size when the model fails at that size alone (``_guard``)."""
        if not self.guard_new_shapes or x.is_meta or _is_capturing():  # a twin; a traced graph
            return self._feature_map(x)
        shape = (int(x.shape[-2]), int(x.shape[-1]))
        if shape in self._shapes_run:
            return self._feature_map(x)
        try:
            features = self._feature_map(x)
        except Exception as exc:
            if out_of_memory_cause(exc) is None:  # out of memory: no twin built now (the run says it)
                self._guard(shape, exc)
            raise
        self._shapes_run.add(shape)
        return features

    def _guard(self, shape: tuple[int, int], error: Exception) -> None:
        """Raise a one-line :class:`ConfigError` in place of ``error`` (the model's failure at its first
        ``shape`` batch) when a real twin fails at ``shape`` too and runs at a shape this module has
        run (or the size it was built for): the size is the cause. Otherwise return (the caller
        re-raises the model's own error: a bug, not a size)."""
        key = "resolution.size" if self.training else "eval.resolutions"
        reference = min(self._shapes_run, default=built_size(self.model) or (224, 224))
        if self._forward_error(reference, real=True)[0] is not None:
            return
        try:
            self._check_runs(shape, key, real=True)
        except ConfigError as refusal:
            raise ConfigError(
                f"{refusal.message}, at its first {shape[0]}x{shape[1]} batch", hint=refusal.hint
            ) from error

    def _feature_map(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)
        if not isinstance(features, torch.Tensor):  # CrossViT: one map per branch
            count = len(features) if isinstance(features, list | tuple) else "several"
            raise SeveralFeatureMaps(f"its forward_features returns {count} feature maps (one per branch)")
        if features.ndim == 3:
            return self._tokens_to_map(features, x.shape[-2:])
        if self.output_fmt == "NHWC":
            return features.permute(0, 3, 1, 2)
        return features

    def _grid_size(self, patch_embed: Any, image_size: torch.Size) -> tuple[Any, Any]:
        """The patch grid of an (H, W) input: timm's ``dynamic_feat_size`` in integer arithmetic only,
        so that a traced or exported graph keeps H and W symbolic (``int()``/``math.ceil`` would
        freeze them to the example's size). ``patch_embed``: the model's (timm's ``PatchEmbed``)."""
        ph, pw = patch_embed.patch_size
        h, w = image_size[0], image_size[1]
        if getattr(patch_embed, "dynamic_img_pad", False):
            return (h + ph - 1) // ph, (w + pw - 1) // pw
        return h // ph, w // pw

    def _strided_grid(self, count: int, image_size: torch.Size) -> tuple[int, int]:
        """The (h, w) grid of ``count`` tokens of a model without timm's ``dynamic_feat_size`` (MViTv2,
        Twins): each side the input's divided by the total stride, rounded down or up as the model's
        convolutions round it (the rounding whose grid holds ``count`` tokens); a square grid when
        none does (the caller then reports the mismatch)."""
        stride, height, width = self.reduction, image_size[0], image_size[1]  # symbolic when exported
        sides = [
            (height // stride, width // stride),
            ((height + stride - 1) // stride, (width + stride - 1) // stride),
        ]
        sides += [(sides[0][0], sides[1][1]), (sides[1][0], sides[0][1])]
        for h, w in sides:
            if h * w == count:
                return h, w
        side = math.isqrt(count)
        return side, side

    def _tokens_to_map(self, tokens: torch.Tensor, image_size: torch.Size) -> torch.Tensor:
        """(B, prefix + h*w, C) tokens -> (B, C, h, w), using the patch grid of this input."""
        patch_tokens = tokens[:, self.num_prefix_tokens :]
        if self.patch_embed is not None and hasattr(self.patch_embed, "dynamic_feat_size"):
            h, w = self._grid_size(self.patch_embed, image_size)
        else:
            h, w = self._strided_grid(patch_tokens.shape[1], image_size)
        if not _is_capturing() and h * w != patch_tokens.shape[1]:
            raise RuntimeError(
                f"cannot reshape {patch_tokens.shape[1]} tokens of {self.name} to a {h}x{w} grid; "
                "build the ViT with dynamic_img_size=True"
            )
        return patch_tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
