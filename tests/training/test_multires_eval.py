"""Evaluation across test resolutions: per-size tags, the accuracy-vs-resolution plot, schedule logging."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from resflex.build import build_datamodule, build_module
from resflex.errors import ConfigError
from resflex.train import train
from resflex.training.resolution_eval import (
    AccuracyVsResolution,
    curve_from_metrics,
    draw_accuracy_vs_resolution,
)
from resflex.training.robustness import summarize_sizes
from tests.conftest import TINY, TINY_SYNTHETIC, load_script, run_cli, scalar_tags
from tests.test_configs import compose_train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


_compose = compose_train  # compose train.yaml with a run folder, as Hydra would


def _image_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        tags |= set(acc.Tags()["images"])
    return tags


def test_curve_from_metrics_reads_square_sizes_of_one_stage() -> None:
    metrics = {
        "val/acc@64": 0.5,
        "val/acc@32": 0.25,
        "val/acc": 0.5,
        "test/acc@64": 0.75,
        "val/acc@48x80": 0.1,
    }
    assert curve_from_metrics(metrics, "val") == {32: 0.25, 64: 0.5}
    assert list(curve_from_metrics(metrics, "val")) == [32, 64]
    assert curve_from_metrics(metrics, "test") == {64: 0.75}


def test_plot_across_runs_writes_a_png(tmp_path: Path) -> None:
    for name, accs in (("a", (0.2, 0.6)), ("b", (0.4, 0.5))):
        run = tmp_path / name
        run.mkdir()
        record = {"choices": {"pooling": name}, "metrics": {"test/acc@32": accs[0], "test/acc@64": accs[1]}}
        (run / "metrics.json").write_text(json.dumps(record))
    out = tmp_path / "fig" / "acc.png"
    plot = load_script("plot_resolution")  # scripts/plot_resolution.py
    plot.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--train-size", "48"])
    assert out.read_bytes()[:8] == PNG_MAGIC
    figure = draw_accuracy_vs_resolution({"x": {32: 0.1, 64: 0.2}}, [48])
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels == ["x", "train size"]


def test_eval_resolutions_give_one_loader_per_size_one_size_alone_and_refuse_text(tmp_path: Path) -> None:
    square = "resolution.geometry=square"  # one shape per size (auto would bucket these images by aspect)
    cfg = _compose([*TINY, *TINY_SYNTHETIC, square, "eval.resolutions=[16,32,48,16]"], tmp_path)
    dm = build_datamodule(cfg)
    assert dm.eval_sizes == [(32, 32), (16, 16), (48, 48)]  # main size first, each size once
    loaders = dm.val_dataloader()
    assert [tuple(next(iter(dl))[0].shape[-2:]) for dl in loaders] == dm.eval_sizes
    one = build_datamodule(_compose([*TINY, *TINY_SYNTHETIC, square, "eval.resolutions=64"], tmp_path))
    assert one.eval_sizes == [(32, 32), (64, 64)]  # one size alone: a list of one, as eval.py reads it
    with pytest.raises(ConfigError, match=r"eval\.resolutions must be a list of sizes, got '64x'"):
        build_datamodule(_compose([*TINY, *TINY_SYNTHETIC, "eval.resolutions=64x"], tmp_path))


def test_fit_logs_per_size_metrics_and_writes_the_plot(tmp_path: Path) -> None:
    limits = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
    square = "resolution.geometry=square"  # one batch of one shape per size (auto would bucket by aspect)
    # without the after-fit calibration (tests/training/test_bn_per_size.py), one set of statistics
    plain = "eval.bn_calibration=false"
    cfg = _compose([*TINY, *TINY_SYNTHETIC, *limits, square, plain, "eval.resolutions=[16,48]"], tmp_path)
    record = train(cfg)
    assert record["status"] == "completed"
    metrics = record["metrics"]
    # an independent evaluation: the checkpoint's weights on one batch of each size (limit_*_batches=1);
    # one epoch, so the best checkpoint that trainer.test() used is the last one
    dm = build_datamodule(cfg)
    module = build_module(cfg, num_classes=dm.num_classes)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    module.load_state_dict(state["state_dict"])
    module.eval()
    for stage, loaders in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        assert [size for size, _ in dm.eval_sizes] == [32, 16, 48]
        for (size, _), loader in zip(dm.eval_sizes, loaders, strict=True):
            images, labels = next(iter(loader))
            assert images.shape[-2:] == (size, size)
            with torch.no_grad():
                logits = module(module.normalize(images))  # what on_after_batch_transfer does
            expected_acc = (logits.argmax(-1) == labels).float().mean().item()
            expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
            assert metrics[f"{stage}/acc@{size}"] == pytest.approx(expected_acc, abs=1e-6), (stage, size)
            assert metrics[f"{stage}/loss@{size}"] == pytest.approx(expected_loss, rel=1e-4), (stage, size)
        # loader 0 is the main size: val/acc and val/acc@32 are the same numbers
        assert metrics[f"{stage}/acc"] == pytest.approx(metrics[f"{stage}/acc@32"])
        # the robustness summary is computed from the same per-size numbers
        per_size = {size: metrics[f"{stage}/acc@{size}"] for size in (16, 32, 48)}
        assert metrics[f"{stage}/acc_worst"] == pytest.approx(min(per_size.values()), abs=1e-6)
        assert metrics[f"{stage}/acc_mean_sizes"] == pytest.approx(sum(per_size.values()) / 3, abs=1e-6)
        expected = summarize_sizes({(s, s): a for s, a in per_size.items()}, main=(32, 32))
        assert metrics[f"{stage}/acc_range_low"] == pytest.approx(expected.range_low)
        assert metrics[f"{stage}/acc_range_high"] == pytest.approx(expected.range_high)
        assert metrics[f"{stage}/acc_range"] == pytest.approx(expected.range)
    assert not any("dataloader_idx" in key for key in metrics)
    plot = tmp_path / "acc_vs_resolution.png"
    assert plot.read_bytes()[:8] == PNG_MAGIC
    tags = scalar_tags(tmp_path)
    assert {"val/acc@16", "val/acc@48", "test/acc@48", "val/acc", "train/images_per_sec@32"} <= set(tags)
    assert {"val/acc_worst", "val/acc_mean_sizes", "val/acc_range", "test/acc_worst"} <= set(tags)
    assert "figures/acc_vs_resolution" in _image_tags(tmp_path)


@pytest.mark.slow
def test_progressive_cli_run_logs_increasing_resolution(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            *(arg for arg in TINY if not arg.startswith("resolution.")),
            "data.source.num_train=64",
            "data.source.num_val=32",
            "data.source.num_test=16",
            "resolution=progressive",
            "resolution.start_size=16",
            "resolution.end_size=32",
            "resolution.multiple=8",
            "trainer.max_epochs=3",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "eval.resolutions=[16,24,48]",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tags = scalar_tags(run_dir)
    sides = [value for _, value in sorted(tags["train/resolution"])]
    assert sides[0] == 16 and sides[-1] == 32
    assert sides == sorted(sides) and 24 in sides
    assert {"train/images_per_sec@16", "train/images_per_sec@24", "train/images_per_sec@32"} <= set(tags)
    assert {"val/acc@16", "val/acc@24", "val/acc@32", "val/acc@48", "test/acc@48"} <= set(tags)
    assert (run_dir / "acc_vs_resolution.png").read_bytes()[:8] == PNG_MAGIC


def test_multigrid_run_follows_the_changing_epoch_length(tmp_path: Path) -> None:
    overrides = [
        *(
            arg
            for arg in TINY
            if not arg.startswith(("resolution.", "trainer.limit_train", "trainer.max_epochs"))
        ),
        "data.source.num_train=32",
        "data.source.num_val=8",
        "data.source.num_test=8",
        "data.batch_size=4",
        "trainer.max_epochs=2",
        "scheduler.warmup_epochs=1",  # warm-up inside the run: the cosine part must end on step 10
        "resolution=multigrid",
        "resolution.geometry=square",  # the logged sizes are the schedule's (keep_aspect would bucket them)
        "resolution.size=32",
        "resolution.long_factors=[0.5,1.0]",
        "resolution.short_factors=[]",
        "resolution.final_epochs=0",
        "test_after_fit=false",
    ]
    record = train(_compose(overrides, tmp_path))
    assert record["status"] == "completed"
    tags = scalar_tags(tmp_path)
    # epoch 0: 16 px, batch 4 * 4 = 16 -> 2 steps; epoch 1: 32 px, batch 4 -> 8 steps
    assert [v for _, v in sorted(tags["train/resolution"])] == [16.0] * 2 + [32.0] * 8
    assert max(step for step, _ in tags["train/resolution"]) == 10
    lr_tag = sorted(k for k in tags if k.startswith("train/lr"))[0]
    lrs = [v for _, v in sorted(tags[lr_tag])]
    assert len(lrs) == 10
    assert lrs[-1] < 0.2 * max(lrs)  # the LR schedule spans the real 10 steps, not 2 epochs x 2


def test_the_val_curve_waits_for_the_validation_after_fit_when_one_follows() -> None:
    """After calibration of a BatchNorm model, or with sizes deferred to after fit, the last epoch's
    numbers are not the run's: the val curve is drawn (and its scalars logged) once, by that validation."""
    with_bn = SimpleNamespace(model=torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)))
    no_bn = SimpleNamespace(model=torch.nn.Linear(3, 4))
    plain = SimpleNamespace(datamodule=SimpleNamespace(extra_sizes_after_fit=False))
    deferred = SimpleNamespace(datamodule=SimpleNamespace(extra_sizes_after_fit=True))
    calibrated = AccuracyVsResolution(calibrated=True)
    assert calibrated._after_fit(plain, with_bn)  # type: ignore[arg-type]
    assert not calibrated._after_fit(plain, no_bn)  # type: ignore[arg-type]
    assert AccuracyVsResolution(calibrated=False)._after_fit(deferred, no_bn)  # type: ignore[arg-type]
    assert not AccuracyVsResolution(calibrated=False)._after_fit(plain, with_bn)  # type: ignore[arg-type]
