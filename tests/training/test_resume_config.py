"""Resume with the run's own config: the interrupt hint carries the run's overrides, a resume that
composes a different experiment is refused in one line (the run folder left as it was), and a SIGTERM
to the whole process group (``timeout``, ``scancel``) is an interruption like one to the main process."""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resflex.errors import find_user_error
from resflex.resume_check import (
    ResumeRefused,
    check_resume,
    config_differences,
    may_change,
    override_differences,
    resume_command,
    same_work_per_step,
)
from resflex.run_folder import original_file, read_original, save_original
from tests.conftest import REPO, RESUME_RUN, TRAIN_SCRIPT, run_cli, train_run
from tests.faults import sigterm_at

LIGHTNING_DEFAULT_NOTICE = "`weights_only` was not set"
#: RESUME_RUN without what these tests do not look at: evaluation at other sizes, calibration, events
QUICK = ("eval.resolutions=[]", "eval.bn_calibration=false", "logger=none")


def test_resume_command_keeps_the_overrides_quoted_and_replaces_ckpt_path_and_run_dir() -> None:
    command = resume_command(
        ["data.source.num_train=600", "+tag=a b", "ckpt_path=other.ckpt", "hydra.run.dir=old"], "/r u/n"
    )
    words = shlex.split(command)
    assert words[-4:] == ["data.source.num_train=600", "+tag=a b", "ckpt_path=last", 'hydra.run.dir="/r u/n"']
    assert words[0] == "python" and words[1].endswith(".py")


def test_only_the_documented_keys_may_change_on_resume() -> None:
    saved = {"trainer": {"max_epochs": 2, "devices": 1}, "data": {"num_workers": 2, "source": {"n": 600}}}
    new = {"trainer": {"max_epochs": 6, "devices": 1}, "data": {"num_workers": 0, "source": {"n": 3000}}}
    differences = config_differences(saved, new)
    assert [k for k, *_ in differences] == ["trainer.max_epochs", "data.num_workers", "data.source.n"]
    assert [k for k, *_ in differences if not may_change(k)] == ["data.source.n"]
    assert may_change("callbacks.fault.step") and may_change("paths.output_dir") and not may_change("seed")
    assert not may_change("trainer.devices") and not may_change("trainer.limit_train_batches")
    # a folder from before the original config was kept: its record's overrides
    legacy = override_differences(["a=1", "+b=2"], ["a=1", "ckpt_path=last"])
    assert [k for k, *_ in legacy] == ["ckpt_path", "b"]


