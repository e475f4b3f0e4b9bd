"""The command line exactly as a user types it: runs, run folders, TensorBoard tags, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resflex.build import build_datamodule
from resflex.errors import ConfigError, DataError
from tests.conftest import TINY, TINY_SYNTHETIC, run_cli, scalar_tags
from tests.test_configs import GROUPS, compose_train
from tests.test_eval_script import compose_config

REQUIRED_TAGS = {
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "val/acc_top5",
    "train/images_per_sec",
    "val/images_per_sec",
    "train/resolution",
}


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_train_writes_run_folder_with_tensorboard_tags(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(["pooling=pyramid", *TINY, *TINY_SYNTHETIC, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    console = (run_dir / "train.log").read_text()  # Hydra's job log: what the console showed
    assert "data profile: 48 training images" in console and "geometry: keep_aspect" in console
    printed = result.stdout + result.stderr  # the console: one parameter count, no Lightning module table
    assert printed.count("parameters: ") == 1 and "Total FLOPs" not in printed, printed[-2000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    tags = scalar_tags(run_dir)
    assert set(tags) >= REQUIRED_TAGS, sorted(tags)
    assert any(tag.startswith("train/lr") for tag in tags)
    assert all(v > 0 for _, v in tags["train/images_per_sec"])
    assert {v for _, v in tags["train/resolution"]} == {32.0}
    assert [step for step, _ in sorted(tags["train/loss"])] == [0, 1, 2]  # limit_train_batches=3
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "completed"
    assert record["choices"]["pooling"] == "pyramid"
    # metrics.json holds the values TensorBoard shows: the last logged point of each tag
    for tag in ("val/acc", "val/loss", "test/acc", "test/loss"):
        assert record["metrics"][tag] == pytest.approx(sorted(tags[tag])[-1][1], abs=1e-6), tag
    # 16 validation images (limit_val_batches=2 x batch 8): the accuracy is a count of them
    assert (record["metrics"]["val/acc"] * 16) == pytest.approx(round(record["metrics"]["val/acc"] * 16))


def test_multirun_gives_each_job_its_own_named_folder(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            "pooling=avg,max,pyramid",
            *TINY,
            *TINY_SYNTHETIC,
            "test_after_fit=false",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert len(jobs) == 3, jobs
    assert {next(part for part in name.split(",") if part.startswith("pooling=")) for name in jobs} == {
        "pooling=avg",
        "pooling=max",
        "pooling=pyramid",
    }
    for name in jobs:
        assert "val/acc" in scalar_tags(sweep / name)
        assert json.loads((sweep / name / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["ckpt_path=/missing.ckpt"], ["ckpt_path does not exist: /missing.ckpt"]),
        (["pooling.levels=abc"], ["pooling.levels", "'abc'"]),
        (["backbone.name=resnet19"], ["unknown backbone 'resnet19'", "resnet18"]),
        # a timm model no rule describes: found by a forward on the meta device (it trained until the
        # first batch raised a 40-line broadcast error)
        (["backbone.name=levit_128s"], ["levit_128s cannot take a 64x64 input", "built for 224x224"]),
        # an index past MViTv2's relative-position table: the meta device cannot see it, a real forward does
        (
            ["backbone.name=mvitv2_tiny", "resolution.size=256"],
            ["mvitv2_tiny cannot take a 256x256 input (IndexError", "++backbone.model_kwargs.img_size=512"],
        ),
        (["+backbone.model_kwargs.drop_rte=0.1"], ["takes no argument 'drop_rte'", "drop_rate"]),
        (["data=imagefolder"], ["data.root is not set"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and "=" in v[0] else None,
)
def test_bad_input_fails_before_any_work_in_one_line(
    tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    """As typed, on the default config: the cause and a hint, and nothing else — no data profile,
    no device banner, no end-of-run report (README: "fails before any work")."""
    run_dir = tmp_path / "r"
    result = run_cli([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert_one_line_error(result, *fragments, "(hint: ")
    output = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(output) <= 2, "\n".join(output)
    assert not any("data profile" in line for line in output)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "failed" and fragments[0] in record["error"]
    assert not list(run_dir.glob("events.out.tfevents.*")) and not (run_dir / "checkpoints").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["trainer.max_epoch=1"], ["unknown config key trainer.max_epoch", "trainer.max_epochs?"]),
        (["foo=1"], ["unknown config key foo", "+foo=... adds a new one"]),
        (["+data.batchsize=8"], ["+data.batchsize adds a key nothing reads", "data.batch_size=... (without"]),
        (["-m", "pooling=avg,max", "data.batchsize=8"], ["unknown config key data.batchsize", "batch_size?"]),
        # the key exists once the group choice is made: composed with the command's choices
        (["data=imagefolder", "data.source.val_fractoin=0.2"], ["did you mean data.source.val_fraction?"]),
    ],
)
def test_a_mistyped_key_is_one_line_with_the_nearest_key(
    tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    """Hydra's answer is a page that suggests +key=..., which would add a key nothing reads."""
    result = run_cli(args, cwd=tmp_path)
    assert_one_line_error(result, *fragments)
    assert result.returncode == 2 and not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("arg", "fragments"),
    [
        ("data.root=~/images", ["Hydra's grammar has no place for '~' there", "data.root=$HOME/images"]),
        ("pooling.levels=[1,2", ["no viable alternative at input '[1,2'", "close brackets and quotes"]),
    ],
)
def test_an_override_hydra_cannot_read_is_one_line(tmp_path: Path, arg: str, fragments: list[str]) -> None:
    """Hydra's answer is a lexer's name, a caret under the argument and a traceback hint."""
    result = run_cli([arg], cwd=tmp_path)
    assert_one_line_error(result, f"cannot read the override {arg!r}", *fragments)
    assert result.returncode == 2 and "Exception" not in result.stderr and not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["pooling="], ["pooling= has no value", "choose one of: avg,"]),
        (["pooling=avg,max"], ["pooling=avg,max is a sweep", "runs once", "hint: add -m to sweep)"]),
        (["seed=range(3)"], ["seed=range(3) is a sweep", "hint: add -m to sweep)"]),
        (["data.name=a,b"], ["data.name=a,b is a sweep", "a list is data.name=[a,b]", "'data.name=\"a,b\"'"]),
        (["~pooling"], ["model.net.pooling reads 'pooling', which this config does not have", "with ~"]),
    ],
)
def test_a_sweep_without_m_or_a_missing_group_is_one_line(tmp_path: Path, args: list[str], fragments) -> None:
    """Hydra's answers: "Could not find 'pooling/'" with the search path, "Ambiguous value for
    argument" with a traceback hint, an interpolation traceback from deep in the run."""
    result = run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert_one_line_error(result, *fragments)
    assert result.returncode == 2, result.stderr[-2000:]


