"""Sweeps as a user runs them: a failing job is recorded and the others finish; job folders named
by what differs; HPARAMS entries with final metrics; the Optuna search config."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig

from resflex.errors import ConfigError
from resflex.summarize import summarize
from resflex.sweeps import (
    MAX_NAME,
    current_sweep_text_keys,
    current_swept_keys,
    job_dir_name,
    job_folder,
    sweep_dir,
    swept_keys,
    swept_text_keys,
)
from resflex.train import check_finite
from tests.conftest import TINY, run_cli, scalar_tags

TINY_SWEEP = (
    *(o for o in TINY if not o.startswith("backbone.name")),
    "data.source.num_train=64",
    "data.source.num_val=32",
    "data.source.num_test=0",
)


def hparams_plugin_data(run_dir: Path) -> dict[str, object]:
    """What TensorBoard's HPARAMS plugin reads from one run: session start info and the tags present."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    tags: set[str] = set()
    hparams: dict[str, object] = {}
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        try:
            content = acc.PluginTagToContent("hparams")
        except KeyError:  # no hparams summaries in this file
            continue
        tags |= set(content)
        if "_hparams_/session_start_info" in content:
            data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
            for key, value in data.session_start_info.hparams.items():
                kind = value.WhichOneof("kind")
                hparams[key] = getattr(value, kind)
    return {"tags": tags, "hparams": hparams}


def test_job_dir_names() -> None:
    assert job_dir_name("backbone=resnet18,pooling=avg", 0) == "backbone=resnet18,pooling=avg"
    assert job_dir_name("", 3) == "job3"  # a one-job sweep with no overrides gets its own folder
    assert job_dir_name(None, 0) == "job0"
    assert (
        job_dir_name("backbone.name=hf-hub:timm/resnet18,note=a b", 1)
        == "backbone.name=hf-hub:timm_resnet18,note=a_b"
    )
    long_a, long_b = ("x=" + "a" * 400 + s for s in ("1", "2"))
    assert len(job_dir_name(long_a).encode()) <= MAX_NAME
    assert job_dir_name(long_a) != job_dir_name(long_b)


