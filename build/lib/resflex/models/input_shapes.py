"""Which input shapes a timm model takes, found by running it on the ``meta`` device.

Rules cover the common cases (a CNN needs half its total stride per side, a fixed-size ViT its
own size), but "any timm model" includes many that no rule describes: LeViT and CoAtNet carry
attention biases for one grid, MaxViT needs each stage's map to be a multiple of its window, DLA
and HRNet add maps of two branches that differ by a pixel unless each side is a multiple of 32,
EfficientFormerV2 reshapes to a fixed token count. Each such model trained until the first batch
(or the first evaluation at another size) met a shape it could not take, and stopped there with a
40-line trace. A forward on the meta device computes every shape and no value (no memory, a few
milliseconds on CPU), so every shape a run will use can be tried before the data is read; the
model's own error becomes a one-line refusal naming the size and a hint from what the model's
class accepts. Neither timm nor torch has such a check: timm's ``pretrained_cfg`` says
``fixed_input_size`` but not which other shapes work (Twins is marked fixed and takes any size).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import timm
import torch
from torch import nn

#: (architecture, (h, w)) -> the error the backbone raised at that shape, or None: one forward per
#: shape per process (preflight, the run and the scale-consistency search ask for the same shapes)
_VERDICTS: dict[tuple[str, tuple[int, int]], BaseException | None] = {}


#: (architecture, (h, w)) -> the error a real forward raised at that shape, or None (the models whose
#: shapes the meta device cannot vouch for: :func:`meta_may_miss`)
_REAL_VERDICTS: dict[tuple[str, tuple[int, int]], BaseException | None] = {}
#: architecture -> its twin with real tensors: one at most (its weights take real memory)
_REAL_TWINS: dict[str, nn.Module] = {}


class SeveralFeatureMaps(TypeError):
    """``forward_features`` returned a list or tuple (a multi-branch model such as CrossViT)."""


@contextmanager
def _evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode inside the block (BatchNorm in train mode refuses a batch of one image), each
    submodule's own mode restored after (a frozen part stays frozen)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _cannot_tell(error: BaseException) -> bool:
    """The meta device's own limits (an op without a meta kernel, a value read with ``.item()``, a
    tensor kept outside the parameters and buffers): no verdict on the shape."""
    return isinstance(error, NotImplementedError) or "meta" in str(error).lower()


def meta_forward_error(backbone: nn.Module, size: tuple[int, int], architecture: str) -> BaseException | None:
    """The error ``backbone`` (built on the meta device) raises on a ``(1, 3, h, w)`` batch; None when
    it runs (or when the meta device cannot tell). ``architecture`` names the model and the arguments
    it was built with (the cache's key)."""
    key = (architecture, (int(size[0]), int(size[1])))
    if key in _VERDICTS:
        return _VERDICTS[key]
    error: BaseException | None = None
    try:
        with torch.no_grad(), _evaluation_mode(backbone):
            backbone(torch.empty(1, 3, *key[1], device="meta"))
    except SeveralFeatureMaps as exc:
        error = exc
    except Exception as exc:  # the model's own check or shape error, whatever its type
        error = None if _cannot_tell(exc) else exc
    if error is not None:  # kept for the process: not its traceback's frames (and their meta tensors)
        error = error.with_traceback(None)
    _VERDICTS[key] = error
    return error


def meta_may_miss(model: nn.Module, size: tuple[int, int]) -> bool:
    """Whether ``size``, accepted by the meta forward, may still fail on real tensors: the model is one
    timm marks ``fixed_input_size`` (not freed by ``dynamic_img_size``) and ``size`` is not its own.

    The meta device computes shapes, not values. MViTv2 indexes relative-position tables sized for the
    ``img_size`` it was built with: at sides above it the index runs past the table, which the meta
    device cannot see (256x256 passes there and raises an IndexError on real tensors). A probe of one
    model of each timm family at 64x64, 64x128, 256x256 and 320x192 found MViTv2 the only model whose
    meta verdict a real forward contradicts, and every model that does so is marked fixed-size; a
    model that takes any size, or a fixed one at its own size, costs no real forward.
    """
    config = getattr(model, "pretrained_cfg", None) or {}
    if not config.get("fixed_input_size") or getattr(model, "dynamic_img_size", False):
        return False
    return built_size(model) != tuple(size)


def built_size(model: nn.Module) -> tuple[int, int] | None:
    """The (h, w) timm's pretrained config gives for the model (its ``input_size``), or None."""
    input_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    return (int(input_size[-2]), int(input_size[-1])) if input_size and len(input_size) >= 2 else None


def real_forward_error(
    build: Callable[[], nn.Module], size: tuple[int, int], architecture: str
) -> BaseException | None:
    """The error a real twin of the backbone (``build()``, on the CPU, its random init outside the run's
    random stream) raises on a ``(1, 3, h, w)`` batch of zeros; None when it runs. One twin is kept, for
    the last ``architecture`` asked (:func:`forget_real_twins` frees it); each verdict is cached."""
    key = (architecture, (int(size[0]), int(size[1])))
    if key in _REAL_VERDICTS:
        return _REAL_VERDICTS[key]
    if architecture not in _REAL_TWINS:
        _REAL_TWINS.clear()
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            _REAL_TWINS[architecture] = build().eval()
    error: BaseException | None = None
    try:  # on the CPU whatever the caller's default device (the preflight builds under "meta")
        with torch.no_grad(), torch.device("cpu"):
            _REAL_TWINS[architecture](torch.zeros(1, 3, *key[1]))
    except Exception as exc:  # the model's own error at that shape, whatever its type
        error = exc.with_traceback(None)
    _REAL_VERDICTS[key] = error
    return error


def forget_real_twins() -> None:
    """Free the real twin once a run's shapes are checked (its verdicts stay cached)."""
    _REAL_TWINS.clear()


def keyword_arguments(cls: type) -> set[str]:
    """The arguments ``cls(...)`` takes by name (what ``backbone.model_kwargs`` may set), or none when
    its signature cannot be read."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return set()
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {name for name, p in parameters.items() if p.kind in kinds}


def constructor_arguments(model: nn.Module) -> set[str]:
    """The keyword arguments the model's class takes (the ``backbone.model_kwargs`` it accepts)."""
    return keyword_arguments(type(model))


ANY_SIZE_BACKBONES = "a backbone that takes any size (resnet18, convnext_atto, vit_small_patch16)"
#: the keys that size a trained model's inputs (prediction, export): a model argument is fixed there
TRAINED_MODEL_KEYS = ("predict.size", "check.sizes")


def size_hint(
    backbone: nn.Module,
    model: nn.Module,
    name: str,
    reduction: int,
    architecture: str,
    size: tuple[int, int],
    key: str = "resolution.size",
) -> str:
    """What to try when ``backbone`` (around the timm ``model``) refuses ``size``, given as ``key``: the
    argument of the model's class that frees the input size, else the size it was built for, else the
    smallest square it takes when that is larger, else sides that are multiples of its stride when it
    takes those, else another backbone."""
    arguments = constructor_arguments(model)
    if "dynamic_img_size" in arguments and not getattr(model, "dynamic_img_size", False):
        pad = " ++backbone.model_kwargs.dynamic_img_pad=true" if "dynamic_img_pad" in arguments else ""
        free = f"++backbone.model_kwargs.dynamic_img_size=true{pad} (the input size is free)"
        grid = getattr(getattr(model, "patch_embed", None), "img_size", None)  # the size it was built at
        built = tuple(grid) if grid is not None else built_size(model)
        if key in TRAINED_MODEL_KEYS and built is not None:  # a trained model: its size, or train again
            h, w = built
            return f"{name} was trained for {h}x{w} only: {key}={h}, or train again with {free}"
        return free
    patch_embed = getattr(model, "patch_embed", None)
    patch = getattr(patch_embed, "patch_size", None)
    padded = getattr(patch_embed, "dynamic_img_pad", False)
    if getattr(model, "dynamic_img_size", False) and "dynamic_img_pad" in arguments and not padded and patch:
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        if size[0] % ph or size[1] % pw:  # any multiple of the patch runs; padding frees the rest
            side = -(-max(size) // max(ph, pw)) * max(ph, pw)
            resize = "" if key.startswith("model.") else f" {key}={side}, or"  # a size key: the next one up
            return (
                f"{name} takes multiples of its {ph}x{pw} patch:{resize} "
                "++backbone.model_kwargs.dynamic_img_pad=true (pads each side up to one)"
            )
    if "strict_img_size" in arguments and getattr(patch_embed, "strict_img_size", False):
        return "++backbone.model_kwargs.strict_img_size=false (the patch grid follows the input)"
    training = key == "resolution.size"
    config = getattr(model, "pretrained_cfg", None) or {}
    built = built_size(model)
    if config.get("fixed_input_size") and built is not None:
        h, w = built
        if meta_forward_error(backbone, (h, w), architecture) is None:
            named = {"resolution.size": f"resolution.size={h} 'eval.resolutions=[{h}]'"}
            sizes = named.get(key, f"'{key}=[{h}]'" if key == "eval.resolutions" else f"{key}={h}")
            return f"{name} is built for {h}x{w} inputs: {sizes}, or {ANY_SIZE_BACKBONES}"
    sides = range(16, 513, 16)
    smallest = next((s for s in sides if meta_forward_error(backbone, (s, s), architecture) is None), None)
    if smallest is not None and smallest > min(size):
        return f"{name} takes sides from about {smallest} px: {key} >= {smallest}"
    multiples = ((2 * reduction, 3 * reduction), (3 * reduction, 2 * reduction))
    if all(meta_forward_error(backbone, shape, architecture) is None for shape in multiples):
        examples = ", ".join(str(reduction * k) for k in (1, 2, 3))
        buckets = (
            f"; resolution.multiple={reduction} rounds the keep_aspect buckets to them" if training else ""
        )
        return f"{name} takes sides that are multiples of its stride {reduction} ({examples}, ...){buckets}"
    return f"choose {ANY_SIZE_BACKBONES}"


_UNEXPECTED = re.compile(r"^(?:(?P<owner>[\w.]+)\(\) )?got an unexpected keyword argument '(?P<keyword>\w+)'")


def unexpected_keyword(error: TypeError) -> tuple[str, str | None] | None:
    """(keyword, the class or function that refused it) of Python's "got an unexpected keyword
    argument" error, or None for any other TypeError."""
    match = _UNEXPECTED.match(str(error))
    if match is None:
        return None
    owner = match.group("owner")
    return match.group("keyword"), owner.rsplit(".", 1)[0] if owner else None


def accepted_keywords(architecture: str, owner: str | None) -> list[str]:
    """The keyword arguments of ``owner`` (a class in the module of timm's ``architecture``), or []."""
    if owner is None:
        return []
    try:
        module = importlib.import_module(timm.models.model_entrypoint(architecture).__module__)
        return sorted(keyword_arguments(getattr(module, owner)))
    except (AttributeError, ImportError, RuntimeError):
        return []


def keyword_hint(keyword: str, accepted: list[str]) -> str:
    """Remove the key, or the close names the model takes."""
    close = difflib.get_close_matches(keyword, accepted, n=3, cutoff=0.6)
    if close:
        return f"did you mean {', '.join(close)}? or remove it: ~backbone.model_kwargs.{keyword}"
    return f"remove it: ~backbone.model_kwargs.{keyword}"
