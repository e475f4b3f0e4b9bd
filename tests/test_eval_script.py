"""scripts/eval.py: a checkpoint evaluated at several sizes gives the trainer's own validation numbers."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from resflex.config import CONFIG_DIR
from resflex.errors import ConfigError, DataError
from tests.conftest import TINY, TINY_SYNTHETIC, run_cli, scalar_tags

EVAL_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "eval.py"


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """What ``@hydra.main`` hands the task, with the run folder set to ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def train_tiny_run(run_dir: Path, *extra: str) -> dict:
    """A real training run folder (``.hydra/config.yaml``, ``checkpoints/last.ckpt``, ``metrics.json``)."""
    from resflex.train import train

    overrides = [
        *TINY,
        *TINY_SYNTHETIC,
        "eval.resolutions=[24]",
        "test_after_fit=false",
        "trainer.limit_val_batches=null",
        *extra,
    ]
    cfg = compose_config("train", overrides, run_dir)
    saved = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(saved, run_dir / ".hydra" / "config.yaml")  # as Hydra does: without the hydra node
    return train(saved)  # what @hydra.main hands the task: the config without its hydra node


def test_eval_matches_the_trainers_validation_at_each_size(tmp_path: Path) -> None:
    from resflex.evaluate import evaluate

    run_dir = tmp_path / "run"
    # without the after-fit BatchNorm calibration the checkpoint is what the last validation used
    record = train_tiny_run(run_dir, "eval.bn_calibration=false")
    assert record["status"] == "completed"
    # the extra size waits for a validation after fit (eval.sizes_every_epoch=false): the best's, as is
    best = Path(record["best"]["checkpoint"]).name
    assert record["measured_on"] == {"val": {"checkpoint": best, "bn_calibration": False}}
    assert record["params"]["frozen"] == 0 and record["params"]["trainable"] == record["params"]["total"] > 0
    trained = record["metrics"]

    out = tmp_path / "eval"
    cfg = compose_config(
        "eval",
        [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "eval.resolutions=[32,24]", "eval.device=cpu"],
        out,
    )
    result = evaluate(cfg)
    by_size = {r["resolution"]: r for r in result["results"]}
    assert list(by_size) == ["32 (buckets)", "24 (buckets)"]
    assert by_size["32 (buckets)"]["images"] == 16
    # the same images, the same weights, the same preprocessing: the same numbers
    assert by_size["32 (buckets)"]["acc"] == pytest.approx(trained["val/acc"], abs=1e-6)
    assert by_size["32 (buckets)"]["loss"] == pytest.approx(trained["val/loss"], rel=1e-4)
    assert by_size["24 (buckets)"]["acc"] == pytest.approx(trained["val/acc@24"], abs=1e-6)
    assert by_size["24 (buckets)"]["loss"] == pytest.approx(trained["val/loss@24"], rel=1e-4)

    saved = json.loads((out / "eval.json").read_text())
    assert saved["checkpoint"].endswith("last.ckpt") and saved["split"] == "val"
    rows = list(csv.DictReader((out / "eval.csv").open()))
    assert [r["resolution"] for r in rows] == ["32 (buckets)", "24 (buckets)"]
    assert float(rows[0]["acc"]) == pytest.approx(by_size["32 (buckets)"]["acc"])
    tags = scalar_tags(out)
    # training's accuracy-vs-size tags, stepped by the size: the chart overlays eval.py on the runs
    assert {"val/acc@32", "val/acc@24", "eval/val_acc_vs_size", "eval/val_loss_vs_size"} <= set(tags)
    assert sorted(step for step, _ in tags["eval/val_acc_vs_size"]) == [24, 32]
    assert not any(tag.endswith("acc_vs_resolution") for tag in tags)


