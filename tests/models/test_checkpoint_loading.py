"""Every checkpoint read goes through one loader: an unreadable file is one line naming it, and
``ckpt_path=last`` falls back to the newest readable checkpoint of the run (issue #14)."""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel

from resflex.errors import ConfigError, DataError
from resflex.models.checkpoint import (
    UnsafeCheckpointError,
    check_checkpoint,
    is_readable_checkpoint,
    load_backbone_weights,
    load_head_from_checkpoint,
    safe_load,
    state_dict_of,
)
from resflex.run_folder import resolve_checkpoint_path, resolve_resume_checkpoint
from resflex.training.safety import AtomicCheckpointIO
from tests.conftest import REPO, run_cli

SCRIPTS = REPO / "scripts"


def lightning_like(step: int = 3) -> dict:
    """What a resflex Lightning checkpoint holds, in small."""
    return {
        "epoch": 0,
        "global_step": step,
        "pytorch-lightning_version": pl.__version__,
        "state_dict": {"model.head.weight": torch.randn(10, 8), "model.head.bias": torch.zeros(10)},
        "optimizer_states": [],
        "hyper_parameters": {"lr": 0.1},
    }


def cut_short(path: Path, keep: float = 0.5) -> Path:
    """What a full disk or a killed copy leaves: the first part of the file."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_run(run_dir: Path, truncate_last: bool = True) -> tuple[Path, Path]:
    """``<run>/checkpoints/`` with a readable best and a newer last.ckpt (cut short unless told)."""
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True)
    best = folder / "best-epoch000-acc0.5000.ckpt"
    last = folder / "last.ckpt"
    torch.save(lightning_like(3), best)
    torch.save(lightning_like(5), last)
    os.utime(best, (1_000_000, 1_000_000))
    os.utime(last, (2_000_000, 2_000_000))  # last is the newest, as after a real run
    if truncate_last:
        cut_short(last)
        os.utime(last, (2_000_000, 2_000_000))
    return best, last


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "resflex"]


# --- resume: ckpt_path=last falls back -----------------------------------------------------------


def test_truncated_last_resumes_from_the_newest_readable_with_a_warning_naming_both(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    best, last = make_run(tmp_path / "run")
    assert not is_readable_checkpoint(last) and is_readable_checkpoint(best)
    with caplog.at_level(logging.INFO, logger="resflex"):
        resolved = resolve_resume_checkpoint("last", tmp_path / "run")
    assert resolved == str(best)
    (warning,) = warnings_of(caplog)
    assert str(last) in warning and str(best) in warning and "cut short" in warning


def test_newest_readable_wins_over_older_ones(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    best, _ = make_run(tmp_path / "run")
    older = best.with_name("best-epoch000-acc0.1000.ckpt")
    torch.save(lightning_like(1), older)
    os.utime(older, (500_000, 500_000))
    broken_newer = best.with_name("best-epoch001-acc0.9000.ckpt")
    broken_newer.write_bytes(b"")  # newest of the bests, but empty
    os.utime(broken_newer, (1_500_000, 1_500_000))
    with caplog.at_level(logging.WARNING, logger="resflex"):
        assert resolve_resume_checkpoint("last", tmp_path / "run") == str(best)


def test_readable_last_is_used_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, last = make_run(tmp_path / "run", truncate_last=False)
    with caplog.at_level(logging.INFO, logger="resflex"):
        assert resolve_resume_checkpoint("last", tmp_path / "run") == str(last)
    assert warnings_of(caplog) == []


def test_missing_last_falls_back_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    best, last = make_run(tmp_path / "run")
    last.unlink()
    with caplog.at_level(logging.WARNING, logger="resflex"):
        assert resolve_resume_checkpoint("last", tmp_path / "run") == str(best)
    (warning,) = warnings_of(caplog)
    assert str(last) in warning and "missing" in warning and str(best) in warning


def test_last_with_nothing_to_resume_starts_from_scratch_like_lightning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Lightning 2.6: fit(ckpt_path="last") without a checkpoint warns and starts from scratch; a single
    # run's new folder (no hydra.run.dir) can never hold one: a warning says how to resume
    with caplog.at_level(logging.INFO, logger="resflex"):
        assert resolve_resume_checkpoint("last", tmp_path / "fresh") is None
    (warning,) = warnings_of(caplog)
    assert "starts from scratch" in warning and "hydra.run.dir=<run>" in warning
    # only unreadable checkpoints: from scratch too, but with a warning naming them
    caplog.clear()
    folder = tmp_path / "broken" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04 cut")
    with caplog.at_level(logging.INFO, logger="resflex"):
        assert resolve_resume_checkpoint("last", tmp_path / "broken") is None
    (warning,) = warnings_of(caplog)
    assert "last.ckpt" in warning and "starts from scratch" in warning


@pytest.mark.parametrize("value", [None, "", "null"])
def test_no_ckpt_path_is_none(value: object, tmp_path: Path) -> None:
    assert resolve_resume_checkpoint(value, tmp_path) is None


@pytest.mark.parametrize("value", ["hpc", "registry"])
def test_lightning_keywords_pass_through(value: str, tmp_path: Path) -> None:
    assert resolve_resume_checkpoint(value, tmp_path) == value


def test_best_is_no_file_to_resume_from(tmp_path: Path) -> None:
    """Lightning's "best" is for testing a fitted model: training with it was Lightning's ValueError."""
    with pytest.raises(ConfigError, match="ckpt_path=best names no file to resume from"):
        resolve_resume_checkpoint("best", tmp_path)


def test_explicit_resume_paths(tmp_path: Path) -> None:
    best, last = make_run(tmp_path / "run")
    assert resolve_resume_checkpoint(str(best), tmp_path / "elsewhere") == str(best)
    with pytest.raises(ConfigError, match="ckpt_path does not exist") as missing:
        resolve_resume_checkpoint(str(tmp_path / "nope.ckpt"), tmp_path)
    assert missing.value.hint
    # an explicit file is never swapped for another: one line naming it
    with pytest.raises(DataError, match="cannot resume from") as broken:
        resolve_resume_checkpoint(str(last), tmp_path / "run")
    line = broken.value.one_line()
    assert "\n" not in line and str(last) in line and "hint:" in line


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch HACKED",))


def test_explicit_resume_from_a_file_that_runs_code_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the payload touches HACKED in the working folder: look for it there
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode()}, evil)
    with pytest.raises(UnsafeCheckpointError, match="refusing to resume from") as info:
        resolve_resume_checkpoint(str(evil), tmp_path)
    # still what torch.load(weights_only=True) raises, for code that catches that
    assert isinstance(info.value, pickle.UnpicklingError) and isinstance(info.value, DataError)
    assert not (tmp_path / "HACKED").exists()


# --- the one loader: unreadable files are one line naming them ---------------------------------


def _not_a_torch_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")


BROKEN = {
    "empty": lambda p: p.write_bytes(b""),
    "one byte": lambda p: p.write_bytes(b"P"),
    "text": lambda p: p.write_text("this is not a checkpoint\n"),
    "zip, not torch": _not_a_torch_zip,
    "zip cut to 10 bytes": lambda p: (torch.save(lightning_like(), p), cut_short(p, 10 / p.stat().st_size)),
    "zip cut in half": lambda p: (torch.save(lightning_like(), p), cut_short(p)),
    "zip minus its last byte": lambda p: (
        torch.save(lightning_like(), p),
        p.write_bytes(p.read_bytes()[:-1]),
    ),
    "legacy pickle cut short": lambda p: (
        torch.save(lightning_like(), p, _use_new_zipfile_serialization=False),
        cut_short(p),
    ),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_an_unreadable_file_is_one_line_naming_it(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    BROKEN[kind](path)
    for read in (safe_load, check_checkpoint):
        with pytest.raises(DataError, match="cannot read checkpoint") as info:
            read(path)
        line = info.value.one_line()
        assert "\n" not in line and str(path) in line and "hint:" in line, line
        assert not isinstance(info.value, UnsafeCheckpointError)
    assert not is_readable_checkpoint(path)


def test_a_file_that_is_neither_zip_nor_pickle_is_named_as_such(tmp_path: Path) -> None:
    """Read from its first bytes, before torch.load: not torch's "invalid load key" about a pickle."""
    path = tmp_path / "model.ckpt"
    BROKEN["text"](path)
    with pytest.raises(DataError, match="not a PyTorch file \\(it starts with b'this'") as info:
        safe_load(path)
    # not "cut short (a full disk?)": a text file is no damaged checkpoint (found by a transfer audit)
    assert info.value.hint is not None and info.value.hint.startswith("this file is no checkpoint or weights")
    assert "cut short" not in info.value.hint


