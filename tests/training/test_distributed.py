"""Scale-out: the sampler's DDP contract, trainer presets, DDP in sweeps, the SLURM launcher config."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict, read_write

import resflex.build
from resflex.config import CONFIG_DIR
from resflex.data.buckets import assign_buckets, image_sizes
from resflex.data.datamodule import ResflexDataModule
from resflex.data.datasets import SyntheticSource
from resflex.data.resolution import (
    FixedResolution,
    MultigridResolution,
    MultiScaleResolution,
    RandomResolution,
)
from resflex.data.sampler import ResolutionBatchSampler, batch_padding
from resflex.errors import ConfigError
from resflex.sweeps import _same_job
from resflex.training.distributed import (
    _planned_indices,
    check_rank_logs,
    check_shared_run_dir,
    child_rank_grace,
    ddp_job_scope,
    finish_child_ranks,
    is_lightning_child_rank,
)
from tests.conftest import load_script, make_image_folder, run_cli, scalar_tags

WORLD = 4


def _rank_plans(num_samples: int, batch_size: int, schedule, epoch: int, **kwargs) -> list[list]:
    plans = []
    for rank in range(WORLD):
        sampler = ResolutionBatchSampler(
            num_samples, batch_size, schedule, rank=rank, world_size=WORLD, **kwargs
        )
        sampler.set_epoch(epoch)
        plans.append([(b.size, list(b.indices)) for b in sampler.plan()])
    return plans


def _check_agreement_and_coverage(plans: list[list], num_samples: int, max_padding: int) -> Counter:
    shapes = [[(size, len(indices)) for size, indices in plan] for plan in plans]
    assert all(s == shapes[0] for s in shapes), "ranks disagree on the size or batch size of a step"
    seen = Counter(i for plan in plans for _, indices in plan for i in indices)
    assert set(seen) == set(range(num_samples)), "a sample was never seen in the epoch"
    assert sum(seen.values()) - num_samples <= max_padding
    # the repeats are padding only: no rank sees a sample twice
    for plan in plans:
        own = [i for _, indices in plan for i in indices]
        assert len(own) == len(set(own))
    return seen


@pytest.mark.parametrize(
    "schedule",
    [
        FixedResolution(48),
        RandomResolution(sizes=[32, 48, 64], seed=7),
        RandomResolution(sizes=[32, 64], batch_scaling=True, seed=7),
        MultigridResolution(size=64).bind(3),
        MultiScaleResolution(size=48, seed=7),
        MultiScaleResolution(size=48, batch_scaling=True, seed=7),
    ],
    ids=["fixed", "random", "random+batch_scaling", "multigrid", "multiscale", "multiscale+batch_scaling"],
)
def test_four_ranks_split_an_epoch_disjointly_with_the_same_size_per_step(schedule) -> None:
    """Padding rule (square): like DistributedSampler, the shuffled order is padded with its own first
    samples up to a multiple of the world size, so at most world_size - 1 samples repeat."""
    for epoch in range(3):
        plans = _rank_plans(101, 4, schedule, epoch, seed=3, drop_last=False)
        seen = _check_agreement_and_coverage(plans, 101, max_padding=WORLD - 1)
        assert sum(seen.values()) == 104  # 101 padded to 4 * 26
        sizes = [size for size, _ in plans[0]]
        assert sizes == [schedule.size_at(epoch, t) for t in range(len(sizes))]
    if isinstance(schedule, RandomResolution) and not schedule.batch_scaling:
        assert len({size for size, _ in _rank_plans(101, 4, schedule, 0, seed=3)[0]}) > 1


def test_training_layout_drops_the_same_partial_step_on_every_rank() -> None:
    """drop_last (the data module's choice for training when every rank has a full batch): the last
    partial step is dropped on all ranks alike; the dropped samples change from epoch to epoch."""
    schedule = RandomResolution(sizes=[32, 48], seed=1)
    dropped = []
    for epoch in range(2):
        plans = _rank_plans(103, 8, schedule, epoch, seed=0, drop_last=True)
        shapes = [[(size, len(indices)) for size, indices in plan] for plan in plans]
        assert all(s == shapes[0] for s in shapes) and all(n == 8 for _, n in shapes[0])
        seen = Counter(i for plan in plans for _, indices in plan for i in indices)
        assert max(seen.values()) == 1 and len(seen) == 3 * 8 * WORLD  # 26 per rank -> 3 full steps
        dropped.append(set(range(103)) - set(seen))
    assert dropped[0] != dropped[1]


def test_keep_aspect_buckets_under_four_ranks_share_shapes_and_cover_every_sample() -> None:
    """Padding rule (keep_aspect): each step takes batch_size * world_size samples of one bucket and
    deals them out; a bucket's last, smaller chunk is padded by repeating its own samples."""
    source = SyntheticSource(150, 8, 0, min_side=16, max_side=96)
    aspects = (0.5, 1.0, 2.0)
    buckets = assign_buckets(image_sizes(source.splits["train"]), aspects)
    assert len(set(buckets)) == 3
    schedule = RandomResolution(sizes=[32, 48], geometry="keep_aspect", aspect_ratios=list(aspects), seed=4)
    for epoch in range(2):
        plans = _rank_plans(150, 4, schedule, epoch, seed=2, buckets=buckets)
        _check_agreement_and_coverage(plans, 150, max_padding=(WORLD - 1) * len(aspects))
        assert any(h != w for h, w in {size for size, _ in plans[0]})
        for plan in plans:  # one bucket per batch, on every rank
            assert all(len({buckets[i] for i in indices}) == 1 for _, indices in plan)


def _valid_and_padding(plan) -> tuple[list[int], list[int]]:
    """A rank's plan split into the samples it counts and its padding repeats (each batch's last)."""
    valid = [i for b in plan for i in b.indices[: len(b.indices) - b.padding]]
    repeats = [i for b in plan for i in b.indices[len(b.indices) - b.padding :]]
    return valid, repeats


@pytest.mark.parametrize("geometry", ["square", "keep_aspect"])
# 103: padding on a few ranks; 3 < 4 ranks: a rank of repeats alone
@pytest.mark.parametrize("num_samples", [103, 3])
def test_the_samples_each_rank_counts_cover_the_data_exactly_once(geometry: str, num_samples: int) -> None:
    """What evaluation counts (every batch's entries before its ``padding`` repeats), over all ranks, is
    the dataset exactly once; the repeats are samples some rank already counts; a single process pads
    nothing. With keep_aspect the repeats are per bucket chunk, so more than world_size - 1 of them."""
    source = SyntheticSource(num_samples, 1, 0, min_side=16, max_side=96, seed=1)
    aspects = (0.5, 1.0, 2.0)
    keep_aspect = geometry == "keep_aspect"
    buckets = assign_buckets(image_sizes(source.splits["train"]), aspects) if keep_aspect else None
    schedule = FixedResolution(32, geometry=geometry, aspect_ratios=list(aspects))
    for training in (False, True):  # an evaluation loader, and a training one without drop_last
        kwargs = dict(shuffle=training, training=training, drop_last=False, buckets=buckets, seed=2)
        if not training:
            kwargs["fixed_size"] = (32, 32)
        plans = []
        for rank in range(WORLD):
            sampler = ResolutionBatchSampler(num_samples, 4, schedule, rank=rank, world_size=WORLD, **kwargs)
            sampler.set_epoch(1)
            plans.append(sampler.plan())
        counted, repeats = [], []
        for plan in plans:
            valid, padding = _valid_and_padding(plan)
            counted += valid
            repeats += padding
        assert sorted(counted) == list(range(num_samples))
        assert repeats and set(repeats) <= set(counted)
        shapes = [[(b.size, len(b.indices)) for b in plan] for plan in plans]
        assert all(s == shapes[0] for s in shapes)  # the repeats keep every rank's steps equal
        if keep_aspect and num_samples == 103:
            assert len(repeats) == 9  # 3 per bucket (37, 33, 33 images): the bound is per bucket chunk
        single = ResolutionBatchSampler(num_samples, 4, schedule, **kwargs)
        single.set_epoch(1)
        assert all(b.padding == 0 for b in single.plan())


def test_batch_padding_reads_the_plan_of_the_loader_and_refuses_a_batch_it_did_not_plan() -> None:
    schedule = FixedResolution(32)
    plans = {}
    for rank in range(WORLD):
        sampler = ResolutionBatchSampler(
            10, 4, schedule, shuffle=False, rank=rank, world_size=WORLD, fixed_size=(32, 32)
        )
        loader = SimpleNamespace(batch_sampler=sampler)
        plans[rank] = [batch_padding(loader, k, len(b.indices)) for k, b in enumerate(sampler.plan())]
    assert plans == {0: [0], 1: [0], 2: [1], 3: [1]}  # 10 samples on 4 ranks of 3: two repeats
    with pytest.raises(RuntimeError, match="plan"):
        batch_padding(loader, 0, 2)
    assert batch_padding(SimpleNamespace(batch_sampler=None), 0, 5) == 0  # a plain loader: nothing known


def test_bn_calibration_reads_the_whole_training_split_on_any_rank() -> None:
    """Calibration runs on rank 0 alone: its loader is not sharded, so it reads what one process reads."""
    source = SyntheticSource(90, 16, 0)
    dm = ResflexDataModule(source, FixedResolution(32, geometry="square"), batch_size=4, num_workers=0)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=WORLD, overfit_batches=0, callbacks=[])
    sampler = dm.calibration_loader((24, 24)).batch_sampler
    assert (sampler.rank, sampler.world_size) == (0, 1)
    assert sorted(i for b in sampler.plan() for i in b.indices) == list(range(90))
    assert dm.val_dataloader().batch_sampler.world_size == WORLD


