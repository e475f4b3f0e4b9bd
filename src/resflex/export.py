"""Export a trained run with dynamic batch, height and width: ``python scripts/export.py ckpt_path=CKPT
format=onnx|torchscript|exported output=FILE``.

What is exported is :func:`resflex.inference.load_classifier`'s model: float32 RGB in
[0, 1], ``(B, 3, H, W)``, normalisation inside, logits out. Before capture the
adaptive pool operators are swapped for an exportable formulation
(:mod:`resflex.models.adaptive_export`): the stock ones have no size-generic export
(the spatial pyramid's 2×2/4×4 grids at sizes that do not divide them).

An export is only written once it has been checked: the file is loaded back
(onnxruntime for ONNX, ``torch.jit.load``, ``torch.export.load``) and run at no
fewer than three sizes — the run's eval size, a non-square one and one not seen in
training, with different batch sizes — against the eager model (a ViT built without
``dynamic_img_size`` takes one size: it is exported with a dynamic batch at that size, and
checked there); the max abs
difference at each is printed, and above ``check.atol`` the export fails. It is
written to a temporary name beside ``output`` and renamed only then, so a failed
export leaves nothing behind. A model that cannot be exported with dynamic sizes
fails with one line that says why. The run's ``model_card.md`` is copied beside the file.

The file also says which sizes to feed it: the run's *robust range* — per split with an
accuracy-per-size curve, the contiguous sizes around the best whose accuracy stays within
0.03 of it, in px and × of the trained size (:class:`resflex.robust_range.RobustRange`) — is
in the ONNX metadata (``robustness``), in the TorchScript / ``.pt2`` extra files
(``robustness.json``), in the model card beside the file and in the returned record.

Formats: ``onnx`` (torch.onnx's torch.export-based exporter; class names and the
input convention in the model's metadata), ``torchscript`` (``torch.jit.trace``;
sizes stay symbolic in the trace), ``exported`` (``torch.export`` with symbolic
``batch``/``height``/``width``, saved with ``torch.export.save`` as ``.pt2``).

A NaFlex run (token sequences) is exported by :mod:`resflex.export_naflex`: (patches, patch_coord,
patch_valid) with a dynamic batch and sequence length, or refused in one line where timm's model
cannot be captured.

This module is the command and the check; each format's writer (capture with dynamic sizes, what the
file carries) is :mod:`resflex.export_formats`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from resflex.config import CONFIG_DIR, prepare_cli
from resflex.data.sizes import parse_size_list, round_to
from resflex.errors import ConfigError, DataError, interruption_as_one_line, user_errors_as_one_line
from resflex.export_formats import (
    INPUT_CONVENTION,
    check_equal_to_eager,
    export_onnx,
    export_program,
    export_torchscript,
    input_convention,
    not_dynamic,
    quiet_exporters,
    robustness_records,
)
from resflex.inference import ResflexClassifier, classifier_of
from resflex.models.adaptive_export import make_exportable
from resflex.models.bn_export import describe, with_size_selected_stats
from resflex.robust_range import robust_ranges
from resflex.run import Run, open_run
from resflex.types import Size
from resflex.validation import check_value, check_writable

log = logging.getLogger("resflex")
FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported": ".pt2"}

__all__ = [
    "FORMATS",
    "INPUT_CONVENTION",
    "check_sizes",
    "compare",
    "default_output",
    "export_classifier",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "load_runner",
    "main",
    "prepare_for_export",
    "robustness_records",
    "run_export",
]


def prepare_for_export(classifier: ResflexClassifier) -> tuple[nn.Module, list[str]]:
    """A float32, contiguous, eval-mode copy whose adaptive pools export with symbolic sizes.

    A run with per-size BatchNorm statistics (a calibrated run) carries all of them: the graph
    picks each input's row as ``classifier`` does in Python (:mod:`resflex.models.bn_export`), so
    the file equals ``load_classifier`` at every size and the robust range in its metadata holds.
    ``classifier`` itself is left as it was.
    """
    stats = classifier.size_stats
    exportable, replaced = make_exportable(classifier)
    exportable.size_stats = None  # swapping buffers from Python would freeze the example's size
    exportable.check_input_range = False  # a look at values: no place in a graph
    model: nn.Module = exportable
    if stats is not None and stats.table:
        model = with_size_selected_stats(
            exportable, stats.table, stats.main, classifier.stats_by_short_side, prefix="model."
        )
    model = model.float().to(memory_format=torch.contiguous_format).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, replaced


def check_sizes(classifier: ResflexClassifier, requested: object = None) -> list[Size]:
    """The sizes an export is checked at: ≥ 3, one non-square, one not among the training sizes.

    Default: the run's eval size, a 2:3 non-square size and a size between the training
    sizes and below the smallest (sides rounded to the run's ``multiple``, never below
    what the backbone takes). ``requested`` adds sizes (a list of ``64`` or ``[h, w]``, or one alone).
    A model that takes one size (:attr:`ResflexClassifier.fixed_size`) is checked there three times,
    at batches of 2, 1 and 3.
    """
    plain = OmegaConf.to_container(requested) if OmegaConf.is_config(requested) else requested
    if classifier.fixed_size is not None:
        return [classifier.fixed_size] * 3 + [
            s for s in parse_size_list(plain, "check.sizes") if s != classifier.fixed_size
        ]
    multiple = int(classifier.info.get("multiple", 8) or 8)
    trained = set(classifier.train_sizes)
    base_h, base_w = classifier.eval_size or (max(trained) if trained else (64, 64))
    lo = max(classifier.min_side, multiple)

    def fit(h: float, w: float) -> Size:
        return max(lo, round_to(h, multiple)), max(lo, round_to(w, multiple))

    sizes: list[Size] = [(base_h, base_w), fit(base_h, base_w * 1.5)]
    for factor in (0.75, 1.25, 0.5, 1.5):
        candidate = fit(base_h * factor, base_w * factor * 1.25)
        if candidate not in trained and candidate not in sizes:
            sizes.append(candidate)
            break
    for size in parse_size_list(plain, "check.sizes"):
        if size not in sizes:
            sizes.append(size)
    if all(h == w for h, w in sizes):
        sizes.append(fit(base_h, base_w * 2))
    if all(s in trained for s in sizes):
        sizes.append(fit(base_h + multiple, base_w + 3 * multiple))
    return sizes


def load_runner(path: Path, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported file, loaded back as a user would, as ``tensor -> tensor``."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    if fmt == "torchscript":
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": loading what the user asked for
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        return lambda x: module(x)
    program = torch.export.load(str(path)).module()
    return lambda x: program(x)


@torch.inference_mode()
def compare(
    eager: nn.Module,
    runner: Callable[[torch.Tensor], torch.Tensor],
    sizes: Sequence[Size],
    fmt: str = "export",
    seed: int = 0,
    fixed_size: Size | None = None,
) -> list[dict[str, Any]]:
    """Max abs difference of logits, export vs eager, at each size (batch 2, 1, 3, ... in turn);
    ``fixed_size``: the one size the model takes, for the message of a failure."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i, (h, w) in enumerate(sizes):
        batch = (2, 1, 3)[i % 3]
        x = torch.rand(batch, 3, h, w, generator=generator)
        expected = eager(x)
        try:
            with quiet_exporters():
                got = runner(x)
        except Exception as exc:
            raise not_dynamic(exc, fmt, fixed_size) from None
        if tuple(got.shape) != tuple(expected.shape):
            raise ConfigError(
                f"the export gives shape {tuple(got.shape)} at {h}x{w}, eager {tuple(expected.shape)}: "
                f"it is not dynamic in {'the batch' if fixed_size else 'batch/height/width'}"
            )
        rows.append(
            {
                "size": f"{h}x{w}",
                "batch": batch,
                "max_abs_diff": float((got.float() - expected).abs().max()),
                "trained": False,
            }
        )
    return rows