@pytest.mark.parametrize("legacy", [False, True])
def test_whole_files_are_readable(legacy: bool, tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    torch.save(lightning_like(7), path, _use_new_zipfile_serialization=not legacy)
    assert is_readable_checkpoint(path)
    assert safe_load(path)["global_step"] == 7


def test_lightnings_reads_go_through_the_same_loader(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(lightning_like(4), path)
    assert io.load_checkpoint(path)["global_step"] == 4
    cut_short(path)
    with pytest.raises(DataError, match="cannot read checkpoint") as info:
        io.load_checkpoint(path)
    assert str(path) in info.value.one_line()
    evil = tmp_path / "evil.ckpt"
    torch.save({"payload": _RunsCode()}, evil)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        io.load_checkpoint(evil)


def test_a_run_folder_for_eval_falls_back_like_last(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    best, last = make_run(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="resflex"):
        assert resolve_checkpoint_path(tmp_path / "run") == best
    (warning,) = warnings_of(caplog)
    assert str(last) in warning and str(best) in warning
    # only an unreadable one: it is returned, and reading it says why in one line
    best.unlink()
    assert resolve_checkpoint_path(tmp_path / "run") == last
    with pytest.raises(DataError, match="cut short"):
        safe_load(last)
    # a file named explicitly is never swapped for another
    assert resolve_checkpoint_path(last) == last


# --- Lightning resumes from the fallback ----------------------------------------------------------


class _Boring(BoringModel):
    def validation_step(self, batch, batch_idx):
        loss = self.step(batch)
        self.log("val/loss", loss)
        return {"x": loss}


def _boring_trainer(root: Path, max_epochs: int) -> pl.Trainer:
    from pytorch_lightning.callbacks import ModelCheckpoint

    return pl.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        max_epochs=max_epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            ModelCheckpoint(
                dirpath=root / "checkpoints",
                filename="best-epoch{epoch:03d}",
                monitor="val/loss",
                save_top_k=-1,
                auto_insert_metric_name=False,
            ),
            ModelCheckpoint(dirpath=root / "checkpoints", filename="last", enable_version_counter=False),
        ],
    )


def test_lightning_resumes_from_the_fallback_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _boring_trainer(run, max_epochs=2).fit(_Boring())
    last = run / "checkpoints" / "last.ckpt"
    assert safe_load(last)["epoch"] == 1
    cut_short(last)
    resume = resolve_resume_checkpoint("last", run)
    assert resume is not None and Path(resume).name == "best-epoch001.ckpt"
    trainer = _boring_trainer(run, max_epochs=3)
    trainer.fit(_Boring(), ckpt_path=resume, weights_only=True)
    assert trainer.current_epoch == 3 and trainer.global_step == 6  # epochs 0-1 restored, epoch 2 trained
    assert safe_load(last)["global_step"] == 6  # the broken last.ckpt was replaced by a whole one


def test_lightning_given_a_cut_short_file_says_so_in_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _boring_trainer(run, max_epochs=1).fit(_Boring())
    last = cut_short(run / "checkpoints" / "last.ckpt")
    with pytest.raises(DataError, match="cannot read checkpoint") as info:
        _boring_trainer(run, max_epochs=2).fit(_Boring(), ckpt_path=str(last), weights_only=True)
    assert str(last) in info.value.one_line()


# --- the command lines ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "extra"),
    [
        ("eval.py", []),
        # subprocesses: slow-marked like the other predict/export CLI tests; eval covers the default run
        # an input that exists (a missing one is refused before the checkpoint is read)
        pytest.param("predict.py", ["input=.", "output=preds.csv"], marks=pytest.mark.slow),
        pytest.param("export.py", ["format=onnx", "output=model.onnx"], marks=pytest.mark.slow),
    ],
)
def test_cli_on_a_cut_short_checkpoint_is_one_line(script: str, extra: list[str], tmp_path: Path) -> None:
    _, last = make_run(tmp_path / "run")
    result = run_cli([f"ckpt_path={last}", *extra], cwd=tmp_path, script=SCRIPTS / script)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert (
        lines[0].startswith("error: cannot read ckpt_path")
        and str(last) in lines[0]
        and "cut short" in lines[0]
    )
    assert not (tmp_path / "preds.csv").exists() and not (tmp_path / "model.onnx").exists()


