"""The export check and writers' pieces without a real capture: the eager comparison (the worst size,
a NaN difference), the exporters' quiet mode, the batch-of-two wrapper, and a NaFlex export's check
lengths, check inputs, comparison and atomic write (capture and load replaced by stand-ins)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import resflex.export_naflex as export_naflex
from resflex.errors import ConfigError
from resflex.export_formats import _BatchOfTwoOrMore, check_equal_to_eager, quiet_exporters
from resflex.export_naflex import check_seq_lens, compare_tokens, export_token_run, token_inputs


def test_the_check_names_the_worst_size_and_refuses_a_nan() -> None:
    """The message points at the size where the export is furthest off; an export giving NaN is not
    'within' any tolerance."""
    rows = [{"size": "32x32", "max_abs_diff": 0.5}, {"size": "48x80", "max_abs_diff": 2.0}]
    with pytest.raises(ConfigError, match=r"differs from the eager model by 2 at 48x80 \(check.atol=0.1\)"):
        check_equal_to_eager(rows, "onnx", 0.1, "every size")
    check_equal_to_eager(rows, "onnx", 2.0, "every size")  # the boundary holds
    with pytest.raises(ConfigError, match="by nan at 64x64"):
        check_equal_to_eager([{"size": "64x64", "max_abs_diff": float("nan")}], "onnx", 1.0, "every size")


def test_quiet_exporters_give_back_the_loggers_levels() -> None:
    """The ONNX optimiser's loggers are quieted during an export only: a user's own level for them stays."""
    logger = logging.getLogger("onnx_ir")
    before = logger.level
    try:
        logger.setLevel(logging.DEBUG)
        with quiet_exporters():
            assert logger.level == logging.ERROR or logging.getLogger("resflex").isEnabledFor(logging.DEBUG)
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(before)


def test_the_batch_of_two_wrapper_returns_the_inputs_rows_in_order() -> None:
    """The extra row (a copy of the first image) is dropped again; batch 1 and larger batches alike."""
    inner = nn.Linear(4, 3)
    wrapped = _BatchOfTwoOrMore(inner)
    for batch in (1, 2, 3):
        x = torch.randn(batch, 4)
        with torch.no_grad():
            assert torch.equal(wrapped(x), inner(x)), batch


def test_naflex_check_lengths_are_the_main_the_shortest_and_an_unseen_one() -> None:
    schedule = SimpleNamespace(max_seq_len=32, seq_lens=[8, 32])
    assert check_seq_lens(schedule) == [32, 8, 48]
    schedule = SimpleNamespace(max_seq_len=32, seq_lens=[32, 48, 49])  # 48 and 49 trained: 50 is unseen
    assert check_seq_lens(schedule) == [32, 16, 50]
    assert check_seq_lens(schedule, ["64", 16]) == [32, 16, 50, 64]  # requested, no repeats
    with pytest.raises(ConfigError, match="check.seq_lens must be a whole number of tokens >= 1, got 0"):
        check_seq_lens(schedule, [0])


def grid(coord: torch.Tensor, valid: torch.Tensor) -> tuple[int, int]:
    """(rows, columns) of one image's valid patches."""
    rows_cols = coord[valid]
    return int(rows_cols[:, 0].max()) + 1, int(rows_cols[:, 1].max()) + 1


def test_naflex_check_inputs_are_wide_tall_and_square_images_padded_and_masked() -> None:
    patches, coord, valid = token_inputs(8, 16, 3, torch.Generator().manual_seed(0))
    assert patches.dtype == torch.float32 and float(patches.min()) >= 0 and float(patches.max()) <= 1
    (wr, wc), (tr, tc), (sr, sc) = (grid(coord[i], valid[i]) for i in range(3))
    assert wc > wr and tr > tc and sr == sc
    assert all(int(v.sum()) <= 16 for v in valid) and not bool(valid.all())  # padding is masked


class MeanTokens(nn.Module):
    """A stand-in TokenClassifier: logits from the mean of the valid patches."""

    patch_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8 * 8 * 3, 2)

    def forward(self, patches: torch.Tensor, coord: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        mean = (patches * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        return self.head(mean)


def naflex_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, off: float) -> dict:
    """export_token_run of a stand-in run (lengths 16 and 32, main 32), the file loaded back as eager plus
    ``off`` times the batch size."""
    schedule = SimpleNamespace(max_seq_len=32, seq_lens=[16, 32])
    eager = MeanTokens().eval()
    run = SimpleNamespace(
        required_schedule=lambda: schedule,
        token_classifier=lambda: eager,
        metrics={},
        classes=lambda: ["a", "b"],
        config=OmegaConf.create({"backbone": {"name": "tiny"}}),
    )
    monkeypatch.setattr(export_naflex, "check_token_export", lambda classifier, fmt: None)
    monkeypatch.setattr(
        export_naflex, "capture", lambda classifier, fmt, path, opset, meta: path.write_text("x")
    )
    monkeypatch.setattr(
        export_naflex, "load_token_runner", lambda path, fmt: lambda *xs: eager(*xs) + off * xs[0].shape[0]
    )
    return export_token_run(run, "onnx", tmp_path / "out" / "model.onnx", atol=1e-3)  # type: ignore[arg-type]


def test_a_naflex_export_is_checked_at_each_length_and_batch_and_reports_its_worst(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = naflex_export(tmp_path, monkeypatch, off=1e-4)
    checks = record["checks"]
    seen = [(c["seq_len"], c["batch"], c["trained"]) for c in checks]
    assert seen == [(32, 2, True), (16, 1, True), (48, 3, False)]
    assert [c["max_abs_diff"] for c in checks] == pytest.approx([2e-4, 1e-4, 3e-4], rel=1e-3)
    assert record["max_abs_diff"] == max(c["max_abs_diff"] for c in checks)
    assert (tmp_path / "out" / "model.onnx").read_text() == "x"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.onnx"]  # no temporary left


def test_a_naflex_export_that_disagrees_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="differs from the eager model by 0.3 at 48 tok"):
        naflex_export(tmp_path, monkeypatch, off=0.1)
    assert not any((tmp_path / "out").iterdir())


def test_compare_tokens_runs_the_three_batches_in_turn() -> None:
    eager = MeanTokens().eval()
    rows = compare_tokens(eager, lambda *xs: eager(*xs), [24, 20, 12, 40], {24})
    assert [r["batch"] for r in rows] == [2, 1, 3, 2]
    assert [r["trained"] for r in rows] == [True, False, False, False]
    assert all(r["max_abs_diff"] == 0 and r["size"] == f"{r['seq_len']} tok" for r in rows)
