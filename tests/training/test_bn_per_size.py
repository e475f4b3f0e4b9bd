"""BatchNorm statistics per training size (model.bn_stats_per_size): tracked, checkpointed, used per size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resflex.build import build_datamodule, build_module
from resflex.errors import ConfigError
from resflex.inference import load_classifier
from resflex.models.bn_calibration import BN_STATS_KEY, read_stats, write_stats
from resflex.train import train
from tests.conftest import LEARNING_RUN, TINY, TINY_SYNTHETIC, train_run
from tests.test_configs import compose_train

LIMITS = ("trainer.limit_train_batches=6", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1")
MULTISCALE = (
    "resolution=multiscale",
    "resolution.size=32",
    "resolution.scales=[0.5,1.0,1.5]",
    "resolution.probs=[0.6,0.2,0.2]",
    "resolution.geometry=square",
    "eval.resolutions=[16,48,64]",
    "model.bn_stats_per_size=true",
    "eval.bn_calibration=false",  # the tracked statistics, not the after-fit calibration
)


def _overrides() -> list[str]:
    base = [a for a in TINY if not a.startswith(("resolution.", "trainer.limit_train", "trainer.limit_val"))]
    return [*base, *TINY_SYNTHETIC, *LIMITS, *MULTISCALE]


def test_per_size_statistics_are_tracked_checkpointed_and_used_at_each_eval_size(tmp_path: Path) -> None:
    cfg = compose_train(_overrides(), tmp_path)
    record = train_run(_overrides(), tmp_path, hydra_files=True)
    assert record["status"] == "completed"
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    table = ckpt[BN_STATS_KEY]
    schedule = build_datamodule(cfg).schedule
    drawn = {str(schedule.size_at(0, step)[0]) for step in range(6)}
    assert set(table) == drawn == {"16", "32", "48"}  # one table per side trained at (scales of 32)
    assert not torch.allclose(
        table["16"]["backbone.model.bn1.running_mean"], table["48"]["backbone.model.bn1.running_mean"]
    )
    # the weights' own BatchNorm buffers are the main (eval) size's statistics
    for name, value in table["32"].items():
        assert torch.equal(ckpt["state_dict"][f"model.{name}"], value), name

    # an independent evaluation: each size with the statistics of the nearest trained size
    dm = build_datamodule(cfg)
    module = build_module(cfg, num_classes=dm.num_classes)
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    nearest = {32: "32", 16: "16", 48: "48", 64: "48"}
    loaders = dm.test_dataloader()
    metrics = record["metrics"]
    for (size, _), loader in zip(dm.eval_sizes, loaders, strict=True):
        write_stats(module.model, table[nearest[size]])
        images, labels = next(iter(loader))
        with torch.no_grad():
            logits = module(module.normalize(images))
        expected = (logits.argmax(-1) == labels).float().mean().item()
        assert metrics[f"test/acc@{size}"] == pytest.approx(expected, abs=1e-6), size
        # load_classifier swaps in the same statistics by the input's size
        classifier = load_classifier(tmp_path / "checkpoints" / "last.ckpt")
        with torch.no_grad():
            assert torch.allclose(classifier(images), logits, atol=1e-5), size
    # use_main_size_stats: one set for every size, the main size's
    classifier.use_main_size_stats()
    assert classifier.size_stats is None
    assert torch.equal(
        read_stats(classifier.model)["backbone.model.bn1.running_mean"],
        table["32"]["backbone.model.bn1.running_mean"],
    )


def test_per_size_statistics_survive_a_resume(tmp_path: Path) -> None:
    first = compose_train([*_overrides(), "trainer.max_epochs=1"], tmp_path)
    train(first)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")[
        BN_STATS_KEY
    ]
    module = build_module(first, num_classes=10)
    module.on_load_checkpoint({BN_STATS_KEY: saved})
    assert module.size_stats is not None and set(module.size_stats.table) == {int(s) for s in saved}
    module.size_stats.use(16)
    assert torch.equal(
        read_stats(module.model)["backbone.model.bn1.running_var"],
        saved["16"]["backbone.model.bn1.running_var"],
    )
    resumed = compose_train([*_overrides(), "trainer.max_epochs=2", "ckpt_path=last"], tmp_path)
    assert train(resumed)["status"] == "completed"


def test_per_size_statistics_refuse_ema_in_one_line(tmp_path: Path) -> None:
    cfg = compose_train([*_overrides(), "model.ema=true"], tmp_path)
    with pytest.raises(ConfigError, match=r"model\.bn_stats_per_size cannot be combined with model\.ema"):
        build_module(cfg, num_classes=10)


def test_after_fit_calibration_writes_each_eval_sizes_statistics_and_the_test_uses_them(
    tmp_path: Path,
) -> None:
    """eval.bn_calibration (the default): the checkpoint's table equals torch's update_bn over the first
    batches of training images at each size, and test/acc@<size> is the accuracy with that size's."""
    from itertools import islice

    from torch.optim.swa_utils import update_bn

    overrides = [
        *(a for a in TINY if not a.startswith(("trainer.limit_train", "trainer.limit_val"))),
        *TINY_SYNTHETIC,
        *LIMITS,
        "resolution.geometry=square",
        "eval.resolutions=[16,48]",
        "eval.bn_calibration_batches=2",
    ]
    cfg = compose_train(overrides, tmp_path)
    record = train(cfg)
    ckpt_path = Path(record["best"]["checkpoint"])
    ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
    table = ckpt[BN_STATS_KEY]
    assert set(table) == {"32", "16", "48"}
    dm = build_datamodule(cfg)
    module = build_module(cfg, num_classes=dm.num_classes)
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    loaders = dm.test_dataloader()
    trained = read_stats(module.model)
    for (size, _), loader in zip(dm.eval_sizes, loaders, strict=True):
        if size == 32:  # the one training size keeps the statistics it was trained with
            write_stats(module.model, trained)
        else:
            batches = [module.normalize(x) for x, _ in islice(dm.calibration_loader((size, size)), 2)]
            update_bn(batches, module.model)
        for name, value in read_stats(module.model).items():
            assert torch.allclose(table[str(size)][name], value, atol=1e-5), (size, name)
        images, labels = next(iter(loader))
        with torch.no_grad():
            expected = (module(module.normalize(images)).argmax(-1) == labels).float().mean().item()
        assert record["metrics"][f"test/acc@{size}"] == pytest.approx(expected, abs=1e-6), size
    # the weights' own buffers stay as trained (the table is beside them): the trained size's entry
    for name, value in table["32"].items():
        assert torch.equal(ckpt["state_dict"][f"model.{name}"], value), name
    bn1 = "backbone.model.bn1.running_mean"
    assert not torch.equal(table["16"][bn1], table["32"][bn1])