def test_a_sweep_in_a_command_that_sweeps_is_no_error(tmp_path: Path) -> None:
    """``-m``, or a config that sets ``hydra.mode: MULTIRUN`` (the Optuna search), is a sweep's command."""
    from resflex.config import check_sweep_has_multirun

    check_sweep_has_multirun(["-m", "pooling=avg,max"], "train")
    check_sweep_has_multirun(["hparams_search=optuna", "seed=1,2"], "train")
    check_sweep_has_multirun(["pooling=avg", "optimizer.lr=0.1"], "train")
    with pytest.raises(ConfigError, match="is a sweep"):
        check_sweep_has_multirun(["pooling=avg", "seed=1,2"], "train")


def test_overrides_hydra_reads_pass_the_syntax_check() -> None:
    from resflex.config import check_override_syntax

    check_override_syntax(
        [
            "-m",
            "--cfg",
            "job",
            "pooling=avg,max",
            "optimizer.lr=interval(0.0005,0.005)",
            "~logger",
            "+optimizer.betas=[0.9,0.95]",
            "data.root=/data/a b",  # one shell word with a space: Hydra takes it as typed
            'data.root="~/images"',
            "hydra.run.dir=logs/${now:%H}",
        ]
    )


def test_keys_that_exist_or_are_new_on_purpose_pass_the_key_check() -> None:
    from resflex.config import check_override_keys

    check_override_keys(["model.net.num_classes=5"], "train")  # ??? in the config: filled in later
    check_override_keys(["+optimizer.betas=[0.9,0.95]"], "train")  # extra arguments, near no key
    check_override_keys(["experiment=small_data_finetune", "model.ema_decay=0.99"], "train")
    check_override_keys(["data=imagefolder", "data.source.val_fraction=0.2", "hydra.run.dir=x"], "train")
    check_override_keys(["--config-name", "other", "anything.at.all=1"], "train")  # another config