def test_the_data_module_shards_by_the_trainers_rank_and_world_size() -> None:
    source = SyntheticSource(90, 16, 0)
    plans = []
    for rank in range(WORLD):
        dm = ResflexDataModule(
            source, RandomResolution(sizes=[32, 48], seed=0, geometry="square"), batch_size=4, num_workers=0
        )
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=WORLD, overfit_batches=0, callbacks=[])
        sampler = dm.train_dataloader().batch_sampler
        assert (sampler.rank, sampler.world_size) == (rank, WORLD)
        plans.append([(b.size, list(b.indices)) for b in sampler.plan(0)])
        val = dm.val_dataloader().batch_sampler
        assert (val.rank, val.world_size, val.drop_last) == (rank, WORLD, False)
    shapes = [[(s, len(i)) for s, i in p] for p in plans]
    assert all(s == shapes[0] for s in shapes)
    seen = Counter(i for p in plans for _, indices in p for i in indices)
    assert max(seen.values()) == 1 and len(seen) == 5 * 4 * WORLD  # 23 per rank, drop_last: 5 steps of 4


# ---- per-rank logs ---------------------------------------------------------------------------
def _write_rank_log(run: Path, rank: int, steps: list[tuple[list[int], list[int]]], checksum: float) -> None:
    lines = [{"epoch": 0, "step": t, "size": size, "indices": idx} for t, (size, idx) in enumerate(steps)]
    lines.append({"epoch": 0, "event": "epoch_end", "steps": len(steps), "param_checksum": checksum})
    (run / "ranks").mkdir(parents=True, exist_ok=True)
    (run / "ranks" / f"rank{rank}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_rank_log_check_flags_disagreeing_sizes_and_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good"
    _write_rank_log(good, 0, [([32, 32], [0, 1]), ([48, 48], [4, 5])], 1.5)
    _write_rank_log(good, 1, [([32, 32], [2, 3]), ([48, 48], [6, 0])], 1.5)
    epoch = check_rank_logs(good, num_samples=7)["epochs"][0]
    assert epoch["sizes_agree"] and epoch["weights_agree"] and epoch["rank_repeats"] == 0
    assert (epoch["covered"], epoch["padding"], epoch["missing"]) == (7, 1, 0)
    bad = tmp_path / "bad"
    _write_rank_log(bad, 0, [([32, 32], [0, 1]), ([48, 48], [4, 5])], 1.5)
    _write_rank_log(bad, 1, [([48, 48], [2, 3]), ([48, 48], [3, 1])], 1.25)
    epoch = check_rank_logs(bad, num_samples=7)["epochs"][0]
    assert not epoch["sizes_agree"] and not epoch["weights_agree"] and epoch["rank_repeats"] == 1
    assert epoch["missing"] == 1
    check = load_script("check_ddp_run").main  # scripts/check_ddp_run.py: the same report, printed
    assert check([str(good), "--num-samples", "7"]) == 0
    assert "epoch 0: steps/rank {0: 2, 1: 2}, sizes agree: True" in capsys.readouterr().out
    assert check([str(bad), "--num-samples", "7"]) == 1
    assert "weights agree: False" in capsys.readouterr().out
    # nothing to check: one line and exit 2, not a FileNotFoundError's traceback
    (tmp_path / "single").mkdir()
    for folder, cause in (
        (tmp_path / "single", "no per-rank logs in"),
        (tmp_path / "gone", "no such run folder"),
    ):
        assert check([str(folder)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {cause}") and "(hint: " in err[0]


# ---- trainer presets and the LR switch ------------------------------------------------------------
def _compose(overrides: list[str]):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_ddp_sim_builds_a_two_process_gloo_trainer(tmp_path: Path) -> None:
    cfg = _compose(["trainer=ddp_sim", f"hydra.run.dir={tmp_path}"])
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    assert cfg.trainer.use_distributed_sampler is False  # the batch sampler shards by rank itself
    trainer = resflex.build.build_trainer(cfg)
    assert isinstance(trainer.strategy, pl.strategies.DDPStrategy)
    assert trainer.num_devices == 2 and trainer.world_size == 2
    assert trainer.strategy._get_process_group_backend() == "gloo"
    ddp = _compose(["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]).trainer
    assert (ddp.strategy, ddp.accelerator, ddp.devices, ddp.num_nodes) == ("ddp", "gpu", 4, 2)


def test_linear_lr_scaling_multiplies_every_group_by_the_world_size() -> None:
    cfg = _compose(["backbone.name=test_resnet", "optimizer.scale_lr_with_world_size=true"])
    module = resflex.build.build_module(cfg, num_classes=3)
    assert module.optimizer_factory.scale_lr_with_world_size
    lrs = {}
    for world in (1, 4):
        module._trainer = SimpleNamespace(world_size=world, estimated_stepping_batches=10, max_epochs=1)
        optimizer = module.configure_optimizers()["optimizer"]
        lrs[world] = [g["initial_lr"] for g in optimizer.param_groups]
    assert lrs[1][0] == pytest.approx(cfg.optimizer.lr * optimizer.param_groups[0].get("lr_mult", 1.0))
    assert lrs[4] == pytest.approx([4 * lr for lr in lrs[1]])


# ---- DDP inside a Hydra multirun -------------------------------------------------------------------
def test_ddp_job_scope_makes_lightning_relaunch_this_job_into_its_folder(tmp_path: Path, monkeypatch) -> None:
    from lightning_fabric.strategies.launchers.subprocess_script import _hydra_subprocess_cmd

    cfg = _compose(["pooling=max"])
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.cwd = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    job_dir = tmp_path / "sweep" / "pooling=max"
    monkeypatch.setattr(sys, "argv", ["scripts/train.py", "-m", "pooling=avg,max"])
    # as when a user runs scripts/train.py (under `python -m pytest`, Lightning would relaunch `-m pytest`)
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("MASTER_PORT", "12910")
    with ddp_job_scope(job_dir, ["pooling=max"], "train"):
        command, cwd = _hydra_subprocess_cmd(local_rank=1)
        os.environ["LOCAL_RANK"] = "0"  # what Lightning's launcher leaves behind
        os.environ["MASTER_PORT"] = "33333"
    assert "-m" not in command and "pooling=avg,max" not in command
    assert command[-5:-3] == ["--config-name=train", "pooling=max"]
    assert f'hydra.run.dir="{job_dir.resolve()}"' in command and cwd == str(tmp_path)
    assert sys.argv == ["scripts/train.py", "-m", "pooling=avg,max"]
    assert "LOCAL_RANK" not in os.environ and os.environ["MASTER_PORT"] == "12910"
    assert HydraConfig.get().run.dir != str(job_dir.resolve())


def test_after_a_run_rank_0_waits_for_its_ranks_and_stops_lightnings_watcher() -> None:
    import subprocess

    from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    # a watcher that would SIGKILL this process on its next look (here: in an hour)
    observer = _ChildProcessObserver(main_pid=os.getpid(), child_processes=[failed, stuck], sleep_period=3600)
    observer.start()
    finish_child_ranks(timeout_s=1.0)
    assert observer._child_processes == []
    assert failed.returncode == 3 and stuck.returncode is not None  # the stuck rank was killed


def test_a_failing_child_rank_waits_before_exiting_so_rank_0_can_report() -> None:
    import time

    child = ["train.py", "pooling=max", "hydra.job.name=train_ddp_process_1"]
    assert is_lightning_child_rank(child) and not is_lightning_child_rank(child[:2])
    for argv, ok, slow in ((child, False, True), (child[:2], False, False), (child, True, False)):
        start = time.perf_counter()
        with pytest.raises(SystemExit), child_rank_grace(argv, grace_s=0.5):
            raise SystemExit(0 if ok else 2)
        assert (time.perf_counter() - start >= 0.5) == slow


def test_ranks_started_by_torchrun_must_share_an_explicit_run_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    HydraConfig.instance().set_config(_compose([]))
    with pytest.raises(ConfigError, match=r"hydra\.run\.dir"):
        check_shared_run_dir()
    HydraConfig.instance().set_config(_compose([f"hydra.run.dir={tmp_path}"]))
    check_shared_run_dir()
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    HydraConfig.instance().set_config(_compose([]))
    check_shared_run_dir()  # one process: the time-stamped default is fine


def test_a_requeued_job_or_another_rank_keeps_its_job_folder(tmp_path: Path) -> None:
    folder = tmp_path / "pooling=max"
    (folder / ".hydra").mkdir(parents=True)
    assert _same_job(folder, 3)  # rank 0 of the job is still writing .hydra/
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": 3}}}), folder / ".hydra" / "hydra.yaml")
    assert _same_job(folder, 3) and not _same_job(folder, 4)


# ---- SLURM ---------------------------------------------------------------------------------------
def _launch_without_submitting(launcher, cfg, monkeypatch, job_overrides: list[list[str]]) -> dict:
    """Run the plugin's own ``launch`` up to the submission: what it hands submitit, and the executor."""
    import submitit

    captured: dict = {}

    class Capture(submitit.AutoExecutor):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            captured.update(executor=self, init=kwargs)

        def update_parameters(self, **kwargs) -> None:
            captured["params"] = kwargs
            super().update_parameters(**kwargs)

        def map_array(self, fn, *args):  # submitting is where a cluster would be needed
            captured["jobs"] = args
            return []

    monkeypatch.setattr(submitit, "AutoExecutor", Capture)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    assert launcher.launch(job_overrides, initial_job_idx=0) == []
    return captured


@pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema")
def test_submitit_slurm_config_composes_into_an_sbatch_script(tmp_path: Path, monkeypatch) -> None:
    overrides = [
        "hydra/launcher=submitit_slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=90",
        f"hydra.sweep.dir={tmp_path}",
    ]
    cfg = _compose(overrides)
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    folder = f"{tmp_path}/.submitit/%j"
    params = {k: v for k, v in launcher.params.items() if v is not None and k != "name"}
    assert params == {
        "submitit_folder": folder,
        "timeout_min": 90,
        "cpus_per_task": 8,
        "gpus_per_node": 4,  # trainer.devices
        "tasks_per_node": 4,  # one task per GPU: srun starts the ranks, Lightning reads them
        "nodes": 2,  # trainer.num_nodes
        "stderr_to_stdout": False,
        "partition": "gpu",
        "signal_delay_s": 120,
        "max_num_timeout": 3,  # preempted jobs are requeued
        "additional_parameters": {},
        "array_parallelism": 256,
    }
    # a stand-in srun: submitit's SLURM executor looks for it; nothing is submitted
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    captured = _launch_without_submitting(launcher, cfg, monkeypatch, [["pooling=avg"], ["pooling=max"]])
    assert captured["init"] == {"cluster": "slurm", "folder": folder, "slurm_max_num_timeout": 3}
    overrides_per_job, dir_keys, job_nums = captured["jobs"][:3]
    assert overrides_per_job == (["pooling=avg"], ["pooling=max"]) and job_nums == (0, 1)
    assert set(dir_keys) == {"hydra.sweep.dir"}
    slurm = {k: v for k, v in captured["executor"]._executor.parameters.items() if k != "job_name"}
    assert slurm == {
        "time": 90,
        "cpus_per_task": 8,
        "gpus_per_node": 4,
        "ntasks_per_node": 4,
        "nodes": 2,
        "stderr_to_stdout": False,
        "partition": "gpu",
        "signal_delay_s": 120,
        "additional_parameters": {},
        "array_parallelism": 256,
    }
    script = captured["executor"]._executor._make_submission_file_text("python -m resflex", "uid")
    sbatch = {line for line in script.splitlines() if line.startswith("#SBATCH") and "job-name" not in line}
    assert sbatch == {
        "#SBATCH --cpus-per-task=8",
        f"#SBATCH --error={folder}/%j_0_log.err",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={folder}/%j_0_log.out",
        "#SBATCH --partition=gpu",
        "#SBATCH --signal=USR2@120",  # submitit's requeue signal, 2 minutes before the end
        "#SBATCH --time=90",
        "#SBATCH --wckey=submitit",
    }


@pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema")
def test_submitit_local_launcher_composes_for_single_process_jobs(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher",
        reason="hydra-submitit-launcher is not installed (pip install hydra-submitit-launcher)",
    )
    cfg = _compose(["hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path}"])
    target = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    assert cfg.hydra.launcher._target_ == target
    launcher = instantiate(cfg.hydra.launcher)
    assert f"{type(launcher).__module__}.{type(launcher).__name__}" == target
    folder = f"{tmp_path}/.submitit/%j"
    assert {k: v for k, v in launcher.params.items() if k != "name"} == {
        "submitit_folder": folder,
        "timeout_min": 60,
        "cpus_per_task": None,
        "gpus_per_node": 0,
        "tasks_per_node": 1,  # one process per job: Lightning could not read local submitit ranks
        "mem_gb": None,
        "nodes": 1,
        "stderr_to_stdout": False,
    }
    captured = _launch_without_submitting(launcher, cfg, monkeypatch, [["pooling=avg"]])
    assert captured["init"] == {"cluster": "local", "folder": folder}
    assert type(captured["executor"]._executor).__name__ == "LocalExecutor"
    assert captured["jobs"][0] == (["pooling=avg"],)


# ---- real two-process runs (gloo) -------------------------------------------------------------
DDP_TINY = (
    "trainer=ddp_sim",
    "backbone.name=test_resnet",
    "data.num_workers=0",
    "data.batch_size=4",
    "trainer.max_epochs=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
)


@pytest.mark.slow
def test_ddp_sim_trains_with_random_sizes_and_keep_aspect_on_an_image_folder(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images", per_class=9, splits=("train", "val"), seed=3)
    run = tmp_path / "run"
    args = [
        *DDP_TINY,
        "data=imagefolder",
        f"data.root={root}",
        "data.batch_size=4",
        "resolution=random",
        "resolution.sizes=[32,48]",
        "resolution.geometry=keep_aspect",
        "resolution.aspect_ratios=[0.75,1.0,1.333]",
        f"hydra.run.dir={run}",
    ]
    result = run_cli(args, cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    report = check_rank_logs(run, num_samples=27)
    assert report["ranks"] == [0, 1]
    for epoch in (0, 1):
        e = report["epochs"][epoch]
        assert e["sizes_agree"] and e["rank_repeats"] == 0 and e["weights_agree"], e
        assert e["missing"] == 0 and e["padding"] <= 3  # every image, padding at most 1 per bucket
        assert e["steps"][0] == e["steps"][1] > 0
    assert len({s for e in report["epochs"].values() for s in e["sizes"]}) > 1
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "completed"
    # the synced metric rank 0 wrote is the value logged for the last validation
    assert record["metrics"]["val/acc"] == pytest.approx(scalar_tags(run)["val/acc"][-1][1], abs=1e-6)
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert not list(run.glob("*.tmp"))


@pytest.mark.slow
def test_ddp_test_metrics_count_every_image_once_as_a_single_process_evaluation(tmp_path: Path) -> None:
    """25 test images on 2 ranks, in keep_aspect buckets: the ranks' batches end with padding repeats
    (a rank even gets a batch of a repeat alone); the trainer's test/acc@<size> and loss must still be
    those of scripts/eval.py's single-process evaluation of the same checkpoint (each image once)."""
    from resflex.evaluate import evaluate
    from tests.test_eval_script import compose_config

    run = tmp_path / "run"
    args = [
        *DDP_TINY,
        "trainer.max_epochs=1",
        "data.source.num_train=40",
        "data.source.num_val=25",
        "data.source.num_test=25",
        "resolution.size=32",
        "resolution.geometry=keep_aspect",
        "eval.resolutions=[24]",
        f"hydra.run.dir={run}",
    ]
    result = run_cli(args, cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run / "metrics.json").read_text())
    trained = record["metrics"]
    cfg = compose_config(
        "eval",
        [f"ckpt_path={record['best']['checkpoint']}", "eval.resolutions=[32,24]", "eval.split=test"],
        tmp_path / "eval",
    )
    by_size = {r["tag"]: r for r in evaluate(cfg)["results"]}
    assert {r["images"] for r in by_size.values()} == {25}
    for tag, row in by_size.items():
        assert trained[f"test/acc@{tag}"] == pytest.approx(row["acc"], abs=1e-6), tag
        assert trained[f"test/loss@{tag}"] == pytest.approx(row["loss"], rel=1e-5), tag
    assert trained["test/acc"] == pytest.approx(by_size["32"]["acc"], abs=1e-6)
    assert trained["test/loss"] == pytest.approx(by_size["32"]["loss"], rel=1e-5)
    assert trained["test/acc_worst"] == pytest.approx(min(r["acc"] for r in by_size.values()), abs=1e-6)


@pytest.mark.slow
def test_ddp_inside_a_multirun_launches_each_jobs_ranks_into_its_folder(tmp_path: Path) -> None:
    """Three DDP jobs in one sweep: a job that fails on its ranks is recorded and the sweep goes on.

    The default, time-stamped sweep folder: a rank re-running the sweep command would make its own.
    progressive needs max_epochs, so that job fails in setup, after its ranks were started.
    """
    args = [
        "-m",
        "resolution=random,progressive,fixed",
        *DDP_TINY,
        "trainer.max_epochs=-1",
        "trainer.max_steps=3",
        "data.source.num_train=24",
        "data.source.num_val=8",
        "data.source.num_test=0",
        # square batches: 3 steps cover the 24 images (keep_aspect's buckets pad partial batches, so
        # max_steps=3 would end the epoch before every image is seen)
        "resolution.geometry=square",
        f"paths.root_dir={tmp_path}",
    ]
    result = run_cli(args, cwd=tmp_path, timeout=500)
    assert result.returncode == 1, result.stderr[-3000:]  # one failed job
    assert "1 job(s) failed: resolution=progressive" in result.stderr
    sweeps = list((tmp_path / "logs" / "multirun").iterdir())
    assert len(sweeps) == 1, f"ranks wrote to several sweep folders: {sweeps}"
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["multirun"]
    sweep = sweeps[0]
    # jobs only: .data_profiles/ is the sweep's once-per-sweep figure marker (training/profile_view.py)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["resolution=fixed", "resolution=progressive", "resolution=random"]
    failed = json.loads((sweep / "resolution=progressive" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "max_epochs" in failed["error"]
    for job in ("resolution=random", "resolution=fixed"):
        record = json.loads((sweep / job / "metrics.json").read_text())
        assert record["status"] == "completed" and record["overrides"][0] == job
        e = check_rank_logs(sweep / job, num_samples=24)["epochs"][0]
        assert e["steps"] == {0: 3, 1: 3}  # 24 samples / 2 ranks / batch 4
        assert e["sizes_agree"] and e["weights_agree"] and e["missing"] == 0


def test_a_batch_of_another_length_than_planned_gets_no_indices() -> None:
    steps = [
        SimpleNamespace(size=(32, 32), indices=[4, 5, 6, 7]),
        SimpleNamespace(size=(32, 32), indices=[0, 1]),
    ]
    trainer = SimpleNamespace(
        train_dataloader=SimpleNamespace(batch_sampler=SimpleNamespace(plan=lambda: steps))
    )
    assert _planned_indices(trainer, 0, (32, 32), 4) == [4, 5, 6, 7]  # type: ignore[arg-type]
    assert _planned_indices(trainer, 1, (32, 32), 3) is None  # type: ignore[arg-type]
    assert _planned_indices(trainer, 1, (48, 48), 2) is None  # type: ignore[arg-type]
    assert _planned_indices(trainer, 2, (32, 32), 2) is None  # type: ignore[arg-type]
