"""An out-of-memory failure is one line: the batch it happened at and the run's keys that lower it
(resflex/training/out_of_memory.py); the run's checkpoints and record survive it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from resflex.errors import ConfigError, find_user_error
from resflex.runtime import out_of_memory_cause
from resflex.train import train
from resflex.training.out_of_memory import BatchSeen, allocator_reason, out_of_memory_error, run_hint
from tests.conftest import TINY, TINY_NAFLEX_MODEL, TINY_SYNTHETIC, run_out_of_memory_from
from tests.test_configs import compose_train

CUDA_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which "
    "1.06 GiB is free.\nIf reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF"
)

#: the one line of a failure at a 64 px evaluation batch (a keep_aspect bucket: 64 is its short side)
AT_64_PX = r"out of memory at an evaluation batch of \d+ images at (64x\d+|\d+x64) \(DefaultCPU"


def a_real_cpu_allocation_failure() -> RuntimeError:
    """What torch's CPU allocator raises for a tensor larger than the machine (not a made-up message)."""
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as exc:
        return exc
    raise AssertionError("a 4 EiB tensor was allocated")


def test_the_allocators_failures_are_recognised_through_the_chain_and_nothing_else_is() -> None:
    cpu = a_real_cpu_allocation_failure()
    assert out_of_memory_cause(cpu) is cpu
    wrapped = RuntimeError("the step failed")
    wrapped.__cause__ = torch.OutOfMemoryError(CUDA_MESSAGE)
    assert out_of_memory_cause(wrapped) is wrapped.__cause__
    assert out_of_memory_cause(RuntimeError("Given groups=1, weight of size [64, 3, 7, 7]")) is None
    assert out_of_memory_cause(ValueError("out of memory")) is None