def export_classifier(
    classifier: ResflexClassifier,
    fmt: str,
    output: str | Path,
    sizes: Sequence[Size] | None = None,
    *,
    atol: float,
    opset: int | None = None,
) -> dict[str, Any]:
    """Export, check against eager at ``sizes`` (default :func:`check_sizes`), then move into ``output``.

    Returns a record: format, file, sizes checked with their max abs difference, the
    pooling modules replaced, seconds taken. Raises :class:`ConfigError` (one line)
    when the model cannot be captured with dynamic sizes, or the export disagrees
    with eager by more than ``atol``; nothing is left at ``output`` then.
    """
    check_format(fmt)
    output = Path(str(output)).expanduser()
    if output.is_dir():
        raise ConfigError(f"output={output} is a folder", hint=f"output={output / ('model' + FORMATS[fmt])}")
    sizes = list(sizes or check_sizes(classifier))
    for size in sizes:
        classifier.check_size(size, "check.sizes")
    check_writable(output)
    tmp = output.with_name(f".{output.stem}.{os.getpid()}.tmp{output.suffix or FORMATS[fmt]}")
    started = time.time()
    model, replaced = prepare_for_export(classifier)
    eager = classifier.float().eval()
    # the example for capture: a 3x4 feature map, so no traced size is 1 (or equal to another); a
    # model that takes one size is captured at it
    stride = max(8, int(classifier.info.get("reduction", 32) or 32))
    h, w = classifier.fixed_size or (3 * stride, 4 * stride)
    example = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    try:
        try:
            if fmt == "onnx":
                export_onnx(model, example, tmp, classifier, opset)
            elif fmt == "torchscript":
                export_torchscript(model, example, tmp, classifier)
            else:
                export_program(model, example, tmp, classifier)
        except ConfigError:
            raise
        except OSError as exc:
            raise DataError(f"cannot write output={output}: {exc.strerror or exc}") from None
        except Exception as exc:
            raise not_dynamic(exc, fmt, classifier.fixed_size) from None
        rows = compare(eager, load_runner(tmp, fmt), sizes, fmt, fixed_size=classifier.fixed_size)
        trained = set(classifier.train_sizes)
        for row, size in zip(rows, sizes, strict=True):
            row["trained"] = size in trained
        check_equal_to_eager(rows, fmt, atol, "every size")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "format": fmt,
        "file": str(output),
        "robustness": robustness_records(classifier),
        "checks": rows,
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "replaced_pools": replaced,
        "bn_statistics": describe(model),
        "seconds": round(time.time() - started, 2),
    }