@pytest.mark.slow
def test_calibration_lifts_accuracy_away_from_the_training_size(tmp_path: Path) -> None:
    """The same training (same seed) evaluated with and without per-size statistics: at sizes other than
    the trained one, the calibrated model is more accurate (what experiments/robustness/ measured)."""
    overrides = [
        *LEARNING_RUN,
        "data.source.num_val=200",
        "data.source.num_test=400",
        "eval.resolutions=[16,24,48,64]",
    ]
    plain = train(compose_train([*overrides, "eval.bn_calibration=false"], tmp_path / "plain"))["metrics"]
    calibrated = train(compose_train(overrides, tmp_path / "calibrated"))["metrics"]
    away = (16, 24, 48, 64)
    assert abs(calibrated["test/acc@32"] - plain["test/acc@32"]) <= 0.02  # the trained size: as it was
    gain = sum(calibrated[f"test/acc@{s}"] - plain[f"test/acc@{s}"] for s in away) / len(away)
    assert gain >= 0.03, {s: (plain[f"test/acc@{s}"], calibrated[f"test/acc@{s}"]) for s in away}


def _calibration_setup(tmp_path: Path, resolutions: str) -> tuple:
    """A multi-size schedule (16, 32, 48 px) evaluated at ``resolutions``; its module's running
    statistics set to a blend (0.5 everywhere), saved as ``last.ckpt``."""
    overrides = [a for a in _overrides() if a not in ("model.bn_stats_per_size=true",)]
    cfg = compose_train([*overrides, f"eval.resolutions={resolutions}"], tmp_path)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    assert {(16, 16), (32, 32), (48, 48)} <= set(dm.schedule.train_sizes())
    module = build_module(cfg, num_classes=dm.num_classes)
    stats = read_stats(module.model)
    blend = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in stats.items()}
    write_stats(module.model, blend)
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": module.state_dict()}, path)
    return dm, module, blend, path