class KilledBySystem(torch.utils.data.Dataset):
    """A loader worker the system kills (SIGKILL, as the kernel's out-of-memory killer does)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("killed")


def test_a_loader_worker_the_system_killed_is_an_out_of_memory_failure_in_one_line(tmp_path: Path) -> None:
    """eval.py at a size too large for the machine printed two chained traces ("... is killed by signal:
    Killed", "... exited unexpectedly"): torch's own errors here, from a real killed worker."""
    with pytest.raises(RuntimeError, match="exited unexpectedly") as info:
        list(torch.utils.data.DataLoader(KilledBySystem(), num_workers=1))
    cause = out_of_memory_cause(info.value)
    assert cause is not None and "is killed by signal: Killed" in str(cause)
    cfg = compose_train(["data.eval_batch_size=64"], tmp_path)
    batch = BatchSeen((64, 3, 512, 512), training=False)
    error = out_of_memory_error(info.value, batch, run_hint(cfg, batch, None))
    assert error is not None
    assert re.fullmatch(
        r"out of memory at an evaluation batch of 64 images at 512x512 \(DataLoader worker \(pid \d+\) is "
        r"killed by signal: Killed: the system's out-of-memory killer, most likely\)",
        error.message,
    )
    assert (error.hint or "").startswith("data.eval_batch_size=32")


def test_a_training_batch_is_told_half_the_batch_with_twice_the_accumulation(tmp_path: Path) -> None:
    """The images per optimizer step stay the same; mixed precision only where the GPU ran in full
    precision; the second scale-consistency view only where it is on."""
    cfg = compose_train(["data.batch_size=64", "model.scale_consistency=0.5"], tmp_path)
    batch = BatchSeen((64, 3, 96, 96), training=True)
    error = out_of_memory_error(torch.OutOfMemoryError(CUDA_MESSAGE), batch, run_hint(cfg, batch, "32-true"))
    assert error is not None
    assert error.message == (
        "out of memory at a training batch of 64 images at 96x96 (CUDA out of memory. Tried to allocate "
        "2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which 1.06 GiB is free.)"
    )
    assert error.hint == (
        "data.batch_size=32 trainer.accumulate_grad_batches=2 (the same images per step), "
        "trainer.precision=bf16-mixed (16-mixed on a GPU without bf16), "
        "model.scale_consistency=0 (its second view of each batch), or a smaller resolution.size"
    )
    cfg = compose_train(
        ["data.batch_size=64", "model.scale_consistency=0", "trainer.accumulate_grad_batches=2"], tmp_path
    )
    error = out_of_memory_error(
        torch.OutOfMemoryError(CUDA_MESSAGE), batch, run_hint(cfg, batch, "bf16-mixed")
    )
    assert error is not None and error.hint == (
        "data.batch_size=32 trainer.accumulate_grad_batches=4 (the same images per step), "
        "or a smaller resolution.size"
    )


def test_an_evaluation_batch_is_told_the_evaluation_batch_and_sizes(tmp_path: Path) -> None:
    cfg = compose_train(["data.batch_size=64", "data.eval_batch_size=256"], tmp_path)
    batch = BatchSeen((256, 3, 128, 64), training=False)
    error = out_of_memory_error(a_real_cpu_allocation_failure(), batch, run_hint(cfg, batch, None))
    assert error is not None
    assert error.message == (
        "out of memory at an evaluation batch of 256 images at 128x64 (DefaultCPUAllocator: can't allocate "
        "memory: you tried to allocate 4294967296.00 GiB.)"
    )
    assert error.hint == (
        "data.eval_batch_size=128, or smaller evaluation sizes ('eval.resolutions=[...]': auto reaches 2x "
        "the eval size)"
    )


@pytest.fixture
def hungry_at_64_px(monkeypatch: pytest.MonkeyPatch) -> None:
    run_out_of_memory_from(monkeypatch, 64)


@pytest.mark.usefixtures("hungry_at_64_px")
def test_a_run_that_runs_out_of_memory_at_its_largest_evaluation_size_says_so_and_keeps_its_work(
    tmp_path: Path,
) -> None:
    """At the 2x evaluation size (64 px) the run fails with one line naming that batch and the evaluation
    keys, its record says the same, and the checkpoints written before are there."""
    cfg = compose_train([*TINY, *TINY_SYNTHETIC, "logger=none", "eval.bn_calibration=false"], tmp_path)
    with pytest.raises(ConfigError) as info:
        train(cfg)
    error = find_user_error(info.value)
    assert error is not None
    assert re.match(AT_64_PX, error.message)
    assert (error.hint or "").startswith("data.eval_batch_size=4, or smaller evaluation sizes")
    assert isinstance(info.value.__cause__, RuntimeError)  # the allocator's own error, underneath
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"] == error.one_line()
    assert list((tmp_path / "checkpoints").glob("*.ckpt"))


@pytest.mark.usefixtures("hungry_at_64_px")
def test_eval_out_of_memory_at_a_large_size_names_its_own_batch_key(tmp_path: Path) -> None:
    """``scripts/eval.py`` at a size the device cannot hold: one line with ``eval.batch_size``, its key
    for the batch (the training run's keys do not apply there), and nothing written."""
    from resflex.evaluate import evaluate
    from tests.test_eval_script import compose_config, train_tiny_run

    run_dir = tmp_path / "run"
    train_tiny_run(run_dir, "eval.bn_calibration=false")
    out = tmp_path / "eval"
    overrides = [f"ckpt_path={run_dir}", "eval.resolutions=[32,64]", "eval.device=cpu", "eval.batch_size=6"]
    with pytest.raises(ConfigError) as info:
        evaluate(compose_config("eval", overrides, out))
    assert re.match(AT_64_PX, info.value.message)
    assert (info.value.hint or "").startswith("eval.batch_size=3, or smaller evaluation sizes")
    assert not (out / "eval.json").exists()


def test_a_naflex_batch_is_told_its_token_budget_and_sequence_lengths(tmp_path: Path) -> None:
    """A NaFlex step's batch is its token budget: halved with twice the accumulation; its size is the
    longest sequence; it has no second scale-consistency view to turn off."""
    cfg = compose_train([*TINY_NAFLEX_MODEL, "resolution.tokens_per_batch=3072"], tmp_path)
    batch = BatchSeen((48, 64), training=True)
    error = out_of_memory_error(
        torch.OutOfMemoryError(CUDA_MESSAGE), batch, run_hint(cfg, batch, "bf16-mixed")
    )
    assert error is not None
    assert error.message.startswith(
        "out of memory at a training batch of 48 images as up to 64 tokens each ("
    )
    assert error.hint == (
        "resolution.tokens_per_batch=1536 trainer.accumulate_grad_batches=2 (the same images per step), "
        "or a smaller resolution.max_seq_len"
    )
    batch = BatchSeen((16, 32), training=False)
    hint = run_hint(compose_train([*TINY_NAFLEX_MODEL, "data.eval_batch_size=16"], tmp_path), batch, None)
    assert hint == "data.eval_batch_size=8, or fewer or shorter eval.seq_lens"


def test_the_allocators_reason_keeps_what_failed_and_drops_its_advice() -> None:
    """torch's CUDA message goes on about its allocator for three more sentences, and the CPU's starts
    with a source location and gives bytes: the line keeps what failed, in binary units."""
    cuda = (
        "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 79.11 GiB of which "
        "3.19 MiB is free. Including non-PyTorch memory, this process has 79.10 GiB memory in use. Of the "
        "allocated memory 78.25 GiB is allocated by PyTorch. If reserved but unallocated memory is large try "
        "setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
    )
    assert allocator_reason(torch.OutOfMemoryError(cuda)) == (
        "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 79.11 GiB of which "
        "3.19 MiB is free."
    )
    cpu = (
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
        "tried to allocate 1048576 bytes. Error code 12 (Cannot allocate memory)"
    )
    assert allocator_reason(RuntimeError(cpu)) == (
        "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1.00 MiB."
    )


@pytest.mark.slow
def test_the_printed_resume_command_with_the_hints_batch_finishes_the_run(tmp_path: Path) -> None:
    """A user's journey: the run runs out of memory in its second epoch; the line above the error is the
    command that resumes it, the error's hint the batch to add; that command with the hint's batch keys
    resumes from the first epoch's checkpoint and finishes the run."""
    import shlex

    from tests.conftest import run_cli

    args = [
        *(a for a in TINY if not a.startswith(("trainer.max_epochs", "trainer.limit_train"))),
        *TINY_SYNTHETIC,
        "trainer.max_epochs=2",
        "logger=none",
        "eval.resolutions=[]",
        "eval.bn_calibration=false",
        "+callbacks.fault._target_=tests.faults.OutOfMemoryAbove",
        "+callbacks.fault.images=6",  # half the batch is 4 images, 5 where a bucket folds its last in
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    failed = run_cli(args, cwd=tmp_path)
    assert failed.returncode == 2, failed.stderr[-3000:]  # a user error
    lines = failed.stderr.strip().splitlines()
    assert lines[-1].startswith("error: out of memory at a training batch of 8 images")
    hint = re.search(r"hint: (data\.batch_size=4 trainer\.accumulate_grad_batches=2) \(the same", lines[-1])
    assert hint is not None, lines[-1]
    assert lines[-2].startswith("checkpoints kept in ")
    command = shlex.split(lines[-2].split("once fixed: ", 1)[1])
    assert command[-2:] == ["ckpt_path=last", f"hydra.run.dir={tmp_path / 'run'}"]

    resumed = run_cli([*command[2:], *hint.group(1).split()], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "the same 8 images per optimizer step" in resumed.stdout + resumed.stderr
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "completed"
    assert record["resumes"] == [[*args[:-1], "ckpt_path=last", *hint.group(1).split()]]