def test_a_run_resumes_past_a_cut_short_last_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's case (in-process ``train``, as the CLI runs it): finish a run, cut its last.ckpt short,
    resume with ckpt_path=last: the run continues from the newest readable checkpoint, saying so."""
    from tests.conftest import TINY, TINY_SYNTHETIC, train_run

    run = tmp_path / "run"
    args = [*TINY, *TINY_SYNTHETIC, "logger=none", "test_after_fit=false", "eval.resolutions=[]"]
    assert train_run(args, run)["status"] == "completed"
    last = run / "checkpoints" / "last.ckpt"
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a full disk, a killed copy
    with caplog.at_level(logging.WARNING, logger="resflex"):
        record = train_run([*args, "ckpt_path=last", "trainer.max_epochs=2"], run)
    assert record["status"] == "completed"
    warning = next(m for m in caplog.messages if "last.ckpt" in m)
    assert str(last) in warning and best.name in warning  # names the unreadable file and the one used
    resumed = safe_load(last)  # rewritten whole by the resumed run
    assert (resumed["epoch"], resumed["global_step"]) == (1, 6)  # epoch 0 restored, epoch 1 trained


def test_last_with_nothing_to_resume_in_a_slurm_job_is_its_first_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SLURM job (or a sweep's) passes ckpt_path=last so that a requeued job resumes: its first start
    finds nothing, as expected, and is not warned about."""
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    with caplog.at_level(logging.INFO, logger="resflex"):
        assert resolve_resume_checkpoint("last", tmp_path / "new") is None
    assert warnings_of(caplog) == []


