"""The three export formats' writers: ONNX, TorchScript and ``torch.export`` (``.pt2``), each capturing
the model with dynamic batch, height and width (batch only for a model that takes one size, a ViT built
without ``dynamic_img_size``), and what each file carries beside the model.

Apart from :mod:`resflex.export` (the command: which sizes to check, the check against the eager model,
the atomic write, the model card) because how each exporter is driven — symbolic dims, size-oblivious
tracing, exportable pools, the batch-of-one workaround, quieting the exporters' output — is
format-specific and independent of how the result is checked. Every file carries the class names,
the input convention and the run's robust range (:func:`robustness_records`): the ONNX metadata,
the TorchScript / ``.pt2`` extra files (``classes.json``, ``input.txt``, ``robustness.json``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resflex.compat import size_oblivious_tracing
from resflex.errors import ConfigError
from resflex.inference import ResflexClassifier
from resflex.models.adaptive_export import exportable_functional_pools
from resflex.types import Size

log = logging.getLogger("resflex")
INPUT_CONVENTION = (
    "float32 RGB in [0, 1], shape (B, 3, H, W), normalisation inside; output: logits (B, classes)"
)


def input_convention(fixed_size: Size | None = None) -> str:
    """What the file takes and gives: :data:`INPUT_CONVENTION`, with the height and width of a model that
    takes one size (:attr:`ResflexClassifier.fixed_size`)."""
    if fixed_size is None:
        return INPUT_CONVENTION
    h, w = fixed_size
    return INPUT_CONVENTION.replace("(B, 3, H, W)", f"(B, 3, {h}, {w}) (the model's one size)")


def robustness_records(classifier: ResflexClassifier) -> list[dict[str, Any]]:
    """The run's robust ranges, one record per split with a per-size curve (``[]`` when none): an
    exported file travels without its run folder, so it carries which sizes it holds up at."""
    return [r.as_dict() for r in classifier.robust_ranges()]


def _dims(classifier: ResflexClassifier) -> dict[int, Any]:
    """Batch, height and width symbolic (the batch only, for a model that takes one size).
    ``Dim.DYNAMIC`` rather than named ranges: a backbone's size arithmetic yields guards that hold
    for every size but that the solver cannot prove (ceil-mode pooling), which named ranges reject;
    a size that *does* get specialised is still an error, and the check at several sizes catches
    anything else."""
    from torch.export import Dim

    if classifier.fixed_size is not None:
        return {0: Dim.DYNAMIC}
    return {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}


@contextlib.contextmanager
def _capture() -> Any:
    """Exportable functional pools, size-oblivious reasoning (no 0/1 specialisation of feature-map
    sizes: a 1×1 map must stay valid), quiet exporters."""
    with exportable_functional_pools(), size_oblivious_tracing(), quiet_exporters():
        yield


def not_dynamic(exc: BaseException, fmt: str, fixed_size: Size | None = None) -> ConfigError:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:300] + "..."
    if fmt == "exported" and "Guard failed" in text and "!= 1" in text:  # a one-patch row or column
        return ConfigError(
            f"cannot export format=exported at a check size one patch high or wide: torch.export "
            f"specialises a dimension of size 1 ({text[:160]}...)",
            hint="check.sizes of at least two patches a side (32 px for a patch-16 ViT), or format=onnx / "
            "torchscript, which take one-patch inputs",
        )
    if fixed_size is not None:
        return ConfigError(
            f"cannot export format={fmt} with a dynamic batch at {fixed_size[0]}x{fixed_size[1]}: "
            f"{type(exc).__name__}: {text}",
            hint="another format=; the model runs eagerly: resflex.load_classifier(RUN)",
        )
    return ConfigError(
        f"cannot export format={fmt} with dynamic batch, height and width: {type(exc).__name__}: {text}",
        hint="a backbone whose graph takes any input size (ViTs: backbone.model_kwargs.dynamic_img_size="
        "true); one that runs at any size but fixes it in its own code when captured (Twins' windows) "
        "is used eagerly: resflex.load_classifier(RUN)",
    )


def check_equal_to_eager(rows: list[dict[str, Any]], fmt: str, atol: float, where: str) -> None:
    """Refuse an export whose largest difference from the eager model (over ``rows``, each with
    ``max_abs_diff`` and ``size``) is above ``check.atol``: one check for image and token exports,
    ``where`` naming what it must hold at ("every size", "every sequence length")."""
    worst = max(rows, key=lambda r: r["max_abs_diff"])
    if not worst["max_abs_diff"] <= atol:
        raise ConfigError(
            f"the {fmt} export differs from the eager model by {worst['max_abs_diff']:.3g} at "
            f"{worst['size']} (check.atol={atol:g}): it is not valid at {where}",
            hint="report this with the backbone and pooling used; export another format meanwhile",
        )


@contextlib.contextmanager
def quiet_exporters() -> Any:
    """Exporters print progress and warnings by the page; keep them for HYDRA_FULL_ERROR / debug logs."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    sink = io.StringIO()
    # the ONNX optimiser logs each pass at INFO through the root handlers (a page per export)
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:  # ERROR: a failed opset conversion is a WARNING with a traceback; said below
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: Path, classifier: ResflexClassifier, opset: int | None
) -> None:
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError:
        raise ConfigError(
            "format=onnx needs the onnx, onnxscript and onnxruntime packages",
            hint="pip install 'resflex[export]'",
        ) from None
    kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}
    with _capture():
        program = torch.onnx.export(
            model,
            (example,),
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=(_dims(classifier),),  # positional: torch 2.6 reads dict keys as input_names
            dynamo=True,
            external_data=False,
            **kwargs,
        )
    assert program is not None  # dynamo=True: torch.onnx.export returns its ONNXProgram
    written = program.model.opset_imports.get("")
    if opset and written != opset:  # the version converter gave up (it logs why) and left the model as it was
        raise ConfigError(
            f"opset={opset} cannot be written: torch's ONNX exporter made opset {written} and could not "
            f"convert it down",
            hint=f"opset=null (the exporter's default), or opset >= {written}",
        )
    metadata = program.model.metadata_props
    metadata["classes"] = json.dumps(classifier.classes)
    metadata["input"] = input_convention(classifier.fixed_size)
    metadata["train_sizes"] = json.dumps(classifier.train_sizes)
    metadata["backbone"] = str(classifier.info.get("backbone", ""))
    metadata["robustness"] = json.dumps(robustness_records(classifier))
    program.save(str(path), external_data=False)