def test_sweep_subdir_config_uses_the_resolver(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from resflex.config import CONFIG_DIR
    from tests.test_configs import compose_train

    cfg = compose_train(["pooling=max", "data.root=/x/y"], tmp_path)
    assert cfg.hydra.job.override_dirname == "pooling=max"  # data.root is excluded
    subdir = yaml.safe_load((CONFIG_DIR / "hydra" / "default.yaml").read_text())["sweep"]["subdir"]
    for dirname, num, expected in (("pooling=max", 1, "pooling=max"), ("", 5, "job5"), ("a=x/y", 0, "a=x_y")):
        job = OmegaConf.create(
            {"hydra": {"job": {"override_dirname": dirname, "num": num}}, "subdir": subdir}
        )
        assert job.subdir == expected


def test_swept_keys_are_what_differs() -> None:
    argv = [
        "-m",
        "backbone=a,b",
        "pooling=avg",
        "optimizer.lr=range(1,3)",
        "+x=choice(1,2)",
        "hydra/launcher=basic",
    ]
    assert swept_keys(argv) == {"backbone", "optimizer.lr", "x"}
    assert swept_keys(["trainer.max_epochs=3"], ["pooling", "optimizer.lr"]) == {"pooling", "optimizer.lr"}


def test_job_dir_names_stay_inside_the_sweep_folder_and_within_the_limit() -> None:
    """A name of dots would be the sweep folder or its parent; a backslash is a separator on Windows; a
    name of exactly the limit is kept whole; a cut through a multi-byte character still gives a name."""
    assert job_dir_name("..", 4) == "job4"
    assert job_dir_name("a=x\\y", 0) == "a=x_y"
    exact = "x=" + "a" * (MAX_NAME - 2)
    assert job_dir_name(exact) == exact
    accented = job_dir_name("x=" + "\u00e9" * 200)  # 2 bytes each: the cut falls inside one
    assert len(accented.encode()) <= MAX_NAME and accented.startswith("x=\u00e9\u00e9")
    assert accented[-9] == "-" and int(accented[-8:], 16) >= 0  # the hash that keeps cut names distinct


def test_a_value_fixed_on_the_command_line_pins_a_searched_parameter() -> None:
    """``hparams_search=optuna pooling=avg``: Optuna no longer varies pooling, so it is not swept."""
    assert swept_keys(["pooling=avg"], ["pooling", "optimizer.lr"]) == {"optimizer.lr"}


def test_swept_text_keys_are_the_sweeps_that_are_not_all_numbers() -> None:
    """Floats and ints are numbers (a numeric HPARAMS column); true/false and words are text."""
    argv = ["optimizer.lr=0.1,0.01", "seed=1,2", "flag=true,false", "pooling=avg,max", "trainer.max_epochs=3"]
    assert swept_text_keys(argv) == {"flag", "pooling"}


@pytest.fixture
def hydra_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., DictConfig]]:
    """Make a composed job the running Hydra job, with the process's ``sys.argv``, as a launcher does;
    the Hydra config that was there before is put back afterwards."""
    from hydra.core.hydra_config import HydraConfig

    from tests.test_configs import compose_train

    saved = HydraConfig.instance().cfg

    def start(overrides: list[str], argv: list[str], multirun: bool = True) -> DictConfig:
        monkeypatch.setattr(sys, "argv", ["train.py", *argv])
        mode = ["hydra.mode=MULTIRUN"] if multirun else []
        return compose_train([*overrides, *mode, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path / "out")

    yield start
    HydraConfig.instance().cfg = saved


def test_job_folder_names_the_swept_keys_in_hydras_order_and_keeps_duplicates_apart(
    hydra_job: Callable[..., DictConfig], tmp_path: Path
) -> None:
    """The folder lists what the sweep varies (a ``+`` key too), sorted as Hydra sorts, without the
    overrides every job shares or an excluded key; a second job drawing the same values gets its own
    folder, while the same job (another rank, a requeue) lands in its own."""
    argv = ["-m", "pooling=avg,max", "+x=choice(1,2)", "trainer.max_epochs=2", "data.root=/a,/b"]
    cfg = hydra_job(["pooling=max", "+x=2", "trainer.max_epochs=2", "data.root=/b"], argv)
    dirname = cfg.hydra.job.override_dirname
    assert dirname == "+x=2,pooling=max,trainer.max_epochs=2"
    assert job_folder(dirname, 1) == "+x=2,pooling=max"
    folder = tmp_path / "sweep" / "+x=2,pooling=max"
    (folder / ".hydra").mkdir(parents=True)  # job 1's rank 0 is writing it
    assert job_folder(dirname, 1) == "+x=2,pooling=max"
    (folder / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    num: 1\n")
    assert job_folder(dirname, 1) == "+x=2,pooling=max"
    assert job_folder(dirname, 2) == "+x=2,pooling=max-job2"


def test_a_one_job_sweep_is_job0_not_every_override_cut_to_a_hash(
    hydra_job: Callable[..., DictConfig],
) -> None:
    """``-m pooling=avg trainer.max_epochs=2`` varies nothing: its folder was every override, cut to
    160 bytes and a hash (found by a sweep audit); the docs say ``job<N>``."""
    argv = ["-m", "pooling=avg", "trainer.max_epochs=2", "data.source.num_train=64"]
    cfg = hydra_job(argv[1:], argv)
    assert cfg.hydra.job.override_dirname.startswith("data.source.num_train=64,pooling=avg")
    assert job_folder(cfg.hydra.job.override_dirname, 0) == "job0"


def test_an_optuna_jobs_folder_names_the_searched_parameters_it_drew(
    hydra_job: Callable[..., DictConfig],
) -> None:
    """The searched parameters come from ``hydra.sweeper.params``, not the command line; one the
    command line fixes (``pooling=avg``) is left out of the name."""
    argv = ["hparams_search=optuna", "pooling=avg", "trainer.max_epochs=2"]
    drawn = ["optimizer.lr=0.001", "optimizer.weight_decay=0.01", "resolution.size=32"]
    cfg = hydra_job([*argv, *drawn], argv)
    assert job_folder(cfg.hydra.job.override_dirname, 0) == ",".join(drawn)
    assert current_swept_keys() == {"optimizer.lr", "optimizer.weight_decay", "resolution.size"}


def test_an_optuna_trial_that_sees_only_its_own_overrides_still_knows_what_the_search_varies(
    hydra_job: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Optuna sweep writes no multirun.yaml and its trials see ``sys.argv`` as their own overrides,
    every searched key pinned: HPARAMS marked every command-line key as differing (found by a sweep
    audit). The command line the entry point received is kept for them."""
    import resflex.sweeps as sweeps

    drawn = ["optimizer.lr=0.001", "optimizer.weight_decay=0.01", "pooling=avg", "resolution.size=32"]
    hydra_job(["hparams_search=optuna", *drawn, "trainer.max_epochs=2"], [*drawn, "trainer.max_epochs=2"])
    monkeypatch.setattr(sweeps, "_LAUNCH_ARGV", None)
    assert current_swept_keys() is None  # the trial's own argv pins everything: what the audit saw
    sweeps.remember_launch_argv(["-m", "hparams_search=optuna", "trainer.max_epochs=2"])
    assert current_swept_keys() == {"optimizer.lr", "optimizer.weight_decay", "pooling", "resolution.size"}


def test_a_jobs_swept_keys_come_from_the_sweeps_saved_command_line(
    hydra_job: Callable[..., DictConfig], tmp_path: Path
) -> None:
    """A DDP rank (or another launcher's process) sees only its job's overrides in ``sys.argv``: what the
    sweep varies is read from ``<sweep>/multirun.yaml``. A single run is no sweep."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    task = ["pooling=avg,max", "data.augment.color_jitter=null,0.4", "seed=1,2", "trainer.max_epochs=2"]
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    job = ["pooling=max", "data.augment.color_jitter=0.4", "seed=2", "trainer.max_epochs=2"]
    hydra_job(job, job)
    assert sweep_dir() == sweep
    assert current_swept_keys() == {"pooling", "data.augment.color_jitter", "seed"}
    assert current_sweep_text_keys() == {"pooling", "data.augment.color_jitter"}
    hydra_job(job, job, multirun=False)
    assert sweep_dir() is None and current_swept_keys() is None and current_sweep_text_keys() == set()


def test_check_finite_names_the_diverged_metric() -> None:
    check_finite({"train/loss": 0.3, "val/loss": 1.0})
    with pytest.raises(ConfigError, match=r"val/loss is nan.*optimizer.lr"):
        check_finite({"train/loss": 0.3, "val/loss": math.nan})


def test_multirun_survives_a_failing_job_and_summary_lists_it(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", "backbone.name=test_resnet,not_a_model", *TINY_SWEEP, f"hydra.sweep.dir={sweep}"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]  # exit code = number of failed jobs
    assert "1 job(s) failed: backbone.name=not_a_model" in result.stderr
    good, bad = sweep / "backbone.name=test_resnet", sweep / "backbone.name=not_a_model"
    good_record = json.loads((good / "metrics.json").read_text())
    bad_record = json.loads((bad / "metrics.json").read_text())
    assert good_record["status"] == "completed"
    metrics = good_record["metrics"]
    assert metrics["train/images_per_sec"] > 0 and good_record["wall_time_s"] > 0
    # one epoch: the best checkpoint's score is the run's only validation, over 16 images (2 batches of 8)
    assert good_record["best"]["val/acc"] == pytest.approx(metrics["val/acc"], abs=1e-6)
    assert metrics["val/acc"] * 16 == pytest.approx(round(metrics["val/acc"] * 16))
    assert Path(good_record["best"]["checkpoint"]).parent == good / "checkpoints"
    assert bad_record["status"] == "failed" and "not_a_model" in bad_record["error"]
    assert "\n" not in bad_record["error"]

    # HPARAMS: session info with the hyperparameters; the metric columns read the last value of the real tags
    data = hparams_plugin_data(good)
    assert "_hparams_/session_start_info" in data["tags"] and "_hparams_/experiment" in data["tags"]
    assert data["hparams"]["backbone.name"] == "test_resnet" and data["hparams"]["pooling"] == "pyramid"
    last = scalar_tags(good)["val/acc"]
    assert last[-1][1] == pytest.approx(good_record["metrics"]["val/acc"], abs=1e-6)

    text = summarize(sweep)
    assert "2 job(s), 1 completed, 1 failed" in text
    rows = [line for line in text.splitlines() if line.startswith("backbone.name=")]
    assert rows[0].startswith("backbone.name=test_resnet") and "completed" in rows[0]
    assert (
        rows[1].startswith("backbone.name=not_a_model") and "failed" in rows[1] and "not_a_model" in rows[1]
    )


def test_optuna_config_composes(tmp_path: Path) -> None:
    from tests.test_configs import compose_train

    cfg = compose_train(["hparams_search=optuna"], tmp_path)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.storage is None and sweeper.max_failure_rate == 1.0
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "pooling", "resolution.size"}
    assert cfg.hydra.mode.name == "MULTIRUN"


def test_an_optuna_search_in_which_no_trial_completes_ends_in_one_line_per_trial(tmp_path: Path) -> None:
    """Optuna's sweeper asks for the best trial after the last one; with none completed, Optuna's
    ``ValueError: No trials are completed yet`` was Hydra's 20-line traceback after the trials' own
    ``error:`` lines (src/hydra_plugins/resflex_optuna_sweeper)."""
    sweep = tmp_path / "optuna"
    root = tmp_path / "none"
    args = ["hparams_search=optuna", "hydra.sweeper.n_trials=2", "data=imagefolder", f"data.root={root}"]
    result = run_cli([*args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    printed = result.stdout + result.stderr
    assert "Traceback" not in printed and "No trials are completed" not in printed, printed[-3000:]
    assert result.returncode == 2, printed[-3000:]  # the failed trials' count
    assert "no trial completed: the search has no best parameters" in printed
    assert "float-castable" not in printed  # the sweeper's word on a failed trial's missing value
    assert result.stderr.count("data.root does not exist") == 2 and "2 job(s) failed" in result.stderr
    assert not (sweep / "optimization_results.yaml").exists()


@pytest.mark.slow
def test_optuna_survives_failed_trials(tmp_path: Path) -> None:
    sweep = tmp_path / "optuna"
    # resolution.size=-1 fails (ConfigError); the seeded TPE start-up trials draw both values
    args = [
        "-m",  # Hydra asks for it when a sweep range is given on the command line
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "optimizer.lr=0.002",
        "optimizer.weight_decay=0.01",
        "pooling=avg",
        "resolution.size=choice(-1,32)",
        *(o for o in TINY_SWEEP if not o.startswith("resolution.size")),
        "backbone.name=test_resnet",
        f"hydra.sweep.dir={sweep}",
    ]
    result = run_cli(args, cwd=tmp_path)
    records = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert len(records) == 3, result.stderr[-3000:]
    failed = [r for r in records if r["status"] == "failed"]
    done = [r for r in records if r["status"] == "completed"]
    assert failed and done, "the seeded sampler should draw both sizes"  # pinned optuna 2.10.1
    assert all("resolution.size=-1" in r["overrides"] and "resolution.size" in r["error"] for r in failed)
    assert all("resolution.size=32" in r["overrides"] for r in done)
    assert result.returncode == len(failed)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"]["resolution.size"] == 32
    assert best["best_value"] == pytest.approx(max(r["metrics"]["val/acc"] for r in done))
    # the folders are named by the swept keys only (the fixed overrides are in metrics.json)
    # jobs only: .data_profiles/ is the sweep's once-per-sweep figure marker (training/profile_view.py)
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(names) == 3 and all(n.startswith(("resolution.size=-1", "resolution.size=32")) for n in names)
    assert any("-job" in n for n in names)  # a value drawn twice gets its own folder


@pytest.mark.slow
def test_optuna_tpe_search_runs_two_trials(tmp_path: Path) -> None:
    sweep = tmp_path / "tpe"
    tiny = [o for o in TINY_SWEEP if not o.startswith("resolution.size")]  # searched, not fixed
    args = ["hparams_search=optuna", "hydra.sweeper.n_trials=2", *tiny, "backbone.name=test_resnet"]
    result = run_cli([*args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # optuna's storage layer announced each of its plugins at INFO before the first trial
    assert "alembic" not in result.stdout + result.stderr
    records = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert [r["status"] for r in records] == ["completed", "completed"]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(r["metrics"]["val/acc"] for r in records))
    assert set(best["best_params"]) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "pooling",
        "resolution.size",
    }


@pytest.mark.slow
def test_diverged_run_is_recorded_as_failed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["optimizer.lr=1e30", "scheduler.warmup_epochs=0", *TINY_SWEEP, "backbone.name=test_resnet"]
    result = run_cli([*args, f"hydra.run.dir={run}"], cwd=tmp_path)
    # the NaN guard stops the run at the first bad step, before a bad checkpoint is written
    assert result.returncode == 2 and "training loss became NaN/inf at step" in result.stderr
    text = (run / "metrics.json").read_text()
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}: not JSON"))
    assert record["status"] == "failed" and "NaN/inf" in record["error"]
