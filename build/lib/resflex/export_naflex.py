"""``scripts/export.py`` on a NaFlex run: ONNX or ``torch.export`` with a dynamic batch and sequence length.

What is exported is :meth:`resflex.run.Run.token_classifier`: three inputs (:data:`TOKEN_INPUT`),
normalisation inside, logits out. Captured with ``torch.export`` (ONNX: torch.onnx's exporter on top of
it) with batch and sequence length symbolic, then checked as image exports are
(:mod:`resflex.export`): the file is loaded back (onnxruntime, ``torch.export.load``) and run at no
fewer than two sequence lengths — the run's ``max_seq_len``, a shorter one and one it never trained
at, with images of several aspects (so padding and masks are exercised) and batch sizes 2, 1, 3 —
against the eager model; above ``check.atol`` nothing is written.

What cannot be exported is refused in one line before any capture (:func:`check_token_export`):

- timm's default NaFlex position embedding reads each image's grid size from the data, which
  ``torch.export`` cannot capture (:func:`resflex.models.naflex.export_blocker`; measured with timm
  1.0.31 / torch 2.14: ``GuardOnDataDependentSymNode`` in ``calculate_naflex_grid_sizes``). A run
  trained with ``+backbone.model_kwargs.pos_embed_use_grid_sample=true`` (timm's tensor-only
  formulation) exports, and its ONNX file equals eager to ~1e-8;
- ``format=torchscript``: ``torch.jit.trace`` would fix every image's grid size in the trace.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from resflex.data.naflex import collate_tokens, image_size_for_seq
from resflex.errors import ConfigError
from resflex.export_formats import check_equal_to_eager, quiet_exporters
from resflex.models.naflex import TOKEN_INPUTS, TokenClassifier, export_blocker
from resflex.robust_range import robust_ranges
from resflex.run import Run

#: what a NaFlex export takes and returns (the ONNX metadata's ``input``)
TOKEN_INPUT = (
    "patches float32 in [0, 1] (B, N, P*P*3) in timm's channels-last patch layout (patchify_image of the "
    "image resized, keeping its aspect, to at most N patches: get_image_size_for_seq), patch_coord int64 "
    "(B, N, 2) (row, column), patch_valid bool (B, N) false on padding; normalisation inside; output: "
    "logits (B, classes)"
)
#: the formats a NaFlex run exports to (both capture with torch.export)
TOKEN_FORMATS = ("onnx", "exported")
#: aspects (width / height) of the check images: wide, tall, square, so a batch pads and masks
CHECK_ASPECTS = ((5, 3), (2, 5), (1, 1))


def check_token_format(fmt: str) -> None:
    """One line for a format a NaFlex run cannot be exported to (before the model is built)."""
    if fmt not in TOKEN_FORMATS:
        raise ConfigError(
            f"format={fmt} cannot carry a NaFlex run: a trace fixes every image's patch grid",
            hint="format=onnx or format=exported (dynamic batch and sequence length), for a run trained "
            "with +backbone.model_kwargs.pos_embed_use_grid_sample=true (the default position embedding "
            "exports in no format: scripts/predict.py or resflex.run.open_run(CKPT).token_classifier())",
        )


def check_token_export(classifier: TokenClassifier, fmt: str) -> None:
    """One line (:class:`ConfigError`) for a NaFlex export that cannot work, before any capture."""
    check_token_format(fmt)
    blocker = export_blocker(classifier.naflex_backbone().model)
    if blocker is not None:
        raise ConfigError(
            f"cannot export format={fmt}: {blocker}",
            hint="train with +backbone.model_kwargs.pos_embed_use_grid_sample=true (exportable); this run: "
            "scripts/predict.py, or resflex.run.open_run(CKPT).token_classifier() in PyTorch",
        )


def check_seq_lens(schedule: Any, requested: Sequence[Any] | None = None) -> list[int]:
    """The sequence lengths an export is checked at: the run's ``max_seq_len``, its shortest training
    length (or half the longest), one it never trained at; plus ``requested`` (``check.seq_lens``)."""
    from resflex.naflex_framing import parse_seq_len

    main = int(schedule.max_seq_len)
    trained = set(schedule.seq_lens) | {main}
    lens = [main, min(schedule.seq_lens) if min(schedule.seq_lens) != main else max(1, main // 2)]
    unseen = main + max(1, main // 2)
    while unseen in trained:
        unseen += 1
    lens.append(unseen)
    hint = "check.seq_lens=[48,96] (whole tokens per image)"
    lens += [parse_seq_len(v, None, "check.seq_lens", hint) for v in requested or []]
    return list(dict.fromkeys(lens))


def token_inputs(
    patch_size: int, seq_len: int, batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random images of :data:`CHECK_ASPECTS`, each framed at its aspect for ``seq_len`` tokens, as the
    three inputs (patches in [0, 1])."""
    items = []
    for i in range(batch):
        width, height = CHECK_ASPECTS[i % len(CHECK_ASPECTS)]
        h, w = image_size_for_seq(width * 100, height * 100, patch_size, seq_len)
        items.append((torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator), 0))
    tokens, _ = collate_tokens(items, patch_size, seq_len)
    return tokens.patches.float() / 255.0, tokens.patch_coord, tokens.patch_valid