def export_torchscript(
    model: nn.Module, example: torch.Tensor, path: Path, classifier: ResflexClassifier
) -> None:
    with _capture():
        traced = torch.jit.trace(model, example, check_trace=False)
    extra = _extra_files(classifier)
    with warnings.catch_warnings():  # "torch.jit.save is deprecated": the user asked for TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, str(path), _extra_files=extra)


def _extra_files(classifier: ResflexClassifier) -> dict[str, str]:
    """What a TorchScript or ``.pt2`` file carries beside the model: class names, input convention,
    robust range."""
    return {
        "classes.json": json.dumps(classifier.classes),
        "input.txt": input_convention(classifier.fixed_size),
        "robustness.json": json.dumps(robustness_records(classifier)),
    }


class _BatchOfTwoOrMore(nn.Module):
    """Runs ``inner`` on the batch plus a copy of its first image, and drops that row again.

    Why: timm ViTs expand their class token to the batch size, and torch.export then
    guards ``batch != 1`` (a stride-0 expand is contiguous only for batch 1), refusing
    single images. Samples are independent in eval mode, so the extra row changes nothing.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.cat([x, x[:1]], dim=0))[:-1]


def _min_batch(program: Any) -> int:
    """The smallest batch an exported program accepts (its input's symbolic dim 0 range)."""
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            size = node.meta["val"].shape[0]
            if isinstance(size, int):
                return size
            ranges = program.range_constraints.get(size.node.expr)
            return int(ranges.lower) if ranges is not None else 0
    return 0


def export_program(
    model: nn.Module, example: torch.Tensor, path: Path, classifier: ResflexClassifier
) -> None:
    # non-strict (the default in recent torch; 2.7 defaulted to strict): the per-size BatchNorm choice
    # reaches its layers through a Python holder (resflex.models.bn_export), which dynamo would freeze
    with _capture():
        dims = {"x": _dims(classifier)}
        program = torch.export.export(model, (example,), dynamic_shapes=dims, strict=False)
        if _min_batch(program) > 1:
            wrapped = _BatchOfTwoOrMore(model)
            program = torch.export.export(wrapped, (example,), dynamic_shapes=dims, strict=False)
    extra = _extra_files(classifier)
    torch.export.save(program, str(path), extra_files=extra)