def test_calibration_re_estimates_every_size_of_a_multi_size_schedule(tmp_path: Path) -> None:
    """Only a schedule's one training size keeps the statistics it was trained with: the running
    statistics of a multi-size schedule are a blend of its sizes, so each size, trained or not, gets
    its own re-estimate; a table is reused for a file of equal weights only."""
    from resflex.training.calibration import calibrate_checkpoint

    dm, module, blend, path = _calibration_setup(tmp_path, "[16,48]")
    original, table = calibrate_checkpoint(path, module, dm, list(dm.eval_sizes), batches=1)
    assert set(table) == {(32, 32), (16, 16), (48, 48)}
    bn1 = "backbone.model.bn1.running_mean"
    for size, stats in table.items():
        assert not torch.equal(stats[bn1], blend[bn1]), size
    assert torch.equal(read_stats(module.model)[bn1], blend[bn1])  # the weights' own stay as trained

    same = tmp_path / "same.ckpt"
    torch.save({"state_dict": original}, same)
    assert calibrate_checkpoint(same, module, dm, list(dm.eval_sizes), 1, reuse=(original, table))[1] is table
    other = tmp_path / "other.ckpt"  # another epoch's weights: the stem's output, and its statistics, double
    torch.save(
        {
            "state_dict": {
                **original,
                "model.backbone.model.conv1.0.weight": 2 * original["model.backbone.model.conv1.0.weight"],
            }
        },
        other,
    )
    _, own = calibrate_checkpoint(other, module, dm, list(dm.eval_sizes), 1, reuse=(original, table))
    first = "backbone.model.conv1.1.running_mean"
    assert not torch.allclose(own[(32, 32)][first], table[(32, 32)][first])


def test_a_multi_size_schedule_evaluated_at_one_size_is_calibrated(tmp_path: Path) -> None:
    """One evaluation size skips calibration only when it is the one size trained at."""
    from types import SimpleNamespace

    from resflex.training.calibration import calibrate_run_checkpoints

    dm, module, _, path = _calibration_setup(tmp_path, "[]")
    assert list(dm.eval_sizes) == [(32, 32)]
    trainer = SimpleNamespace(
        checkpoint_callback=None,
        default_root_dir=str(tmp_path),
        is_global_zero=True,
        strategy=SimpleNamespace(barrier=lambda name: None),
        callbacks=[],
    )
    assert calibrate_run_checkpoints(trainer, module, dm, batches=1) == [path]  # type: ignore[arg-type]
    assert set(torch.load(path, weights_only=True)[BN_STATS_KEY]) == {"32"}


def test_sizes_of_equal_area_share_one_set_estimated_on_both(tmp_path: Path) -> None:
    """24x40 and 40x24 are one key of the table (31, the side of the square of equal area). Calibrated
    one after the other, the last replaced the first: 40x24's statistics served 24x40 too. Now the key
    holds the estimate over batches of both (update_bn's cumulative mean of the batch means)."""
    from resflex.models.bn_calibration import calibrate
    from resflex.training.calibration import calibrate_checkpoint, normalised_batches

    dm, module, blend, path = _calibration_setup(tmp_path, "[[24,40],[40,24]]")
    assert {(24, 40), (40, 24)} <= set(dm.eval_sizes)
    _, table = calibrate_checkpoint(path, module, dm, list(dm.eval_sizes), batches=2)
    assert (40, 24) not in table and (24, 40) in table
    saved = torch.load(path, weights_only=True)[BN_STATS_KEY]
    assert set(saved) == {"32", "31"}

    def alone(size: tuple[int, int]) -> torch.Tensor:
        write_stats(module.model, blend)
        batches = normalised_batches(module, dm.calibration_loader(size), module.device)
        return calibrate(module.model, batches, max_batches=1)["backbone.model.bn1.running_mean"]

    wide, tall = alone((24, 40)), alone((40, 24))
    shared = table[(24, 40)]["backbone.model.bn1.running_mean"]
    assert not torch.allclose(wide, tall)
    torch.testing.assert_close(shared, (wide + tall) / 2)
