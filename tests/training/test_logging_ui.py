"""What a person sees after a run: TensorBoard's HPARAMS, CUSTOM SCALARS, IMAGES and TEXT read back from the
event files; the CSV and MLflow loggers; evaluation across sizes by default."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from resflex.training.loggers import mlflow_key
from resflex.training.results import hparam_metric_tags, resolution_summary, run_hparams, shown_first
from resflex.training.views import config_markdown, custom_scalars_layout, reproduce_command
from tests.conftest import TINY, TINY_SYNTHETIC, scalar_tags, train_run


def read_events(run_dir: Path) -> dict[str, Any]:
    """Image, text and plugin tags, the hparams experiment/session and the custom-scalars layout of a run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    found: dict[str, Any] = {"images": set(), "text": {}, "hparams": {}, "experiment": None, "layout": None}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "tensors": 0})
        acc.Reload()
        found["images"] |= set(acc.Tags()["images"])
        for tag in acc.Tags()["tensors"]:
            if tag.endswith("/text_summary"):
                value = acc.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
                found["text"][tag.removesuffix("/text_summary")] = value
            if tag == "custom_scalars__config__":
                layout = layout_pb2.Layout()
                layout.ParseFromString(acc.Tensors(tag)[-1].tensor_proto.string_val[0])
                found["layout"] = layout
        try:
            content = acc.PluginTagToContent("hparams")
        except KeyError:
            continue
        if "_hparams_/session_start_info" in content:
            data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
            found["hparams"] = dict(data.session_start_info.hparams.items())
        if "_hparams_/experiment" in content:
            found["experiment"] = plugin_data_pb2.HParamsPluginData.FromString(
                content["_hparams_/experiment"]
            ).experiment
    return found


def test_hparams_are_the_knobs_not_targets_or_paths() -> None:
    cfg = OmegaConf.create(
        {
            "seed": 1,
            "backbone": {
                "_target_": "x.Backbone",
                "name": "resnet18",
                "pretrained": False,
                "init_from": None,
            },
            "pooling": {"_target_": "x.Pool", "levels": [1, 2]},
            "resolution": {"_target_": "x.Progressive", "start_size": 48, "end_size": 64},
            "optimizer": {
                "_target_": "torch.optim.AdamW",
                "_partial_": True,
                "lr": 0.01,
                "weight_decay": 0.05,
            },
            "data": {"batch_size": 32, "root": "/data/x", "name": "imagefolder"},
            "model": {"net": {"dropout": 0.2}},
            "trainer": {"max_epochs": 3},
        }
    )
    choices = {"pooling": "pyramid", "resolution": "progressive", "optimizer": "adamw", "data": "imagefolder"}
    overrides = [
        "pooling=pyramid",
        "model.net.dropout=0.2",
        "data.root=/data/x",
        "hydra.run.dir=/o",
        "+x.y=1",
    ]
    overrides += ["trainer.enable_progress_bar=false", "data.num_workers=0"]  # plumbing, not knobs
    hparams, varied = run_hparams(cfg, choices, overrides)
    assert not any("_target_" in k or "_partial_" in k for k in hparams)
    assert not any("/" in str(v) for v in hparams.values())  # no paths
    assert varied == ["model.net.dropout", "pooling"]
    assert list(hparams)[:2] == varied  # what was chosen on the command line comes first
    assert hparams["pooling"] == "pyramid" and hparams["model.net.dropout"] == 0.2
    assert hparams["backbone.name"] == "resnet18" and hparams["backbone.init"] == "scratch"
    assert hparams["resolution.size"] == "48→64" and hparams["optimizer.lr"] == 0.01
    assert hparams["data.batch_size"] == 32 and hparams["trainer.max_epochs"] == 3
    # TensorBoard shows five columns before any click: what was chosen, then pooling, schedule, size, ...
    assert shown_first(hparams, varied) == {
        "model.net.dropout",
        "pooling",
        "resolution",
        "resolution.size",
        "backbone.name",
    }
    assert shown_first(hparams, []) == {
        "pooling",
        "resolution",
        "resolution.size",
        "backbone.name",
        "optimizer.lr",
    }
    assert resolution_summary({"sizes": [32, 48]}) == "[32,48]"
    assert resolution_summary({"size": 64, "test_size": 80}) == "64→80"
    metrics = {"val/acc": 0.5, "val/acc@96": 0.1, "val/acc@48": 0.3, "test/acc": 0.4, "train/loss": 1.0}
    assert hparam_metric_tags(metrics) == ["val/acc", "test/acc", "val/acc@48", "val/acc@96"]