# --- what a weights file holds --------------------------------------------------------------------


def test_a_wrapper_prefix_is_stripped_only_when_every_key_has_it() -> None:
    """DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefix every key; a model whose own names
    start so (a submodule called ``module``) keeps them."""
    t = torch.zeros(1)
    assert set(state_dict_of({"module.a": t, "module.b.c": t}, "f")) == {"a", "b.c"}
    assert set(state_dict_of({"state_dict": {"_orig_mod.a": t}}, "f")) == {"a"}
    assert set(state_dict_of({"module.a": t, "head.b": t}, "f")) == {"module.a", "head.b"}


def test_a_head_of_another_class_count_is_reinitialised_and_the_report_says_so(tmp_path: Path) -> None:
    from resflex.models.backbone import TimmBackbone
    from resflex.models.classifier import ImageClassifier
    from resflex.models.pooling import AvgPool

    def classifier(classes: int) -> ImageClassifier:
        return ImageClassifier(TimmBackbone("test_resnet"), AvgPool(), num_classes=classes)

    torch.manual_seed(0)
    source = classifier(10)
    ckpt = tmp_path / "source.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, ckpt)
    same = classifier(10)
    report = load_head_from_checkpoint(same, ckpt)
    assert report.clean and report.note == ""
    assert torch.equal(same.head.weight, source.head.weight)
    other = classifier(3)
    fresh = other.head.weight.clone()
    report = load_head_from_checkpoint(other, ckpt)
    assert report.note == "classifier re-initialised: the checkpoint has 10 classes, this run has 3"
    assert torch.equal(other.head.weight, fresh) and len(report.mismatched) == 2


def test_an_unreadable_weights_file_is_not_sent_to_a_runs_checkpoints(tmp_path: Path) -> None:
    """backbone.weights is a timm / torchvision / safetensors file: "another checkpoint of the run"
    is no hint for it; a resflex checkpoint's is unchanged."""
    path = tmp_path / "resnet18.pth"
    path.write_bytes(b"cut")
    model = torch.nn.Identity()  # the file fails before any tensor reaches a model
    with pytest.raises(DataError) as weights:
        load_backbone_weights(model, path, "backbone.weights")
    assert "download or copy it again" in weights.value.one_line() and "<run>" not in weights.value.one_line()
    with pytest.raises(DataError) as checkpoint:
        load_backbone_weights(model, path, "backbone.init_from", require_resflex=True)
    assert "another checkpoint of the run" in checkpoint.value.one_line()
