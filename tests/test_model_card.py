"""resflex.model_card, what the card says about a run: each line of its table read from the run's
config and record, the accuracy table in order with each size's loss, the evaluation framing the run
trained with, which checkpoint's numbers it shows, and the files and exit codes of writing it. Run
folders built from files (``fabricated_run``), without training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from resflex.model_card import build_model_card, main, write_model_card, write_model_card_quietly
from tests.test_model_card_robustness import fabricated_run

BEST = "best-epoch003-loss0.3000.ckpt"


def _record(run_dir: Path, **fields: object) -> None:
    record = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**record, **fields}))


def _line(card: str, start: str) -> str:
    return next(line for line in card.splitlines() if line.startswith(start))


def test_the_cards_table_is_the_runs_config_and_record(tmp_path: Path) -> None:
    """Every line of the table from the run's own files: the head with its pooling arguments and
    dropout, the schedule after the warm-up, the fine-tuning strategy, the weights it started from, the
    data and where it was, the run's wall time; the sizes without the keys left unset."""
    extra = (
        "pooling=gem",
        "model.net.dropout=0.25",
        "scheduler=step",
        "finetune=gradual",
        "backbone.init_from=/runs/teacher",
        "data=imagefolder",
        "data.root=/data/pets",
    )
    run_dir = fabricated_run(tmp_path, {"val/acc": 0.5}, extra=extra)
    _record(run_dir, wall_time_s=12.5)
    card = build_model_card(run_dir, ["cat", "dog"])
    assert _line(card, "| head |") == "| head | GeMPool(p=3.0, learn_p=True) → dropout 0.25 → linear |"
    schedule = _line(card, "| schedule |")
    assert "warm-up 3.0 epochs then step decay, finetune=gradual, seed 42 |" in schedule
    assert "weights: /runs/teacher," in _line(card, "| backbone |")
    assert _line(card, "| data |") == "| data | imagefolder (`/data/pets`) |"
    assert _line(card, "| run |") == "| run | status completed, wall time 12.5 s |"
    sizes = _line(card, "| training sizes |")
    assert sizes.startswith("| training sizes | FixedResolution: geometry=auto, multiple=8, ")
    assert sizes.endswith(", size=64 |") and "None" not in sizes


def test_the_training_sizes_are_the_values_the_run_used(tmp_path: Path) -> None:
    """A schedule's interpolations are resolved (``seed=${seed}`` is the seed) and ``geometry=auto``
    names what it chose for the run's images (found by a ViT audit: the raw ``${seed}`` was shown)."""
    run_dir = fabricated_run(tmp_path, {"val/acc": 0.5}, extra=("resolution=multiscale", "seed=7"))
    _record(run_dir, data_profile={"geometry": "keep_aspect"})
    sizes = _line(build_model_card(run_dir), "| training sizes |")
    assert sizes.startswith("| training sizes | MultiScaleResolution: geometry=auto (chose keep_aspect), ")
    assert "seed=7" in sizes and "${" not in sizes


def test_the_command_is_the_runs_overrides_quoted_for_the_shell(tmp_path: Path) -> None:
    """The "How it was trained" command pastes into a shell (an override with a space stays one
    word), and comes from the record's copy of the overrides when ``.hydra/overrides.yaml`` is gone."""
    run_dir = fabricated_run(tmp_path, {"val/acc": 0.5}, extra=("+tag=a b",))
    command = "python scripts/train.py backbone.name=test_resnet resolution.size=64 logger=none '+tag=a b'"
    assert command in build_model_card(run_dir).split("```bash\n", 1)[1]
    overrides = list(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))
    (run_dir / ".hydra" / "overrides.yaml").unlink()
    _record(run_dir, overrides=overrides)
    assert command in build_model_card(run_dir).split("```bash\n", 1)[1]