def test_reproduce_command_quotes_for_the_shell() -> None:
    command = reproduce_command(["pooling=pyramid", "eval.resolutions=[32,64]", "+tag=a b"])
    assert command == "python scripts/train.py pooling=pyramid 'eval.resolutions=[32,64]' '+tag=a b'"
    assert mlflow_key("val/acc@64") == "val/acc_at_64" and mlflow_key("val/acc@48x80") == "val/acc_at_48x80"


def test_config_markdown_names_the_sizes_auto_resolved_to() -> None:
    text = "eval:\n  resolutions: auto\n  bn_calibration: true\nother:\n  resolutions: auto\n"
    shown = config_markdown(text, "run/.hydra/config.yaml", [(32, 32), (48, 64)])
    assert "    eval:\n      resolutions: auto  # used: 32, 48x64 px\n" in shown
    assert shown.endswith("    other:\n      resolutions: auto")  # only the eval group's key
    assert "# used" not in config_markdown(text, "c.yaml")  # no sizes known: as written


def test_default_run_shows_sizes_layout_images_text_and_clean_hparams(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY, *TINY_SYNTHETIC, "optimizer.lr=0.003", "logger=[tensorboard,csv]"]
    assert train_run(args, run_dir, hydra_files=True)["status"] == "completed"
    scalars = scalar_tags(run_dir)
    events = read_events(run_dir)

    # evaluation across sizes by default (eval.resolutions=auto): 16, 24, 32, 48, 64 around 32 px
    sizes = {tag.split("@")[1] for tag in scalars if tag.startswith("val/acc@")}
    assert sizes == {"16", "24", "32", "48", "64"}
    assert (run_dir / "acc_vs_resolution.png").is_file()

    # SCALARS: no hp/* one-point charts, no epoch counter
    assert not [t for t in scalars if t.startswith("hp/") or t == "epoch"]

    # HPARAMS: the knobs, no _target_ strings, no paths; metrics are real tags, read as their last value
    hparams = events["hparams"]
    assert hparams and not [k for k in hparams if "_target_" in k]
    assert not [k for k, v in hparams.items() if "/" in v.string_value]
    assert hparams["optimizer.lr"].number_value == pytest.approx(0.003)
    assert hparams["pooling"].string_value == "pyramid"
    assert hparams["backbone.name"].string_value == "test_resnet"
    experiment = events["experiment"]
    columns = [info.name for info in experiment.hparam_infos]
    assert set(columns) == set(hparams)
    differs = [info.name for info in experiment.hparam_infos if info.differs]
    assert "optimizer.lr" in differs and "backbone.name" in differs and "pooling" not in differs
    metric_tags = [m.name.tag for m in experiment.metric_infos]
    assert metric_tags[:2] == ["val/acc", "test/acc"] and "val/acc@48" in metric_tags
    assert set(metric_tags) <= set(scalars)

    # CUSTOM SCALARS: the layout exists and every chart's regexes name real tags
    layout = events["layout"]
    assert layout is not None and len(layout.category) == len(custom_scalars_layout())
    for category in layout.category:
        for chart in category.chart:
            for pattern in chart.multiline.tag:
                assert any(re.search(pattern, tag) for tag in scalars), (chart.title, pattern)

    # IMAGES: the training batch at its size, the confusion matrix, accuracy vs resolution
    figures = {"figures/confusion_matrix_val", "figures/acc_vs_resolution"}
    assert {"samples/train@32", *figures} <= events["images"]
    assert (run_dir / "confusion_matrix.png").is_file()

    # TEXT: the composed config and the command that reproduces the run
    assert "optimizer.lr=0.003" in events["text"]["run/command"]
    assert "python scripts/train.py" in events["text"]["run/command"]
    assert "pooling:" in events["text"]["run/config"]
    # the config as written says auto; the TEXT tab says which sizes that was
    assert "resolutions: auto  # used: 32, 16, 24, 48, 64 px" in events["text"]["run/config"]

    # CSV logger next to TensorBoard: the same per-size tags, figures as PNG files
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/acc", "val/acc@48", "train/images_per_sec@32"} <= set(header)
    images = {p.name for p in (run_dir / "csv" / "images").glob("*.png")}
    assert any(n.startswith("samples_train@32") for n in images)
    assert any(n.startswith("figures_confusion_matrix_val_step") for n in images)
    assert (run_dir / "csv" / "text" / "run_command.md").is_file()