def default_output(run_dir: str | Path, fmt: str) -> Path:
    return Path(run_dir) / "export" / f"model{FORMATS[fmt]}"


def check_suffix(output: Path, fmt: str) -> None:
    """One line for an output named as another format's file (``format=onnx output=model.pt``): the file
    would load with nothing its name promises."""
    others = {suffix: name for name, suffix in FORMATS.items() if name != fmt}
    if output.suffix in others:
        raise ConfigError(
            f"output={output} is named as a format={others[output.suffix]} file, but format={fmt}",
            hint=f"output={output.with_suffix(FORMATS[fmt])}, or format={others[output.suffix]}",
        )


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r} (format={fmt})", hint=f"format={'|'.join(FORMATS)}")


def check_options(run: Run, check: Any) -> None:
    """One line for a check option of the other kind of run: ``check.sizes`` on a NaFlex run (it sizes
    images), ``check.seq_lens`` on a run that takes images."""
    if run.is_naflex and check.sizes:
        raise ConfigError(
            f"check.sizes={list(check.sizes)} sizes images, and this NaFlex run takes token sequences",
            hint="check.seq_lens=[48,96] (tokens per image)",
        )
    if not run.is_naflex and check.seq_lens:
        raise ConfigError(
            f"check.seq_lens={list(check.seq_lens)} is for NaFlex runs (resolution=naflex); this run takes "
            "images",
            hint="check.sizes=[64,[48,80]]",
        )