def test_the_accuracy_table_is_val_then_test_by_size_with_each_sizes_loss(tmp_path: Path) -> None:
    """Sizes in numeric order (128 after 32), val before test, each row with the loss at its size; a
    record with only the plain ``val/acc`` shows it at the eval size with the plain loss."""
    metrics = {
        "test/acc@128": 0.7,
        "val/acc@128": 0.6,
        "val/loss@128": 1.25,
        "val/acc@32": 0.4,
        "val/loss@32": 2.5,
        "val/acc@64x96": 0.5,
        "val/loss": 9.0,
    }
    card = build_model_card(fabricated_run(tmp_path / "curve", metrics))
    table = card.split("| split | size | acc | loss |\n|---|---|---|---|\n", 1)[1].split("\n\n", 1)[0]
    assert table.splitlines() == [
        "| val | 32 | 0.4000 | 2.5000 |",
        "| val | 64x96 | 0.5000 | - |",
        "| val | 128 | 0.6000 | 1.2500 |",
        "| test | 128 | 0.7000 | - |",
    ]
    plain = build_model_card(fabricated_run(tmp_path / "plain", {"val/acc": 0.5, "val/loss": 0.75}))
    assert "| val | eval size | 0.5000 | 0.7500 |" in plain


def test_the_class_list_is_cut_after_fifty_names(tmp_path: Path) -> None:
    run_dir = fabricated_run(tmp_path, {"val/acc": 0.5})
    fifty = [f"c{i}" for i in range(50)]
    line = _line(build_model_card(run_dir, fifty), "| classes |")
    assert line.startswith("| classes | 50: `c0`, ") and line.endswith("`c49` |")
    line = _line(build_model_card(run_dir, [*fifty, "c50"]), "| classes |")
    assert line.startswith("| classes | 51: `c0`, ") and line.endswith("`c49` … |") and "c50" not in line


def test_the_evaluation_framing_is_the_one_the_run_trained_with(tmp_path: Path) -> None:
    """``resolution.geometry=auto`` resolved to pad on the training images (the record's data
    profile): the card names pad, says auto chose it, and describes pad; a concrete geometry does not
    claim auto chose it."""
    auto = fabricated_run(tmp_path / "auto", {"val/acc": 0.5}, extra=("resolution.geometry=auto",))
    _record(auto, data_profile={"geometry": "pad", "mean_color": [120, 110, 100]})
    line = _line(build_model_card(auto), "Evaluation preprocessing:")
    assert line.startswith(
        "Evaluation preprocessing: geometry `pad` (chosen by auto from the training images)"
    )
    assert "the whole image fitted inside the size, padded" in line
    square_run = fabricated_run(tmp_path / "square", {"val/acc": 0.5}, extra=("resolution.geometry=square",))
    square = _line(build_model_card(square_run), "Evaluation")
    assert square.startswith("Evaluation preprocessing: geometry `square`, crop_pct 1.0 (resize to cover")


def test_an_auto_geometry_the_record_never_resolved_is_said_so_not_left_blank(tmp_path: Path) -> None:
    """A record without a data profile (an older run, or one stopped before its data was read): the
    card says how auto will be resolved and leaves no empty parenthesis."""
    auto = fabricated_run(tmp_path / "auto", {"val/acc": 0.5}, extra=("resolution.geometry=auto",))
    line = _line(build_model_card(auto), "Evaluation preprocessing:")
    assert line == (
        "Evaluation preprocessing: geometry `auto` (not in the run's record: resolved from the training "
        "images when the run is evaluated, `square` if they are gone), crop_pct 1.0 "
        "(`scripts/predict.py` applies it)."
    )


def test_a_backbone_timm_does_not_know_gets_imagenets_normalisation(tmp_path: Path) -> None:
    """The fallback when timm has no pretrained config for the name (a renamed or custom backbone)."""
    run_dir = fabricated_run(tmp_path, {"val/acc": 0.5})
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    config.backbone.name = "no_such_timm_model"
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")
    card = build_model_card(run_dir)
    assert "Normalisation: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)." in card