def test_mlflow_run_in_a_sqlite_store_reads_back(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run_dir, store = tmp_path / "run", tmp_path / "store" / "mlflow.db"
    args = [
        *TINY,
        *TINY_SYNTHETIC,
        "logger=mlflow",
        f"logger.mlflow.tracking_uri=sqlite:///{store}",
        "eval.resolutions=[]",  # one size: no accuracy-vs-resolution plot
    ]
    assert train_run(args, run_dir, hydra_files=True)["status"] == "completed"
    assert not (run_dir / "acc_vs_resolution.png").exists()
    record = json.loads((run_dir / "metrics.json").read_text())

    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("resflex")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["backbone.name"] == "test_resnet" and run.data.params["pooling"] == "pyramid"
    assert not [k for k in run.data.params if "_target_" in k]
    for tag in ("val/acc", "val/loss", "test/acc", "val/acc@32", "train/images_per_sec"):
        assert run.data.metrics[mlflow_key(tag)] == pytest.approx(record["metrics"][tag], rel=1e-6), tag
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples", "figures", "run"} <= artifacts


def test_logger_none_writes_no_events_but_still_the_metrics_file(tmp_path: Path) -> None:
    overrides = [*TINY, *TINY_SYNTHETIC, "logger=none", "eval.resolutions=[]"]
    record = train_run(overrides, tmp_path)
    assert record["status"] == "completed"
    assert not list(tmp_path.rglob("events.out.tfevents.*")) and not (tmp_path / "csv").exists()
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["status"] == "completed" and written["choices"]["logger"] == "none"
    assert written["metrics"] == pytest.approx(record["metrics"])
    assert {"val/acc", "val/loss", "test/acc", "train/loss"} <= set(written["metrics"])


def test_throughput_is_images_per_second_of_training_and_of_validation(monkeypatch) -> None:
    """The numbers themselves, on a clock the test sets: train 8 images in 2 s at 16 px, validation
    6 images in 3 s; the validation pause is not charged to training."""
    from types import SimpleNamespace

    import torch

    from resflex.training import callbacks
    from resflex.training.callbacks import ThroughputLogger

    now = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: now[0])
    trainer = SimpleNamespace(
        global_step=0,
        log_every_n_steps=2,
        loggers=[],
        is_global_zero=True,
        sanity_checking=False,
        train_dataloader=None,
    )
    module = SimpleNamespace(device=torch.device("cpu"), log=lambda *args, **kwargs: None)
    monitor = ThroughputLogger()
    monitor.on_train_epoch_start(trainer, module)
    images = (torch.zeros(4, 3, 16, 16), torch.zeros(4))
    for step in (1, 2):
        now[0] += 1.0
        trainer.global_step = step
        monitor.on_train_batch_end(trainer, module, None, images, step - 1)
    assert monitor.last == {
        "train/resolution": 16.0,
        "train/images_per_sec": 8 / 2,
        "train/images_per_sec@16": 8 / 2,
    }
    monitor.on_validation_epoch_start(trainer, module)
    for batch_idx in range(2):
        monitor.on_validation_batch_end(trainer, module, None, (torch.zeros(3, 3, 16, 16),), batch_idx)
    now[0] += 3.0
    monitor.on_validation_epoch_end(trainer, module)
    assert monitor.last["val/images_per_sec"] == 6 / 3
    now[0] += 1.0  # one more training batch after validation: 4 images in the 1 s since it ended
    trainer.global_step = 4
    monitor.on_train_batch_end(trainer, module, None, images, 2)
    assert monitor.last["train/images_per_sec"] == 4 / 1
    assert monitor.last["train/images_per_sec@16"] == 4 / 1
