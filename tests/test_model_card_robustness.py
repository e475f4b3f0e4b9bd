"""The model card's robustness section: the robust range in px and × of the trained size, worst and mean
over sizes, from a run folder's own records (metrics.json and .hydra/config.yaml, no checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from resflex.model_card import build_model_card, parse_size_tag, robust_ranges, size_curve
from resflex.run_folder import read_record
from resflex.training.robustness import summarize_sizes
from tests.test_eval_script import compose_config

CURVE = {"32": 0.55, "48": 0.80, "64": 0.82, "96": 0.81, "128": 0.60}


def fabricated_run(root: Path, metrics: dict, size: int = 64, extra: tuple[str, ...] = ()) -> Path:
    """A run folder as training leaves it, minus the weights: the composed config and a metrics.json."""
    run_dir = root / "run"
    overrides = ["backbone.name=test_resnet", f"resolution.size={size}", "logger=none", *extra]
    cfg = compose_config("train", overrides, run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), run_dir / ".hydra" / "config.yaml"
    )
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
    (run_dir / "metrics.json").write_text(json.dumps({"status": "completed", "metrics": metrics}))
    return run_dir


def tags(stage: str, curve: dict[str, float]) -> dict[str, float]:
    return {f"{stage}/acc@{tag}": acc for tag, acc in curve.items()}


def test_card_gives_the_robust_range_in_px_and_times_the_trained_size(tmp_path: Path) -> None:
    test_curve = {"32": 0.50, "48": 0.79, "64": 0.80, "96": 0.70, "128": 0.40}
    run_dir = fabricated_run(tmp_path, {"val/acc": 0.82, **tags("val", CURVE), **tags("test", test_curve)})
    card = build_model_card(run_dir, ["a", "b"])
    section = card.split("## Robustness across sizes", 1)[1].split("\n## ", 1)[0]
    assert "the trained size, 64 px" in section
    mean = sum(CURVE.values()) / 5
    assert (
        "- val: accuracy within 0.03 of the best (0.8200 at 64 px) from 48 to 96 px (0.75×–1.5×); "
        f"worst 0.5500 (at 32 px), mean over 5 sizes {mean:.4f}."
    ) in section
    assert (
        "- test: accuracy within 0.03 of the best (0.8000 at 64 px) from 48 to 64 px (0.75×–1×);" in section
    )
    assert "| val | 96 | 0.8100 |" in card  # the per-size table is still there


def test_card_without_a_curve_or_with_one_size_says_so(tmp_path: Path) -> None:
    card = build_model_card(fabricated_run(tmp_path / "a", {"val/acc": 0.5}))
    assert "No accuracy per size recorded in metrics.json" in card
    card = build_model_card(fabricated_run(tmp_path / "b", {"val/acc": 0.5, "val/acc@40": 0.5}, size=40))
    assert "- val: evaluated at 40 px only (0.5000): no range measured." in card


def test_robust_range_is_summarize_sizes_range_as_sizes(tmp_path: Path) -> None:
    run_dir = fabricated_run(tmp_path, {**tags("val", CURVE), "val/acc@96x160": 0.3, "val/acc@x": 1.0})
    metrics = read_record(run_dir)["metrics"]
    assert size_curve(metrics, "val")[(96, 160)] == 0.3 and len(size_curve(metrics, "val")) == 6
    (robust,) = robust_ranges(metrics, (64, 64))
    summary = summarize_sizes(size_curve(metrics, "val"), main=(64, 64))
    assert robust.summary == summary
    assert robust.sizes == [(48, 48), (64, 64), (96, 96)]
    record = robust.as_dict()
    assert (record["low"], record["high"], record["low_scale"], record["high_scale"]) == (
        [48, 48],
        [96, 96],
        0.75,
        1.5,
    )
    assert record["range"] == pytest.approx(2.0) and record["worst"] == {"size": [96, 160], "acc": 0.3}
    assert parse_size_tag("48x80") == (48, 80) and parse_size_tag("64") == (64, 64)
    assert parse_size_tag("64px") is None
    assert read_record(tmp_path / "nowhere") == {}


def test_card_says_what_the_lr_did_when_the_warm_up_covers_the_run(tmp_path: Path) -> None:
    """scheduler.warmup_epochs=3 (the default) and trainer.max_epochs=3: no cosine ever ran."""
    card = build_model_card(
        fabricated_run(tmp_path / "short", {"val/acc": 0.5}, extra=("trainer.max_epochs=3",))
    )
    assert (
        "warm-up 3.0 epochs, as long as the run: the LR only rose, to its peak at the end (no cosine phase)"
    ) in card
    assert "then cosine" not in card
    card = build_model_card(fabricated_run(tmp_path / "default", {"val/acc": 0.5}))  # 6 epochs
    assert "| schedule | 6 epochs, optimizer adamw lr=" in card and "warm-up 3.0 epochs then cosine" in card