def test_the_checkpoint_notes_follow_what_was_measured_on_it(tmp_path: Path) -> None:
    """A run selected on val/loss: the selection line says so. The calibration label is only for the
    numbers shown, and each split measured on another checkpoint gets its own "Not shown" line."""
    run_dir = fabricated_run(tmp_path, {"val/acc@64": 0.8, "test/acc@64": 0.7})
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / BEST).write_bytes(b"")  # present: the card is of it
    best = {"monitor": "val/loss", "val/loss": 0.3, "checkpoint": f"/moved/{BEST}"}
    measured = {
        "val": {"checkpoint": "last.ckpt", "bn_calibration": True},
        "test": {"checkpoint": BEST, "bn_calibration": True},
    }
    _record(run_dir, best=best, measured_on=measured)
    card = build_model_card(run_dir)
    assert f"Checkpoint: `{BEST}` (the run's best checkpoint by val/loss)" in card
    assert "Test numbers are after BatchNorm calibration" in card and "Val and test" not in card
    assert f"Selected as the best by val/loss 0.3000 during training (`{BEST}`)." in card
    measured["test"] = {"checkpoint": "last.ckpt"}
    _record(run_dir, measured_on=measured)
    card = build_model_card(run_dir)
    assert "Not shown: the val numbers, measured on `last.ckpt` (another checkpoint)." in card
    assert "Not shown: the test numbers, measured on `last.ckpt` (another checkpoint)." in card
    assert "calibration" not in card
    # both splits are another checkpoint's: recorded, not "none recorded" (the card said both)
    assert "No evaluation of this checkpoint recorded in metrics.json." in card
    assert "No accuracy per size of this checkpoint recorded in metrics.json (see above)." in card
    assert "No evaluation recorded" not in card and "No accuracy per size recorded" not in card


def test_the_card_names_the_classes_the_run_folder_keeps(tmp_path: Path) -> None:
    """``classes.json`` (written when training ended) names the card's classes: the run's data (here
    synthetic, with numbered classes) is not asked again."""
    run_dir = fabricated_run(tmp_path, {"val/acc": 0.5})
    (run_dir / "classes.json").write_text('["cat", "dog"]\n')
    card = write_model_card(run_dir).read_text()
    assert _line(card, "| classes |") == "| classes | 2: `cat`, `dog` |"
    assert json.loads((run_dir / "classes.json").read_text()) == ["cat", "dog"]


def test_the_end_of_training_writer_is_silent_for_a_folder_without_a_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run folder with no composed config (a test run without Hydra files) gets no card and no
    warning; one whose config is broken gets a one-line warning, never an exception."""
    with caplog.at_level(logging.WARNING, logger="resflex"):
        assert write_model_card_quietly(tmp_path) is None
    assert caplog.records == []
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 1\n")
    with caplog.at_level(logging.WARNING, logger="resflex"):
        assert write_model_card_quietly(tmp_path) is None
    assert [r.getMessage().startswith("model card not written: ") for r in caplog.records] == [True]
    assert not (tmp_path / "model_card.md").exists()


def test_the_script_exits_2_with_one_line_for_a_folder_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    run_dir = fabricated_run(tmp_path, {"val/acc": 0.5})
    assert main([str(run_dir)]) == 0
    assert capsys.readouterr().out == f"written: {run_dir / 'model_card.md'}\n"


def test_a_card_written_from_a_relative_path_names_its_files_by_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``scripts/model_card.py r1`` wrote ``load_classifier("r1/checkpoints/...")``: the card is copied
    beside exports, where that path leads nowhere."""
    run_dir = fabricated_run(tmp_path, {"val/acc": 0.5})
    monkeypatch.chdir(run_dir.parent)
    card = write_model_card(Path(run_dir.name)).read_text()
    assert f'load_classifier("{run_dir}/checkpoints/' in card
    assert f"ckpt_path={run_dir}/checkpoints/" in card


def test_printed_commands_name_a_sweep_jobs_folder_as_hydra_reads_it() -> None:
    """A sweep job's folder has an ``=`` (``pooling=avg``), which Hydra's grammar refuses unquoted: the
    card's "use it" commands and the resume command failed when pasted. Each path is read back as is."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from resflex.model_card import _image_usage
    from resflex.resume_check import resume_command

    folder = Path("/runs/sweep/pooling=avg,resolution.size=32")
    checkpoint = folder / "checkpoints" / "best-epoch001-acc0.5000.ckpt"
    commands = [line for line in _image_usage(checkpoint) if line.startswith("python ")]
    commands.append(resume_command(["pooling=avg", "resolution.size=32"], folder))
    parser = OverridesParser.create()
    read: dict[str, list[object]] = {}
    for command in commands:
        words = [w for w in shlex.split(command)[2:] if "=" in w]
        for override in parser.parse_overrides(words):
            read.setdefault(override.key_or_group, []).append(override.value())
    assert read["ckpt_path"] == [str(checkpoint), str(checkpoint), "last"]
    assert read["hydra.run.dir"] == [str(folder)] and read["pooling"] == ["avg"]