@pytest.mark.parametrize("keyword", ["hpc", "registry"])
def test_a_lightning_keyword_ckpt_path_is_checked_against_this_run_folder(
    keyword: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ckpt_path=hpc`` (SLURM's requeue) names no file: the checkpoint is this run folder's, so its kept
    config is what the resume is compared with (not the folder of a file named ``hpc`` in the cwd)."""
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    save_original(run, {"seed": 1, "data": {"batch_size": 8}}, ["data.batch_size=8"])
    monkeypatch.chdir(tmp_path)
    same = OmegaConf.create({"seed": 1, "data": {"batch_size": 8}, "ckpt_path": keyword})
    check_resume(same, keyword, run, [])  # the same experiment: resumes
    other = OmegaConf.create({"seed": 1, "data": {"batch_size": 16}, "ckpt_path": keyword})
    with pytest.raises(ResumeRefused, match=r"data\.batch_size \(was 8, now 16\)"):
        check_resume(other, keyword, run, [])


def test_half_the_batch_with_twice_the_accumulation_resumes_and_other_batch_changes_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the out-of-memory hint proposes (the same images per optimizer step) is the same experiment;
    a smaller batch alone, or more accumulation alone, is not."""
    from omegaconf import OmegaConf

    caplog.set_level(logging.INFO, logger="resflex")
    run = tmp_path / "run"
    save_original(run, {"data": {"batch_size": 32}, "trainer": {"accumulate_grad_batches": 1}}, [])

    def resume(batch: int, accumulate: int) -> None:
        cfg = {"data": {"batch_size": batch}, "trainer": {"accumulate_grad_batches": accumulate}}
        check_resume(
            OmegaConf.create({**cfg, "ckpt_path": "last"}), str(run / "checkpoints" / "last.ckpt"), run, []
        )

    resume(16, 2)
    resume(8, 4)
    assert any("the same 32 images per optimizer step, in batches of 16" in m for m in caplog.messages)
    with pytest.raises(ResumeRefused, match=r"data\.batch_size \(was 32, now 16\)"):
        resume(16, 1)
    with pytest.raises(ResumeRefused, match=r"trainer\.accumulate_grad_batches \(was 1, now 2\)"):
        resume(32, 2)
    assert same_work_per_step({"data": {"batch_size": 32}}, {"data": {"batch_size": 32}}) is None
    back = same_work_per_step(
        {"data": {"batch_size": 16}, "trainer": {"accumulate_grad_batches": 2}}, {"data": {"batch_size": 32}}
    )
    assert back is not None and back[1:] == (16, 2, 32, 1)  # the way back, once memory allows


def test_a_naflex_runs_token_budget_splits_over_accumulation_and_its_unused_batch_size_does_not() -> None:
    """A NaFlex run with a token budget is told half ``resolution.tokens_per_batch`` when memory runs out;
    its ``data.batch_size`` does not size its batches, so halving that with more accumulation would
    double the tokens per step."""
    started = {"data": {"batch_size": 32}, "resolution": {"tokens_per_batch": 8192}}
    halved = {"resolution": {"tokens_per_batch": 4096}, "trainer": {"accumulate_grad_batches": 2}}
    split = same_work_per_step(started, {**started, **halved})
    assert split is not None and split.describe() == (
        "resuming with resolution.tokens_per_batch=4096 trainer.accumulate_grad_batches=2 (the run was "
        "started with 8192 and 1): the same 8192 tokens per optimizer step, in batches of 4096"
    )
    unused = {**started, "data": {"batch_size": 16}, "trainer": {"accumulate_grad_batches": 2}}
    assert same_work_per_step(started, unused) is None
    both = {**halved, "data": {"batch_size": 16}}
    assert same_work_per_step(started, both) is None


def _training_images(path: Path) -> dict[tuple[int, int], list[str]]:
    """(epoch, optimizer step) -> the digests of the images that step trained on, in order."""
    steps: dict[tuple[int, int], list[str]] = {}
    for line in path.read_text().splitlines():
        batch = json.loads(line)
        steps.setdefault((batch["epoch"], batch["step"]), []).extend(batch["images"])
    return steps


def _learning_rates(path: Path) -> dict[int, float]:
    """optimizer step -> its learning rate (the first parameter group's)."""
    return {batch["step"]: batch["lr"] for batch in map(json.loads, path.read_text().splitlines())}


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_a_run_stopped_mid_epoch_resumes_with_half_the_batch_on_the_same_images_per_step(
    tmp_path: Path,
) -> None:
    """A run stopped mid-epoch (SIGTERM at step 8 of 6-step epochs), resumed with half the batch and twice
    the accumulation: every optimizer step of the interrupted epoch trains on the images, at the sizes, an
    uninterrupted run trained on; the next epoch takes every image once, and the run ends at the same step.
    (Before, the resume was refused; with ``resume_check=false`` it trained half an epoch again and skipped
    the last epoch.)"""
    run = [
        *(o for o in RESUME_RUN if not o.startswith(("trainer.limit_train_batches", "resolution.size"))),
        *QUICK,
        "trainer.max_epochs=3",
        "resolution=random",
        "resolution.sizes=[24,32]",
        "resolution.geometry=square",  # 6 steps of 8 every epoch: epoch 1 is steps 6-11
        "+callbacks.probe._target_=tests.faults.TrainingImages",
    ]
    whole = train_run([*run, f"+callbacks.probe.path={tmp_path / 'whole.jsonl'}"], tmp_path / "whole")
    assert whole["status"] == "completed"

    run_dir = tmp_path / "killed"
    killed = run_cli(
        [
            *run,
            *sigterm_at(8),
            f"+callbacks.probe.path={tmp_path / 'killed.jsonl'}",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert killed.returncode == 143, killed.stderr[-3000:]
    halved = [
        *(o for o in run if not o.startswith("data.batch_size=")),
        "data.batch_size=4",
        "trainer.accumulate_grad_batches=2",
        f"+callbacks.probe.path={tmp_path / 'resumed.jsonl'}",
        "ckpt_path=last",
    ]
    assert train_run(halved, run_dir)["status"] == "completed"

    expected, resumed = (
        _training_images(tmp_path / "whole.jsonl"),
        _training_images(tmp_path / "resumed.jsonl"),
    )
    interrupted = [key for key in resumed if key[0] == 1]
    assert interrupted == [(1, step) for step in range(8, 12)]  # steps 8-11 finish epoch 1
    assert all(resumed[key] == expected[key] for key in interrupted)
    # the next epoch is the one a run started with the new batch trains (its own sizes, every image once)
    fresh = [*halved[:-2], f"+callbacks.probe.path={tmp_path / 'fresh.jsonl'}"]
    assert train_run(fresh, tmp_path / "fresh")["status"] == "completed"
    started_halved = _training_images(tmp_path / "fresh.jsonl")
    last_epoch = {key: images for key, images in resumed.items() if key[0] == 2}
    assert last_epoch == {key: images for key, images in started_halved.items() if key[0] == 2}
    assert len(last_epoch) == 6 and all(len(images) == 8 for images in last_epoch.values())
    assert max(resumed) == max(expected) == (2, 17)
    # the LR schedule is the run's: its length in optimizer steps is the same with the new batch
    whole_lr, resumed_lr = (
        _learning_rates(tmp_path / "whole.jsonl"),
        _learning_rates(tmp_path / "resumed.jsonl"),
    )
    assert resumed_lr == pytest.approx({step: whole_lr[step] for step in resumed_lr}, rel=1e-6)


def _hint_overrides(stderr: str) -> list[str]:
    (line,) = [line for line in stderr.splitlines() if line.startswith("interrupted:")]
    words = shlex.split(line.split("resume with: ", 1)[1])
    assert words[:2] == ["python", str(TRAIN_SCRIPT)]
    return words[2:]


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_the_printed_resume_command_resumes_and_a_different_data_size_is_refused(tmp_path: Path) -> None:
    """The audit's case: a run with its own data size, killed, then resumed. The hint holds the run's
    overrides; a resume composing other data is refused in one line, leaving the folder's config, overrides
    and record as they were; the hint's command resumes, and the record keeps the run's overrides."""
    run_dir = tmp_path / "run"
    started = [*RESUME_RUN, *QUICK, *sigterm_at(7)]
    killed = run_cli([*started, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert killed.returncode == 143, killed.stderr[-3000:]
    hint = _hint_overrides(killed.stderr)
    assert hint == [*started, "ckpt_path=last", f"hydra.run.dir={run_dir}"]
    assert LIGHTNING_DEFAULT_NOTICE not in killed.stderr + killed.stdout  # SaveOnInterrupt's save

    # in this process from here (the CLI's one-line rendering: test_cli.py); hydra_files: the resume's
    # .hydra/config.yaml and overrides.yaml are rewritten first, as Hydra does before the task runs
    saved = ("metrics.json", ".hydra/config.yaml", ".hydra/overrides.yaml")
    before = {name: (run_dir / name).read_text() for name in saved}
    overrides = [o for o in hint if not o.startswith("hydra.run.dir=")]
    other_data = [
        *(o for o in overrides if not o.startswith("data.source.num_train=")),
        "data.source.num_train=64",
    ]
    with pytest.raises(ResumeRefused) as refused:
        train_run(other_data, run_dir, hydra_files=True)
    message = find_user_error(refused.value).one_line()  # type: ignore[union-attr]
    assert message.startswith("refusing to resume") and "\n" not in message
    assert "data.source.num_train (was 48, now 64)" in message
    assert shlex.join(hint) in message  # the command with the run's own overrides
    assert {name: (run_dir / name).read_text() for name in saved} == before  # Hydra's rewrite undone

    resumed = train_run(overrides, run_dir)
    assert resumed["status"] == "completed"
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["overrides"] == started and record["resumes"] == [[*started, "ckpt_path=last"]]
    assert read_original(run_dir)[1] == started


def test_a_run_folder_from_before_the_copy_is_checked_by_its_record_and_resume_check_false_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="resflex")  # whatever level an earlier test left it at
    run_dir = tmp_path / "run"
    first = [*RESUME_RUN, *QUICK, "trainer.max_epochs=1"]
    assert train_run(first, run_dir)["status"] == "completed"
    for name in ("config.yaml", "overrides.yaml"):  # as a run folder written before this copy existed
        original_file(run_dir, name).unlink()
    with pytest.raises(ResumeRefused) as refused:
        train_run([*RESUME_RUN, *QUICK, "resolution.size=48", "ckpt_path=last"], run_dir)
    message = find_user_error(refused.value).one_line()  # type: ignore[union-attr]
    assert "resolution.size (was 32, now 48)" in message and "\n" not in message
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"  # untouched

    resumed = [*RESUME_RUN, *QUICK, "resolution.size=48", "resume_check=false", "ckpt_path=last"]
    record = train_run(resumed, run_dir)
    assert record["status"] == "completed" and record["overrides"] == [*first]
    assert any("resume_check=false" in m and "resolution.size" in m for m in caplog.messages)


def _processes_with(text: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True)
    return found.stdout.split()


@pytest.mark.skipif(sys.platform != "linux", reason="process groups and pgrep: Linux")
def test_sigterm_to_the_process_group_with_loader_workers_saves_and_prints_the_hint(tmp_path: Path) -> None:
    """``timeout``/``scancel``/container stops signal the whole group: the loader workers too. They ignore
    it (resflex.data.workers.init_worker); the main process saves, prints the hint, exits 143, and no
    worker is left behind."""
    run_dir = tmp_path / "run"
    marker = tmp_path / "training"
    args = [
        *(o for o in RESUME_RUN if not o.startswith("data.num_workers=")),
        "data.num_workers=1",
        "data.persistent_workers=true",
        "+callbacks.marker._target_=tests.faults.MarkerAtStep",
        "+callbacks.marker.step=2",
        f"+callbacks.marker.path={marker}",
        f"hydra.run.dir={run_dir}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as under setsid / timeout / a batch system
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "training never reached step 2"
        os.killpg(proc.pid, signal.SIGTERM)  # the group: main process and its loader worker
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr and "killed by signal" not in stderr, stderr[-3000:]
    assert _hint_overrides(stderr)[-2:] == ["ckpt_path=last", f"hydra.run.dir={run_dir}"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    deadline = time.monotonic() + 10
    while _processes_with(str(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_with(str(run_dir)) == []  # no loader worker left behind


def test_a_finished_run_extended_with_a_batch_limit_trains_whole_epochs(tmp_path: Path) -> None:
    """trainer.limit_train_batches=5 of an epoch of 6 batches: the end-of-epoch checkpoint said "5 of 6
    done", read as mid-epoch, and the resumed run's next epoch ran the one batch past the limit and
    another (7 steps in 2 epochs, not 10)."""
    from resflex.models.checkpoint import safe_load
    from tests.conftest import RESUME_RUN, train_run

    run_dir = tmp_path / "run"
    assert "trainer.limit_train_batches=5" in RESUME_RUN and "data.source.num_train=48" in RESUME_RUN
    train_run([*RESUME_RUN, "trainer.max_epochs=1", "eval.resolutions=[32]"], run_dir)
    train_run([*RESUME_RUN, "trainer.max_epochs=2", "eval.resolutions=[32]", "ckpt_path=last"], run_dir)
    checkpoint = safe_load(run_dir / "checkpoints" / "last.ckpt", what="checkpoint")
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (1, 10)


def test_a_sigterm_after_fit_stops_the_run_as_one_inside_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning handles SIGTERM inside fit/validate/test only: one during the BatchNorm calibration
    after fit (or the data scan before it) killed the process, with no record, card or resume line."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    import resflex.train as train_module
    from tests.conftest import RESUME_RUN, train_run

    def terminated(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("the SIGTERM did not stop the run")

    monkeypatch.setattr(train_module, "calibrate_run_checkpoints", terminated)
    before = signal.getsignal(signal.SIGTERM)
    run_dir, overrides = tmp_path / "run", [*RESUME_RUN, "trainer.max_epochs=1", "eval.resolutions=[24,32]"]
    with pytest.raises(SIGTERMException):
        train_run(overrides, run_dir, hydra_files=True)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert (record["status"], record["error"]) == ("interrupted", "stopped by SIGTERM")
    assert (run_dir / "model_card.md").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert signal.getsignal(signal.SIGTERM) is before  # put back