@pytest.mark.parametrize(
    "arg", ["backbone.pretrained=maybe", "eval.bn_calibration=no", "model.ema=1", "test_after_fit=yes"]
)
def test_a_switch_given_neither_true_nor_false_is_refused(arg: str) -> None:
    """Python reads a non-empty string as true: eval.bn_calibration=no would have turned it on."""
    from resflex.config import check_override_keys

    key = arg.partition("=")[0]
    with pytest.raises(ConfigError) as info:
        check_override_keys([arg], "train")
    assert info.value.one_line() == (
        f"{arg} is invalid: expected true or false (hint: {key}=true or {key}=false)"
    )


def test_switches_take_true_false_null_a_sweep_and_lightnings_other_values() -> None:
    from resflex.config import check_override_keys

    check_override_keys(["model.ema=True", "eval.bn_calibration=false", "trainer.benchmark=null"], "train")
    check_override_keys(["-m", "model.ema=true,false", "data.augment.hflip=false"], "train")
    # Lightning's own non-boolean values of keys that default to a boolean
    check_override_keys(["trainer.fast_dev_run=5", "trainer.deterministic=warn"], "train")
    check_override_keys(["callbacks.model_checkpoint.save_last=link"], "train")


def test_a_mistyped_top_level_key_gets_the_nearest_top_level_key() -> None:
    from resflex.config import check_override_keys

    with pytest.raises(ConfigError, match="unknown config key seeed") as info:
        check_override_keys(["seeed=1"], "train")
    assert "did you mean seed?" in info.value.one_line()


def test_unknown_pooling_is_one_line_with_choices(tmp_path: Path) -> None:
    result = run_cli(["pooling=median"], cwd=tmp_path)
    assert_one_line_error(result, "unknown pooling 'median'", "avg", "pyramid")


def test_bad_data_root_is_one_line(tmp_path: Path) -> None:
    """In process, the same one-line errors as the command line's ``data.root is not set`` (above)."""
    (tmp_path / "empty").mkdir()
    for root, expected in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "empty", "is empty")):
        cfg = compose_train(["data=imagefolder", f"data.root={root}", *TINY], tmp_path / "in_process")
        with pytest.raises(DataError) as info:
            build_datamodule(cfg)
        assert expected in info.value.one_line() and "\n" not in info.value.one_line()


