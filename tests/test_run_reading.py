"""resflex.run reading a finished run folder made by hand (no training): the config as reopened (no
pre-training source, the run folder as its output), the schedule bound to the run's epochs, the trained
framing from the record, which checkpoint's metrics are whose, and the strict weight load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from resflex.run import Run, open_run, read_config

HEAD = "model.head.weight"
FIXED = {"_target_": "resflex.data.resolution.FixedResolution", "_convert_": "all", "size": [48, 80]}


def run_folder(
    root: Path, resolution: dict | None = None, record: dict | None = None, **backbone: object
) -> Path:
    """``root/run``: .hydra/config.yaml (a checkpoint's run: pre-training sources set), checkpoints/last.ckpt
    (a head of 3 classes), metrics.json."""
    run_dir = root / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    config = {
        "backbone": {"name": "test_resnet", **backbone},
        "model": {},
        "paths": {"output_dir": "${hydra:runtime.output_dir}"},
        "resolution": resolution or FIXED,
        "trainer": {"max_epochs": 10},
    }
    OmegaConf.save(OmegaConf.create(config), run_dir / ".hydra" / "config.yaml")
    torch.save({"state_dict": {HEAD: torch.zeros(3, 4)}}, run_dir / "checkpoints" / "last.ckpt")
    (run_dir / "metrics.json").write_text(json.dumps(record or {}))
    return run_dir


def test_a_reopened_checkpoint_downloads_and_reads_no_pretraining_source(tmp_path: Path) -> None:
    """The weights come from the checkpoint: a run that started from the hub, a weights file or another
    run must not fetch or read them again (they may be gone) when it is evaluated or exported."""
    run_dir = run_folder(
        tmp_path, pretrained=True, weights="/gone/w.pth", init_from="/gone/run", init_head=True
    )
    backbone = open_run(run_dir).config.backbone
    assert (backbone.pretrained, backbone.weights, backbone.init_from, backbone.init_head) == (
        False,
        None,
        None,
        False,
    )


def test_the_config_read_alone_has_its_run_folder_as_output_dir(tmp_path: Path) -> None:
    """Outside Hydra, ${hydra:runtime.output_dir} has no value: the folder holding .hydra/ is meant."""
    run_dir = run_folder(tmp_path)
    assert read_config(run_dir / ".hydra" / "config.yaml").paths.output_dir == str(run_dir)
    assert read_config(run_dir / ".hydra" / "config.yaml", tmp_path).paths.output_dir == str(tmp_path)
    assert open_run(run_dir).config.paths.output_dir == str(run_dir)


def test_a_relative_data_root_is_read_from_the_folder_the_run_was_started_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trained from ``project/`` with ``data.root=images``, evaluated from elsewhere: the run's images."""
    run_dir = run_folder(tmp_path / "project" / "logs")
    (tmp_path / "project" / "images").mkdir()
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    config.data = {"_target_": "resflex.data.datamodule.ResflexDataModule", "root": "images"}
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")
    hydra = {"hydra": {"runtime": {"cwd": str(tmp_path / "project")}}}
    OmegaConf.save(OmegaConf.create(hydra), run_dir / ".hydra" / "hydra.yaml")
    monkeypatch.chdir(tmp_path)
    assert open_run(run_dir).config.data.root == str(tmp_path / "project" / "images")
    config.data.root = "gone"  # nothing there: left as it was, for the data's own error to name
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")
    assert open_run(run_dir).config.data.root == "gone"


def test_the_main_size_is_height_by_width_and_an_epoch_schedule_is_bound_to_the_runs_epochs(
    tmp_path: Path,
) -> None:
    """A non-square main size keeps (h, w); a progressive schedule (which needs trainer.max_epochs) is
    rebuilt for the run's 10 epochs, not lost with a warning."""
    run = open_run(run_folder(tmp_path / "a"))
    assert run.main_size() == (48, 80)
    progressive = {
        "_target_": "resflex.data.resolution.ProgressiveResolution",
        "_convert_": "all",
        "start_size": 32,
        "end_size": 64,
        "multiple": 16,
    }
    schedule = open_run(run_folder(tmp_path / "b", progressive)).schedule()
    assert schedule is not None and schedule.max_epochs == 10
    assert sorted(set(schedule.train_sizes())) == [(32, 32), (48, 48), (64, 64)]


@pytest.mark.parametrize("geometry", ["pad", "auto"])
def test_eval_framing_is_the_recorded_framing_with_its_fill(tmp_path: Path, geometry: str) -> None:
    """geometry=pad pads with the training data's mean colour and auto is what training resolved, both as
    the run recorded them (data_profile), not the default fill or a fallback."""
    profile = {"data_profile": {"geometry": "pad", "mean_color": [10, 20, 30]}}
    run = open_run(run_folder(tmp_path, {**FIXED, "geometry": geometry}, profile))
    assert run.trained_framing() == ("pad", [10, 20, 30])
    transform, resolved, schedule = run.eval_framing()
    assert (resolved, transform.geometry, schedule.geometry) == ("pad", "pad", "pad")
    assert transform.fill == (10, 20, 30)


def test_auto_without_a_record_or_its_data_falls_back_to_square(tmp_path: Path, caplog) -> None:
    run = open_run(run_folder(tmp_path, {**FIXED, "geometry": "auto"}))
    transform, resolved, _ = run.eval_framing()
    assert (resolved, transform.geometry) == ("square", "square")
    assert "needs the run's training data to be resolved" in caplog.text and "using square" in caplog.text


def test_metrics_of_another_file_count_only_when_its_weights_and_statistics_are_equal(tmp_path: Path) -> None:
    """last.ckpt opened; val was measured on best.ckpt. Same weights and BatchNorm statistics: the val
    numbers are last.ckpt's too. Other statistics, or none beside the opened file's: they are not, and
    the note names the file they are of."""
    state = {HEAD: torch.ones(3, 4)}
    stats = {"64": {"bn.running_mean": torch.zeros(2)}}
    record = {
        "metrics": {"val/acc": 0.5, "val/acc@64": 0.5},
        "measured_on": {"val": {"checkpoint": "best.ckpt"}},
    }

    def opened(best: dict) -> Run:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        (folder / "checkpoints").mkdir(parents=True)
        torch.save(best, folder / "checkpoints" / "best.ckpt")
        return Run(
            run_dir=folder,
            config_path=folder / "c.yaml",
            config=OmegaConf.create({}),
            record=record,
            checkpoint=folder / "checkpoints" / "last.ckpt",
            state=state,
            bn_stats=stats,
        )

    same = opened({"state_dict": {HEAD: torch.ones(3, 4)}, "bn_size_stats": stats})
    assert same.metrics == record["metrics"] and same.metrics_note is None
    for best in (
        {"state_dict": {HEAD: torch.ones(3, 4)}, "bn_size_stats": {"64": {"bn.running_mean": torch.ones(2)}}},
        {"state_dict": {HEAD: torch.ones(3, 4)}},
        {"state_dict": {HEAD: torch.zeros(3, 4)}, "bn_size_stats": stats},
    ):
        other = opened(best)
        assert other.metrics == {}
        note = other.metrics_note
        assert note is not None and "are of best.ckpt, not of the loaded last.ckpt" in note


def test_the_note_names_every_file_the_left_out_numbers_are_of(tmp_path: Path) -> None:
    record = {
        "metrics": {"val/acc": 0.5, "test/acc": 0.4},
        "measured_on": {"val": {"checkpoint": "epoch3.ckpt"}, "test": {"checkpoint": "best.ckpt"}},
    }
    run = Run(run_dir=tmp_path, config_path=tmp_path / "c.yaml", config=OmegaConf.create({}), record=record,
              checkpoint=tmp_path / "last.ckpt")  # fmt: skip
    assert run.metrics_note == (
        "metrics.json's val and test numbers (accuracy per size, robust range) are of best.ckpt, "
        "epoch3.ckpt, not of the loaded last.ckpt"
    )


def test_without_classes_json_the_names_are_the_training_folders_classes(tmp_path: Path) -> None:
    """An image-folder run whose classes.json is gone: the class folders of <root>/train, in label order
    (not the split folders of the root, which a 2-class run would take for its classes)."""
    root = tmp_path / "data"
    for split in ("train", "val"):
        for name in ("owls", "cats"):
            (root / split / name).mkdir(parents=True)
    config = {"data": {"root": str(root), "source": {"_target_": "resflex.data.sources.ImageFolderSource"}}}
    run = Run(run_dir=tmp_path / "run", config_path=tmp_path / "c.yaml", config=OmegaConf.create(config))
    assert run.classes(2) == ["cats", "owls"]


def test_a_naflex_runs_token_classifier_holds_its_max_seq_lens_statistics(tmp_path: Path) -> None:
    """A NaFlex run with per-length BatchNorm statistics (its pooling's): the token classifier exported
    or used with no length named holds those of max_seq_len, and a named length those nearest to it."""
    from resflex.build import build_module
    from resflex.models.bn_calibration import BN_STATS_KEY
    from tests.conftest import TINY_NAFLEX_MODEL
    from tests.test_eval_script import compose_config

    run_dir = tmp_path / "run"
    cfg = compose_config("train", [*TINY_NAFLEX_MODEL, f"data.root={tmp_path}", "logger=none"], run_dir)
    saved = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(saved, run_dir / ".hydra" / "config.yaml")
    state = build_module(saved, 3).state_dict()
    name = "pooling.proj.1.running_mean"
    state[f"model.{name}"] = torch.full_like(state[f"model.{name}"], 5.0)  # neither length's
    ones = torch.ones_like(state[f"model.{name}"])
    var = name.replace("mean", "var")
    table = {str(s): {name: ones * s, var: ones} for s in (16, 32)}
    (run_dir / "checkpoints").mkdir()
    torch.save({"state_dict": state, BN_STATS_KEY: table}, run_dir / "checkpoints" / "last.ckpt")
    run = open_run(run_dir / "checkpoints" / "last.ckpt")
    assert float(run.token_classifier().model.pooling.proj[1].running_mean[0]) == 32.0
    assert float(run.token_classifier(seq_len=18).model.pooling.proj[1].running_mean[0]) == 16.0