def card_beside(output: Path, source: Path) -> Path:
    """Where the model card goes beside ``output``: ``model_card.md``, unless that is another run's
    card (two runs exported into one folder): then ``<output stem>.model_card.md``, so neither file
    is described by the other run's card."""
    card = output.parent / "model_card.md"
    if not card.is_file() or card.resolve() == source.resolve():
        return card
    first = card.read_text(errors="replace").partition("\n")[0]
    if first == source.read_text(errors="replace").partition("\n")[0]:  # "# Model card: <run>"
        return card
    return output.parent / f"{output.stem}.model_card.md"


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """The task of ``scripts/export.py``: load, export, check, write the model card beside the file.

    Every setting is read from the composed config: its defaults live in ``configs/export.yaml`` only.
    """
    from resflex.export_naflex import TOKEN_INPUT, export_token_run
    from resflex.model_card import write_model_card
    from resflex.robust_range import tokens_text
    from resflex.runtime import quiet_library_noise

    quiet_library_noise()
    fmt, check = str(cfg.format), cfg.check
    check_format(fmt)
    atol = check_value("check.atol", check.atol, float, lambda v: v > 0, "a tolerance > 0 (e.g. 1e-3)")
    opset = cfg.get("opset")
    if opset is not None:
        check_value("opset", opset, int, lambda v: v >= 7, "an ONNX opset number (e.g. 18) or null")
    run = open_run(cfg.get("ckpt_path"), cfg.get("run_config"))
    check_options(run, check)
    output = Path(str(cfg.output)) if cfg.get("output") else default_output(run.run_dir, fmt)
    check_suffix(output, fmt)
    if run.is_naflex:  # token sequences: resflex.export_naflex
        record = export_token_run(run, fmt, output, atol, list(check.seq_lens or []), opset)
        dynamic, convention = "dynamic batch/sequence length", TOKEN_INPUT
        robust = robust_ranges(run.metrics, run.main_size())
        ranges = [f"{r.stage}: {r.span_text(tokens_text)}" for r in robust]
    else:
        classifier = classifier_of(run)
        sizes = check_sizes(classifier, list(check.sizes or []))
        record = export_classifier(classifier, fmt, output, sizes=sizes, atol=atol, opset=opset)
        dynamic, convention = "dynamic batch/height/width", input_convention(classifier.fixed_size)
        if classifier.fixed_size is not None:
            dynamic = "dynamic batch, height and width fixed at {}x{}".format(*classifier.fixed_size)
        ranges = [f"{r.stage}: {r.span_text()}" for r in classifier.robust_ranges()]
    card = None
    try:
        source = write_model_card(run.run_dir)
        card = card_beside(output, source)
        if source.resolve() != card.resolve():
            shutil.copyfile(source, card)
    except Exception as exc:  # the export itself is done and checked: a card problem is a warning
        log.warning("model card not written: %s", exc)
    record["model_card"] = str(card) if card else None
    print(f"checkpoint: {run.checkpoint}")
    print(f"exported: {record['file']} (format={fmt}, {dynamic}; {convention})")
    print(f"{'size':>9}  {'batch':>5}  {'seen in training':>16}  {'max abs diff vs eager':>21}")
    for row in record["checks"]:
        seen = "yes" if row["trained"] else "no"
        print(f"{row['size']:>9}  {row['batch']:>5}  {seen:>16}  {row['max_abs_diff']:>21.3g}")
    print(f"max abs diff: {record['max_abs_diff']:.3g} (check.atol={atol:g})")
    if record.get("bn_statistics"):
        print(f"in the graph: {record['bn_statistics']} (as load_classifier does)")
    for text in ranges:
        print(f"robust range ({text}) (in the file's metadata and model card)")
    if not ranges and run.metrics_note:  # the run's curves are another checkpoint's (resflex.run)
        print(f"robust range: none in the metadata ({run.metrics_note})")
    if card:
        print(f"model card: {card}")
    return record


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def _hydra_entry(cfg: DictConfig) -> None:
    with user_errors_as_one_line():
        run_export(cfg)


def main() -> None:
    """Console entry point (``scripts/export.py``, ``resflex-export``)."""
    with interruption_as_one_line("nothing exported (no file written)"):
        prepare_cli(sys.argv[1:], "export")
        _hydra_entry()


if __name__ == "__main__":
    main()