def test_full_error_shows_the_traceback(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import TRAIN_SCRIPT

    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "backbone.name=resnet19", f"hydra.run.dir={tmp_path / 'r'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_ctrl_c_in_a_stateless_command_is_one_line_and_exit_130(capsys: pytest.CaptureFixture[str]) -> None:
    from resflex.errors import interruption_as_one_line

    with pytest.raises(SystemExit) as exit_info, interruption_as_one_line("no predictions written"):
        raise KeyboardInterrupt
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "interrupted: no predictions written\n"


@pytest.mark.parametrize("script", ["train.py", "eval.py", "predict.py", "export.py"])
def test_ctrl_c_while_a_script_starts_is_a_quiet_exit(script: str, tmp_path: Path) -> None:
    """Importing torch takes seconds: a Ctrl-C then exits with 130 and no traceback."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    process = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / script), "--help"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    maps = Path(f"/proc/{process.pid}/maps")
    if not maps.parent.is_dir():
        process.kill()
        pytest.skip("needs /proc to see when the imports have begun")
    deadline = time.monotonic() + 60
    while "libtorch" not in maps.read_text() and time.monotonic() < deadline:  # inside `import torch`
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]


def test_help_lists_this_commands_groups_with_its_choices(tmp_path: Path) -> None:
    """--help as typed: the groups with their options, this command's choice starred; not Hydra's
    list of every folder (the internal _shared, the trainer's lightning schema)."""
    result = run_cli(["pooling=avg", "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("resflex: python ")  # the script as typed (run_cli: its full path)
    assert lines[0].endswith("scripts/train.py [group=option ...] [key=value ...]")
    # an experiment preset renames task_name (its runs' folder); the help named scripts/<preset>.py
    preset = run_cli(["experiment=multiscale_pyramid", "--help"], cwd=tmp_path).stdout.splitlines()[0]
    assert preset == lines[0]
    groups = lines[
        lines.index("== Config groups (* this command's choice) ==") + 1 : lines.index("== Config ==") - 1
    ]
    assert [line.split()[0] for line in groups] == sorted(GROUPS)
    assert "pooling         avg*, avgmax, gem, max, pyramid" in groups
    assert (
        "backbone        convnext_atto, efficientnet_b0, naflexvit, resnet18*, resnet50, vit_small_patch16"
        in groups
    )
    assert not any(word in result.stdout for word in ("_shared", "lightning*", "$CONFIG", "${resflex"))
    assert "pooling:\n  _target_: resflex.models.pooling.AvgPool" in result.stdout  # the composed config


def test_the_help_of_a_command_without_some_groups_lists_only_its_own(tmp_path: Path) -> None:
    from resflex.config import config_groups_help

    compose_config("eval", ["ckpt_path=x"], tmp_path)  # sets HydraConfig as @hydra.main does
    assert config_groups_help().splitlines() == [
        "data   fashion_mnist, imagefolder, synthetic",
        "paths  default*",
    ]


def test_a_run_folder_that_cannot_be_made_is_one_line_before_hydra_makes_it(tmp_path: Path) -> None:
    """Hydra makes the run folder before the task starts: a file in the way (or a read-only disk)
    was its traceback."""
    file = tmp_path / "file"
    file.write_text("in the way")
    result = run_cli([f"hydra.run.dir={file / 'run'}"], cwd=tmp_path)
    assert_one_line_error(
        result,
        f"cannot create the run folder {file / 'run'}: {file}: a file, not a folder",
        "hint: hydra.run.dir=<a writable folder>, or paths.log_dir=<a writable folder>",
    )
    assert result.returncode == 2


def test_the_run_folder_check_names_the_sweep_folder_and_leaves_nothing_behind(tmp_path: Path) -> None:
    from resflex.config import check_output_folder

    (tmp_path / "file").write_text("in the way")
    with pytest.raises(
        ConfigError, match=r"cannot create the sweep folder .*hint: hydra.sweep.dir=<a writable"
    ):
        check_output_folder(["-m", "pooling=avg,max", f"paths.log_dir={tmp_path / 'file'}"], "train")
    with pytest.raises(ConfigError, match=r"cannot create the run folder .*/file/eval/runs/"):
        check_output_folder([f"paths.log_dir={tmp_path / 'file'}", "ckpt_path=x"], "eval")
    check_output_folder([f"paths.log_dir={tmp_path / 'file'}", "--cfg", "job"], "train")  # prints only
    check_output_folder([f"hydra.run.dir={tmp_path / 'a' / 'b'}"], "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe made nothing that stays


def test_predict_and_export_without_ckpt_path_are_one_line(tmp_path: Path) -> None:
    """Both read ``ckpt_path: ???`` as an attribute: omegaconf's MissingMandatoryValue traceback (eval.py
    already said "ckpt_path is not set")."""
    from resflex.export import run_export
    from resflex.predict import predict

    image = tmp_path / "a.png"
    image.write_bytes(b"")
    for name, task, args in (("predict", predict, [f"input={image}"]), ("export", run_export, [])):
        cfg = compose_config(name, args, tmp_path / name)
        with pytest.raises(ConfigError, match="ckpt_path is not set") as info:
            task(cfg)
        assert "pass ckpt_path=" in info.value.one_line()


def test_a_group_the_command_does_not_have_is_one_line() -> None:
    """``eval.py pooling=avg``: Hydra's "Could not override 'pooling'. No match in the defaults list",
    with a hint to append it (+pooling=avg) that adds a node nothing reads."""
    from resflex.config import check_groups_of_command

    with pytest.raises(ConfigError, match=r"eval.py has no pooling group \(pooling=...\)") as info:
        check_groups_of_command(["ckpt_path=x", "pooling=avg"], "eval")
    assert "data" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="predict.py has no data group"):
        check_groups_of_command(["ckpt_path=x", "data=imagefolder"], "predict")
    check_groups_of_command(["ckpt_path=x", "data=imagefolder"], "eval")  # eval takes other data
    check_groups_of_command(["pooling=avg"], "train")