def test_eval_of_a_calibrated_checkpoint_matches_the_trainers_test_at_each_size(tmp_path: Path) -> None:
    """eval.bn_calibration (the default): the best checkpoint carries per-size BatchNorm statistics;
    scripts/eval.py uses them as the trainer's test did."""
    from resflex.evaluate import evaluate

    run_dir = tmp_path / "run"
    record = train_tiny_run(run_dir, "test_after_fit=true", "trainer.limit_test_batches=null")
    cfg = compose_config(
        "eval",
        [f"ckpt_path={record['best']['checkpoint']}", "eval.resolutions=[32,24]", "eval.split=test"],
        tmp_path / "eval",
    )
    by_size = {r["resolution"]: r for r in evaluate(cfg)["results"]}
    assert by_size["32 (buckets)"]["acc"] == pytest.approx(record["metrics"]["test/acc"], abs=1e-6)
    assert by_size["24 (buckets)"]["acc"] == pytest.approx(record["metrics"]["test/acc@24"], abs=1e-6)
    assert by_size["24 (buckets)"]["loss"] == pytest.approx(record["metrics"]["test/loss@24"], rel=1e-4)
    # val/* of a calibrated run are the best checkpoint's, validated again after the calibration
    cfg = compose_config(
        "eval",
        [f"ckpt_path={record['best']['checkpoint']}", "eval.resolutions=[32,24]", "eval.split=val"],
        tmp_path / "eval_val",
    )
    by_size = {r["resolution"]: r for r in evaluate(cfg)["results"]}
    assert by_size["32 (buckets)"]["acc"] == pytest.approx(record["metrics"]["val/acc"], abs=1e-6)
    assert by_size["24 (buckets)"]["acc"] == pytest.approx(record["metrics"]["val/acc@24"], abs=1e-6)
    assert record["metrics"]["val/acc_worst"] == pytest.approx(
        min(r["acc"] for r in by_size.values()), abs=1e-6
    )


def test_eval_rejects_a_checkpoint_for_another_label_set(tmp_path: Path) -> None:
    from resflex.evaluate import evaluate
    from tests.conftest import make_image_folder

    run_dir = tmp_path / "run"
    train_tiny_run(run_dir)  # 10 synthetic classes
    folder = make_image_folder(tmp_path / "images", splits=("train", "val"))  # 3 classes
    cfg = compose_config(
        "eval",
        [f"ckpt_path={run_dir}", "data=imagefolder", f"data.root={folder}", "eval.resolutions=[32]"],
        tmp_path / "eval",
    )
    with pytest.raises(ConfigError, match="classifies 10 classes but the data has 3"):
        evaluate(cfg)


def test_eval_refuses_unsafe_and_missing_checkpoints(tmp_path: Path) -> None:
    from resflex.evaluate import evaluate

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'hacked'}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "evil": Evil()}, evil)
    cfg = compose_config("eval", [f"ckpt_path={evil}"], tmp_path / "eval")
    with pytest.raises(DataError, match="refusing to load"):
        evaluate(cfg)
    assert not (tmp_path / "hacked").exists()
    cfg = compose_config("eval", [f"ckpt_path={tmp_path / 'missing.ckpt'}"], tmp_path / "eval")
    with pytest.raises(DataError, match="checkpoint not found"):
        evaluate(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.split=train", "eval.split=train: evaluation reads val or test"),  # it read test
        ("eval.batch_size=0", "eval.batch_size=0 is invalid"),  # it was taken as unset
        # it ran: a map of padding, a meaningless accuracy, where training and predict refuse
        ("eval.resolutions=[8]", "eval.resolutions=8x8 is too small for test_resnet"),
        # they crashed with a trace (an int is not iterable), or read text a letter at a time ('6', 'a')
        ("eval.resolutions=8", "eval.resolutions=8x8 is too small for test_resnet"),
        ("eval.resolutions=64x", "eval.resolutions must be a list of sizes, got '64x'"),
        ("eval.resolutions=auto", "eval.resolutions=auto is for training runs"),
        # the hint named 48, 64 and 96 px whatever the run's size
        ("eval.seq_lens=[64]", r"for NaFlex runs .*hint: eval.resolutions=\[16,32,64\] \(½×, 1×, 2× its 32"),
    ],
)
def test_eval_settings_a_run_cannot_honour_are_refused(tmp_path: Path, override: str, message: str) -> None:
    from resflex.evaluate import evaluate

    run_dir = tmp_path / "run"
    refused_before_the_run = ("eval.split", "eval.resolutions=64x", "eval.resolutions=auto")
    if not override.startswith(refused_before_the_run):  # checked against the run: a run is needed
        train_tiny_run(run_dir, "eval.bn_calibration=false")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", override], tmp_path / "e")
    with pytest.raises(ConfigError, match=message):
        evaluate(cfg)