def _dims() -> tuple[dict[int, Any], ...]:
    """Batch and sequence length symbolic in all three inputs."""
    from torch.export import Dim

    dims = {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}
    return (dims, dims, dims)


def capture(
    classifier: TokenClassifier, fmt: str, path: Path, opset: int | None, metadata: dict[str, str]
) -> None:
    """Write ``classifier`` to ``path`` as ``fmt`` with dynamic batch and sequence length."""
    example = token_inputs(classifier.patch_size, 12, 2, torch.Generator().manual_seed(1))
    with quiet_exporters():
        if fmt == "onnx":
            kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}
            program = torch.onnx.export(
                classifier,
                example,
                input_names=list(TOKEN_INPUTS),
                output_names=["logits"],
                dynamic_shapes=_dims(),
                dynamo=True,
                external_data=False,
                **kwargs,
            )
            assert program is not None  # dynamo=True: torch.onnx.export returns its ONNXProgram
            program.model.metadata_props.update(metadata)
            program.save(str(path), external_data=False)
        else:
            exported = torch.export.export(classifier, example, dynamic_shapes=_dims())
            extra = {f"{k}.json" if k != "input" else "input.txt": v for k, v in metadata.items()}
            torch.export.save(exported, str(path), extra_files=extra)


def load_token_runner(path: Path, fmt: str) -> Callable[..., torch.Tensor]:
    """The exported file, loaded back as a user would, as ``(patches, coord, valid) -> logits``."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda *xs: torch.from_numpy(
            session.run(None, {n: x.numpy() for n, x in zip(names, xs, strict=True)})[0]
        )
    program = torch.export.load(str(path)).module()
    return lambda *xs: program(*xs)


@torch.inference_mode()
def compare_tokens(
    eager: TokenClassifier, runner: Callable[..., torch.Tensor], seq_lens: Sequence[int], trained: set[int]
) -> list[dict[str, Any]]:
    """Max abs difference of logits, export vs eager, at each sequence length (batch 2, 1, 3 in turn)."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i, seq_len in enumerate(seq_lens):
        batch = (2, 1, 3)[i % 3]
        inputs = token_inputs(eager.patch_size, seq_len, batch, generator)
        expected = eager(*inputs)
        try:
            with quiet_exporters():
                got = runner(*inputs)
        except Exception as exc:
            raise ConfigError(
                f"the export fails at {seq_len} tokens (batch {batch}): {type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:300]}",
                hint="report this with the backbone and pooling; use the checkpoint in PyTorch meanwhile",
            ) from None
        rows.append(
            {
                "size": f"{seq_len} tok",
                "seq_len": seq_len,
                "batch": batch,
                "tokens": int(inputs[0].shape[1]),
                "max_abs_diff": float((got.float() - expected.float()).abs().max()),
                "trained": seq_len in trained,
            }
        )
    return rows


def export_token_run(
    run: Run,
    fmt: str,
    output: Path,
    atol: float,
    requested: Sequence[Any] | None = None,
    opset: int | None = None,
) -> dict[str, Any]:
    """Export a NaFlex run, check it against eager at :func:`check_seq_lens`, then move it into ``output``.

    Returns the record :func:`resflex.export.run_export` prints (format, file, robustness, checks,
    seconds); one-line :class:`ConfigError` when it cannot be exported or disagrees by more than
    ``atol`` (nothing is left at ``output`` then).
    """
    check_token_format(fmt)
    schedule = run.required_schedule()
    seq_lens = check_seq_lens(schedule, requested)
    classifier = run.token_classifier()
    check_token_export(classifier, fmt)
    for p in classifier.parameters():
        p.requires_grad_(False)
    main = (int(schedule.max_seq_len),) * 2
    robustness = [{**r.as_dict(), "unit": "tokens"} for r in robust_ranges(run.metrics, main)]
    metadata = {
        "classes": json.dumps(run.classes()),
        "input": TOKEN_INPUT,
        "train_seq_lens": json.dumps(sorted(set(schedule.seq_lens))),
        "max_seq_len": str(schedule.max_seq_len),
        "patch_size": str(classifier.patch_size),
        "backbone": str(OmegaConf.select(run.config, "backbone.name", default="")),
        "robustness": json.dumps(robustness),
    }
    started = time.time()
    output.parent.mkdir(parents=True, exist_ok=True)
    suffix = output.suffix or (".onnx" if fmt == "onnx" else ".pt2")
    tmp = output.with_name(f".{output.stem}.{os.getpid()}.tmp{suffix}")
    try:
        try:
            capture(classifier, fmt, tmp, opset, metadata)
        except Exception as exc:
            raise ConfigError(
                f"cannot export format={fmt} with a dynamic sequence length: {type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:300]}",
                hint="use the checkpoint in PyTorch (scripts/predict.py) meanwhile",
            ) from None
        rows = compare_tokens(classifier, load_token_runner(tmp, fmt), seq_lens, set(schedule.seq_lens))
        check_equal_to_eager(rows, fmt, atol, "every sequence length")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "format": fmt,
        "file": str(output),
        "input": TOKEN_INPUT,
        "robustness": robustness,
        "checks": rows,
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "seconds": round(time.time() - started, 2),
    }