def test_an_evaluation_size_whose_batch_cannot_fit_is_refused_before_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``eval.resolutions=[10000]`` resized images in loader workers until the kernel killed one; eval.py
    then printed two traces and hung. The batch's lower bound is checked against the memory first."""
    from resflex import evaluate as evaluate_module

    train_tiny_run(tmp_path / "run", "eval.bn_calibration=false")
    monkeypatch.setattr(evaluate_module, "device_memory", lambda accelerator: (2**30, "a 1.0 GiB machine"))
    monkeypatch.setattr(evaluate_module, "build_datamodule", lambda cfg: pytest.fail("the data was read"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cfg = compose_config(
        "eval", [f"ckpt_path={ckpt}", "eval.resolutions=4096", "eval.batch_size=8"], tmp_path / "e"
    )
    with pytest.raises(ConfigError) as info:
        evaluate_module.evaluate(cfg)
    assert info.value.one_line().startswith("eval.resolutions=4096x4096: a batch of 8 images needs at least")
    assert info.value.one_line().endswith(
        "more than a 1.0 GiB machine (hint: a smaller eval.resolutions, or a smaller eval.batch_size)"
    )


def test_eval_cli_missing_checkpoint_is_one_line(tmp_path: Path) -> None:
    result = run_cli([f"ckpt_path={tmp_path / 'nope.ckpt'}"], cwd=tmp_path, script=EVAL_SCRIPT)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checkpoint not found" in errors[0], result.stderr[-2000:]


@pytest.mark.slow
def test_cli_pretrain_then_linear_probe_then_eval(tmp_path: Path) -> None:
    """The user's path: pre-train, fine-tune with init_from + linear_probe on another label set, evaluate."""
    from tests.conftest import make_image_folder

    pre = tmp_path / "pre"
    result = run_cli([*TINY, *TINY_SYNTHETIC, f"hydra.run.dir={pre}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = make_image_folder(tmp_path / "images", splits=("train", "val"))
    ft = tmp_path / "ft"
    result = run_cli(
        [
            *TINY,
            "data=imagefolder",
            f"data.root={folder}",
            "finetune=linear_probe",
            f"backbone.init_from={pre / 'checkpoints' / 'last.ckpt'}",
            f"hydra.run.dir={ft}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finetune=linear_probe" in result.stdout and "parameters:" in result.stdout
    record = json.loads((ft / "metrics.json").read_text())
    assert record["params"]["frozen"] > 0 and record["params"]["trainable"] < record["params"]["frozen"]
    out = tmp_path / "eval"
    result = run_cli(
        [f"ckpt_path={ft / 'checkpoints' / 'last.ckpt'}", "eval.resolutions=[32,48]", f"hydra.run.dir={out}"],
        cwd=tmp_path,
        script=EVAL_SCRIPT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # a keep_aspect run (auto, on these images) names its rows by the side: "32 (buckets)"
    assert "32 (buckets)" in result.stdout and "48 (buckets)" in result.stdout
    assert json.loads((out / "eval.json").read_text())["data"] == "imagefolder"


def test_the_printed_robustness_line_names_the_range_in_words() -> None:
    from resflex.evaluate import robustness_text

    summary = {"unit": "px", "over": 3, "worst": 0.5, "worst_at": "32x32", "mean": 0.7}
    text = robustness_text({**summary, "range_low": 1.0, "range_high": 1.5})
    assert text == "worst 0.5000 at 32x32, mean over 3 sizes 0.7000, within 0.03 of its best from 1x to 1.5x"
    one = robustness_text({**summary, "unit": "tokens", "range_low": 1.0, "range_high": 1.0})
    assert one.endswith("mean over 3 sequence lengths 0.7000, within 0.03 of its best only at 1x")


def test_eval_logs_the_size_curve_under_the_training_runs_tags(tmp_path: Path) -> None:
    """eval.split names the stage; a size's step is its side (h x w: the side of equal area), as the
    trainer logs eval/<stage>_acc_vs_size (resflex.training.resolution_eval.size_curve_points)."""
    from resflex.evaluate import log_tensorboard
    from resflex.training.resolution_eval import size_curve_points

    rows = [
        {"tag": "32", "acc": 0.5, "loss": 1.5, "width": 32, "seq_len": None},
        {"tag": "48x80", "acc": 0.25, "loss": 2.0, "width": 80, "seq_len": None},
    ]
    log_tensorboard(tmp_path, "test", rows, "table")
    tags = scalar_tags(tmp_path)
    assert tags["eval/test_acc_vs_size"] == [(32, 0.5), (62, 0.25)]
    assert tags["eval/test_loss_vs_size"] == [(32, 1.5), (62, 2.0)]
    assert not any(tag.startswith("eval/val_") or tag.endswith("acc_vs_resolution") for tag in tags)
    # the very names and steps a training run logs for the same metrics
    trained = size_curve_points({"test/acc@32": 0.5, "test/acc@48x80": 0.25}, "test")
    assert {side: set(values) for side, values in trained.items()} == {
        32: {"eval/test_acc_vs_size"},
        62: {"eval/test_acc_vs_size"},
    }


def test_evaluate_loader_counts_top1_top5_and_the_mean_loss_over_images() -> None:
    """Known logits: the label ranks 1st, 5th and 6th of 6 classes (top-1 1/3, top-5 2/3); the loss is
    the mean over images, not over batches; limit_batches stops after that many batches."""
    import torch.nn.functional as F

    from resflex.evaluate import evaluate_loader

    class Fixed(torch.nn.Module):
        def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
            return batch

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    ranked = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])  # class 0 first ... class 5 last
    logits = torch.stack([ranked, ranked, ranked])
    labels = torch.tensor([0, 4, 5])
    loader = [(logits[:1], labels[:1]), (logits[1:], labels[1:]), (logits, labels)]
    result = evaluate_loader(Fixed(), loader, torch.device("cpu"), "32-true", limit_batches=2)
    assert result["images"] == 3
    assert result["acc"] == pytest.approx(1 / 3) and result["acc_top5"] == pytest.approx(2 / 3)
    assert result["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)))
    four = evaluate_loader(Fixed(), [(logits[:, :4], labels[:1].expand(3))], torch.device("cpu"), "32-true")
    assert four["acc_top5"] is None  # fewer than 5 classes: no top-5


def test_the_robustness_summary_names_the_worst_size_and_scales_by_the_runs_eval_size() -> None:
    """Rows in eval.resolutions' order (not by size, the run's eval size not first): the worst is named
    by its own size and the range is in x of the eval size, as training reports it."""
    from resflex.evaluate import robustness_summary

    rows = [
        {"resolution": "16x16", "height": 16, "width": 16, "acc": 0.2},
        {"resolution": "32x32", "height": 32, "width": 32, "acc": 0.9},
        {"resolution": "48x48", "height": 48, "width": 48, "acc": 0.88},
        {"resolution": "64x64", "height": 64, "width": 64, "acc": 0.5},
    ]
    summary = robustness_summary(rows, tokens=False, main=(32, 32))
    assert summary is not None
    assert summary["worst"] == 0.2 and summary["worst_at"] == "16x16"
    assert (summary["range_low"], summary["range_high"]) == (1.0, 1.5)  # 32 and 48 px: 1x to 1.5x of 32
    assert summary["reference"] == [32, 32] and summary["over"] == 4
    assert robustness_summary(rows[:1], tokens=False, main=(32, 32)) is None


def test_an_image_folder_of_the_runs_classes_in_another_order_is_scored_by_class_name(tmp_path: Path) -> None:
    """The run's val split written as class folders: the folder's labels are its sorted class names, the
    run's the synthetic order (circle, ring, ...). eval.py scored them by label index (0.07 where the
    same images read 0.13); now it gives the run's own data's numbers, and other names are refused."""
    from resflex.data.datasets import SyntheticSource
    from resflex.evaluate import evaluate

    run_dir = tmp_path / "run"
    train_tiny_run(run_dir)
    source = SyntheticSource(num_train=48, num_val=16, num_test=16)  # TINY_SYNTHETIC's images
    assert list(source.classes) != sorted(source.classes)
    root = tmp_path / "images"
    for split in ("train", "val"):
        for name in source.classes:
            (root / split / name).mkdir(parents=True)
    for i in range(len(source.splits["val"])):
        image, label = source.splits["val"][i]
        for split in ("train", "val"):
            image.save(root / split / source.classes[label] / f"{i}.png")

    def accuracy(overrides: list[str], out: str) -> float:
        cfg = compose_config(
            "eval", [f"ckpt_path={run_dir}", "eval.resolutions=[32]", *overrides], tmp_path / out
        )
        return evaluate(cfg)["results"][0]["acc"]

    own = accuracy([], "own")
    assert accuracy(["data=imagefolder", f"data.root={root}"], "folder") == pytest.approx(own, abs=1e-6)
    (root / "train" / "circle").rename(root / "train" / "disc")
    (root / "val" / "circle").rename(root / "val" / "disc")
    with pytest.raises(
        ConfigError, match="the data's classes are not the checkpoint's: the run has 'circle', "
    ):
        accuracy(["data=imagefolder", f"data.root={root}"], "renamed")


def test_a_mixed_precision_asked_for_on_the_cpu_is_said_to_be_replaced(tmp_path: Path, caplog) -> None:
    """eval.json said 32-true, and nothing on the console said the request was not honoured."""
    import logging

    from resflex.evaluate import evaluate

    run_dir = tmp_path / "run"
    train_tiny_run(run_dir)
    cfg = compose_config(
        "eval", [f"ckpt_path={run_dir}", "eval.resolutions=[32]", "eval.precision=bf16-mixed"], tmp_path / "e"
    )
    with caplog.at_level(logging.WARNING, logger="resflex"):
        assert evaluate(cfg)["precision"] == "32-true"
    assert "eval.precision=bf16-mixed: evaluating on the CPU in 32-true" in caplog.text


def test_eval_says_which_batchnorm_statistics_its_numbers_are_of(tmp_path: Path) -> None:
    """A state dict saved again (the unsafe-checkpoint hint's advice) loses the per-size table: its
    numbers differ from the calibrated run's, and nothing said which statistics were used."""
    from resflex.evaluate import evaluate
    from resflex.models.bn_calibration import BN_STATS_KEY

    run_dir = tmp_path / "run"
    train_tiny_run(run_dir)  # trained at 32, evaluated at 24: calibrated there after fit
    checkpoint = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    cfg = compose_config("eval", [f"ckpt_path={checkpoint}", "eval.resolutions=[24,32]"], tmp_path / "a")
    assert evaluate(cfg)["bn_statistics"].startswith("per size, from the checkpoint's table (24, 32 px)")
    state = torch.load(checkpoint, weights_only=True)
    del state[BN_STATS_KEY]
    plain = run_dir / "checkpoints" / "plain.ckpt"
    torch.save(state, plain)
    cfg = compose_config("eval", [f"ckpt_path={plain}", "eval.resolutions=[24,32]"], tmp_path / "b")
    assert evaluate(cfg)["bn_statistics"] == "one set, as trained (the checkpoint has no per-size table)"
