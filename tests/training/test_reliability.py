"""Reliability: bad configs fail early in one line, bad images are skipped or named, nothing is lost.

Config mistakes are checked in-process through the same ``train(cfg)`` the CLI
runs (the CLI's one-line rendering is covered in test_cli.py); crashes, SIGTERM
and NaN are injected into real CLI runs (tests/faults.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from resflex.errors import ConfigError, DataError, ResflexError, find_user_error
from resflex.train import train
from resflex.training.safety import AtomicCheckpointIO
from tests.conftest import RESUME_RUN, TINY, TINY_SYNTHETIC, make_image_folder, run_cli, train_run
from tests.faults import sigterm_at
from tests.test_configs import compose_train

BASE = ["backbone.name=test_resnet", "trainer.accelerator=cpu", "data.num_workers=0"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["backbone.name=resnet19"], "backbone.name"),
        (["pooling=pyramid", "pooling.levels=abc"], "pooling.levels"),
        (["pooling=pyramid", "pooling.levels=[0]"], "pooling.levels"),
        (["resolution.size=-3"], "resolution.size"),
        (["resolution.size=8"], "resolution.size"),
        (["resolution=random", "resolution.sizes=[]"], "resolution.sizes"),
        (["resolution=random", "resolution.sizes=[32,48]", "resolution.probs=[0.5,0.6]"], "resolution.probs"),
        (["data.batch_size=0"], "data.batch_size"),
        (["ckpt_path=/no/such/last.ckpt"], "ckpt_path"),
        (["eval.resolutions=[32,-1]"], "eval.resolutions"),
        (["optimizer.lr=abc"], "optimizer.lr"),
        (["optimizer.lr=-0.1"], "optimizer.lr"),
        (["data.num_workers=-1"], "data.num_workers"),
        (["data.num_workers=many"], "data.num_workers"),
        (["trainer.max_epochs=0"], "trainer.max_epochs"),
        (["trainer.max_epochs=true"], "trainer.max_epochs"),  # a bool is not a number
        (["seed=-1"], "seed"),
        (["model.net.dropout=1.5"], "model.net.dropout"),
        (["model.label_smoothing=abc"], "model.label_smoothing"),
        (["model.ema=true", "model.ema_decay=1"], "model.ema_decay"),
        (["data.augment.scale=abc"], "data.augment.scale"),
        # a FixRes phase's own augmentation is named where it was set, not as data.augment
        (["resolution=fixres", "resolution.final_augment.scale=[1.5,2.0]"], "resolution.final_augment.scale"),
        (
            ["resolution=fixres", "+resolution.final_augment.color_jitter=2"],
            "resolution.final_augment.color_jitter",
        ),
        (["data.eval_crop_pct=0"], "data.eval_crop_pct"),
        (["eval.sizes_every_epoch=maybe"], "eval.sizes_every_epoch"),
        (["backbone.weights=/no/such/weights.pth"], "backbone.weights"),
        (["data=imagefolder", "data.root=/no/such/folder"], "data.root"),
        (["trainer.precision=abc"], "trainer"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_bad_config_fails_before_any_data_is_read_naming_the_key(
    tmp_path: Path, overrides: list[str], key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_data(cfg: object) -> None:
        raise AssertionError("the data module was built: the mistake was found after the data was read")

    monkeypatch.setattr("resflex.train.build_datamodule", no_data)
    cfg = compose_train([*BASE, *overrides], tmp_path)
    with pytest.raises(Exception) as info:
        train(cfg)
    user_error = find_user_error(info.value)
    assert isinstance(user_error, ResflexError), repr(info.value)
    message = user_error.one_line()
    assert key in message and "\n" not in message, message
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "failed" and key in record["error"]
    assert not (tmp_path / "checkpoints").exists()  # no work was done


def test_data_root_without_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "train").mkdir(parents=True)
    (root / "train" / "loose.png").write_bytes(b"")
    cfg = compose_train([*BASE, "data=imagefolder", f"data.root={root}"], tmp_path / "run")
    with pytest.raises(Exception) as info:
        train(cfg)
    assert "no images found" in str(find_user_error(info.value))


def make_broken_folder(root: Path) -> list[str]:
    """A healthy folder plus a truncated JPEG, an empty PNG and a text file posing as an image."""
    make_image_folder(root, per_class=6, splits=("train", "val"))
    cats = root / "train" / "cats"
    noise = torch.randint(
        0, 256, (160, 200, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    Image.fromarray(noise.numpy()).save(cats / "full.jpg", quality=95)
    data = (cats / "full.jpg").read_bytes()
    (cats / "full.jpg").unlink()
    (cats / "truncated.jpg").write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    (cats / "empty.png").write_bytes(b"")
    (cats / "notes.jpg").write_text("this is not an image")
    return [str(cats / name) for name in ("empty.png", "notes.jpg", "truncated.jpg")]


def test_bad_images_are_skipped_counted_and_listed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """data.source.on_bad_image=skip (the default), in-process: the run completes; the files are listed
    and said."""
    bad = make_broken_folder(tmp_path / "images")
    run_dir = tmp_path / "run"
    args = ["data=imagefolder", f"data.root={tmp_path / 'images'}", *TINY, "data.batch_size=4", "logger=none"]
    with caplog.at_level(logging.WARNING, logger="resflex"):
        record = train_run(args, run_dir)
    assert record["status"] == "completed"
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    listed = set((run_dir / "bad_images.txt").read_text().split())
    assert set(bad[:2]) <= listed  # header failures: found when the folder is scanned
    assert listed <= set(bad)  # and nothing else
    said = [m for m in caplog.messages if "cannot read image" in m]
    assert said and all(any(path in m for path in bad) for m in said)


def test_a_file_skipped_again_is_said_and_listed_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every epoch meets a truncated file again: bad_images.txt and the console name it once, and only the
    first max_printed files are said."""
    from resflex.data.bad_images import BadImageError, BadImagePolicy

    listing = tmp_path / "bad_images.txt"
    policy = BadImagePolicy("skip", log_file=listing, max_printed=1)
    a, b = str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")
    with caplog.at_level(logging.WARNING, logger="resflex"):
        for path in (a, a, b, a, b):
            policy.handle(BadImageError(path, "image file is truncated"))
    assert listing.read_text().splitlines() == [a, b]
    assert policy.skipped() == [a, b]
    said = [m for m in caplog.messages if "cannot read image" in m]
    assert len(said) == 1 and a in said[0]


def test_bad_images_raise_names_the_file(tmp_path: Path) -> None:
    bad = make_broken_folder(tmp_path / "images")
    result = run_cli(
        [
            "data=imagefolder",
            f"data.root={tmp_path / 'images'}",
            "data.source.on_bad_image=raise",
            *TINY,
            f"hydra.run.dir={tmp_path / 'r'}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot read image" in errors[0] and any(path in errors[0] for path in bad)


def test_truncated_image_is_replaced_in_its_batch(tmp_path: Path) -> None:
    from resflex.data.bad_images import BadImagePolicy
    from resflex.data.datamodule import SizedDataset
    from resflex.data.datasets import ImageFolderSource
    from resflex.data.transforms import EvalTransform

    make_broken_folder(tmp_path / "images")
    log_file = tmp_path / "bad.txt"
    source = ImageFolderSource(str(tmp_path / "images"), bad_image_log=str(log_file))
    train_split = source.splits["train"]
    index = next(i for i, (path, _) in enumerate(train_split.samples) if path.endswith("truncated.jpg"))
    dataset = SizedDataset(train_split, EvalTransform(), bad_images=source.bad_images)
    image, _ = dataset[(index, 24, 20)]
    assert image.shape == (3, 24, 20)  # the batch keeps its shape
    assert log_file.read_text().split()[-1].endswith("truncated.jpg")
    strict = SizedDataset(train_split, EvalTransform(), bad_images=BadImagePolicy("raise"))
    with pytest.raises(DataError, match="truncated.jpg"):
        strict[(index, 24, 20)]


def test_unusable_class_folder_is_reported_up_front(tmp_path: Path) -> None:
    from resflex.data.datasets import ImageFolderSource

    root = make_image_folder(tmp_path / "images", splits=("train",))
    broken = root / "train" / "zebras"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"")
    (broken / "b.jpg").write_text("nope")
    with pytest.raises(DataError, match="no readable image.*zebras"):
        ImageFolderSource(str(root))


@pytest.mark.parametrize("content", [[], ["notes.txt", "photo.heic"]], ids=["empty", "no image file"])
def test_a_class_folder_without_image_files_is_named(tmp_path: Path, content: list[str]) -> None:
    """Not torchvision's "Found no valid file for the classes ..." under "no images found under
    train/", which read as if the other classes' images were missing too."""
    from resflex.data.datasets import ImageFolderSource

    root = make_image_folder(tmp_path / "images", splits=("train",))
    (root / "train" / "zebras").mkdir()
    for name in content:
        (root / "train" / "zebras" / name).write_text("not an image")
    with pytest.raises(DataError) as info:
        ImageFolderSource(str(root))
    message = info.value.one_line()
    assert f"class folder(s) with no image file under {root / 'train'}: zebras" in message
    assert ".png" in message and "no images found" not in message and "cats" not in message


def test_image_modes_and_exif_orientation(tmp_path: Path) -> None:
    from tests.conftest import load_rgb

    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when displayed
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(tmp_path / "rotated.jpg").size == (20, 40)
    Image.new("I;16", (5, 5), 30000).save(tmp_path / "deep.png")
    value = load_rgb(tmp_path / "deep.png").getpixel((0, 0))
    assert value[0] == round(30000 / 65535 * 255)


def test_atomic_checkpoint_never_leaves_a_partial_file(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"weights": torch.ones(3)}, path)
    with pytest.raises(Exception):  # noqa: B017 - torch.save of a lambda fails mid-write
        io.save_checkpoint({"weights": torch.zeros(3), "bad": lambda: None}, path)
    assert torch.equal(io.load_checkpoint(path)["weights"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_full_disk_while_saving_is_named_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's zip writer reports a full disk as "unexpected pos ..." (a page of traceback): one line that
    says disk full, how much is free and that the earlier checkpoint is intact."""
    import shutil
    from types import SimpleNamespace

    from resflex.errors import DataError

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"weights": torch.ones(3)}, path)

    def full_disk(obj: object, handle) -> None:
        handle.write(b"x" * 4096)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 4032")

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(total=10**9, used=10**9, free=0))
    with pytest.raises(DataError, match="disk full while saving .*0 MB free.*intact") as info:
        io.save_checkpoint({"weights": torch.zeros(3)}, path)
    assert "\n" not in str(info.value) and "ckpt_path=last" in str(info.value)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(path)["weights"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_sigterm_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SIGTERM run is a CLI run (its exit code and message are the point); the uninterrupted run and
    the resume run in-process (``train``), all three on one thread so that their numbers can agree."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the CLI run's thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_run(RESUME_RUN, tmp_path / "whole")["status"] == "completed"
        last = torch.load(
            tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu"
        )
        assert last["epoch"] == 1 and last["global_step"] == 10  # the final weights, whichever epoch was best

        run_dir = tmp_path / "killed"
        killed = run_cli(
            [
                *RESUME_RUN,
                *sigterm_at(7),
                f"hydra.run.dir={run_dir}",
            ],
            cwd=tmp_path,
        )
        assert killed.returncode == 143, killed.stderr[-3000:]
        assert "interrupted" in killed.stderr and "ckpt_path=last" in killed.stderr
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
        saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
        assert saved["global_step"] == 7  # mid-epoch 2

        resumed = train_run([*RESUME_RUN, "ckpt_path=last"], run_dir)
    finally:
        torch.set_num_threads(threads)
    assert resumed["status"] == "completed"
    expected = json.loads((tmp_path / "whole" / "metrics.json").read_text())["metrics"]
    got = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for key in ("val/loss", "val/acc", "train/loss", "train/megapixels"):  # the pixel count resumes too
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


def test_nan_guard_on_cpu_stops_at_the_bad_step_itself_even_the_first() -> None:
    """On the CPU reading the flag costs no device sync: the guard raises at the batch that went bad
    (not at the next logging interval or validation), and a NaN at the very first step counts."""
    from types import SimpleNamespace

    from resflex.training.safety import NonFiniteLossError, NonFiniteLossGuard

    guard = NonFiniteLossGuard()
    trainer = SimpleNamespace(global_step=1, log_every_n_steps=50)  # the first batch has run: step 0
    guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.5)}, None, 0)  # type: ignore[arg-type]
    with pytest.raises(NonFiniteLossError, match="NaN/inf at step 0"):
        guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 0)  # type: ignore[arg-type]
    later = NonFiniteLossGuard()
    trainer.global_step = 3  # not a logging step: still raised at once, naming the batch's step
    later.on_train_batch_end(trainer, None, torch.tensor(1.0), None, 1)  # type: ignore[arg-type]
    with pytest.raises(NonFiniteLossError, match="NaN/inf at step 2"):
        later.on_train_batch_end(trainer, None, torch.tensor(float("inf")), None, 2)  # type: ignore[arg-type]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            *RESUME_RUN,
            "+callbacks.fault._target_=tests.faults.NanWeightsAtStep",
            "+callbacks.fault.step=7",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "NaN/inf at step 7" in errors[0], result.stderr[-2000:]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "failed" and "step 7" in record["error"]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 5  # end of the first epoch, before the NaN
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values() if t.is_floating_point())


def test_config_error_class_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


class _RunsCode:
    def __reduce__(self):  # unpickling would call os.system
        import os

        return (os.system, ("touch HACKED",))


def test_resume_from_a_checkpoint_that_runs_code_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode()}, evil)
    result = run_cli(
        [*TINY, *TINY_SYNTHETIC, f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refusing to resume" in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "HACKED").exists()


def test_resume_from_a_checkpoint_that_does_not_fit_is_one_line(tmp_path: Path) -> None:
    """Another model's checkpoint, a plain weights file, ckpt_path=best: Lightning answered each with a
    page of traceback (size mismatch, KeyError, ValueError); now one line with the way to use the file."""
    from resflex.errors import find_user_error

    source = tmp_path / "source"
    assert train_run([*RESUME_RUN, "trainer.max_epochs=1"], source)["status"] == "completed"
    ckpt = source / "checkpoints" / "last.ckpt"
    weights = tmp_path / "weights.pth"
    torch.save(torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"], weights)
    # resume_check=false: past the config check (resflex.resume_check), to the weights themselves
    past_the_config_check = ["resume_check=false", f"ckpt_path={ckpt}"]
    cases = [
        (["pooling.levels=[1,2]", *past_the_config_check], "2 of another shape (e.g. model.head"),
        (["pooling=avg", *past_the_config_check], "holds another model's weights"),
        ([f"ckpt_path={weights}"], "is a weights file, not a training checkpoint"),
        (["ckpt_path=best"], "ckpt_path=best names no file to resume from"),
    ]
    for i, (overrides, message) in enumerate(cases):
        with pytest.raises(Exception) as info:
            train_run([*RESUME_RUN, *overrides], tmp_path / f"run{i}")
        error = find_user_error(info.value)
        assert error is not None and message in error.one_line(), (overrides, info.value)
        assert "\n" not in error.one_line()


@pytest.mark.parametrize(
    ("saved_file", "checkpoint"),
    [(None, False), ("last.ckpt", True), ("notes.txt", False), ("best-epoch000-acc0.5000.ckpt", True)],
)
def test_what_a_stopped_run_says_depends_on_what_it_saved(
    saved_file: str | None,
    checkpoint: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C before training began claimed "checkpoint saved" with no checkpoints folder; a failure after
    a checkpoint was written (a bad image with on_bad_image=raise) said nothing of resuming. Only a
    ``*.ckpt`` is a checkpoint saved: a ``checkpoints/`` made but holding none would get a hint naming a
    ``ckpt_path=last`` that does not exist, while ``ckpt_path=last`` falls back to the newest readable
    checkpoint, so a ``best-*.ckpt`` alone is one."""
    import resflex.train as train_module
    from resflex.errors import DataError
    from tests.test_configs import compose_train

    cfg = compose_train([], tmp_path / "run")
    if saved_file:
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        (tmp_path / "run" / "checkpoints" / saved_file).write_bytes(b"saved")

    def stop(cfg: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", stop)
    with pytest.raises(SystemExit) as exit_info:
        train_module.run_task(cfg, [])
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    if checkpoint:
        assert "interrupted: checkpoint saved in" in err and "ckpt_path=last" in err
    else:
        assert err.strip() == "interrupted before training began: nothing saved"

    def bad_image(cfg: object) -> None:
        raise DataError("cannot read image x.jpg: truncated", hint="fix or remove the file")

    monkeypatch.setattr(train_module, "train", bad_image)
    with pytest.raises(SystemExit) as exit_info:
        train_module.run_task(cfg, [])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: cannot read image x.jpg")
    assert (lines[0].startswith("checkpoints kept in") and "ckpt_path=last" in lines[0]) == checkpoint


def test_a_split_with_other_class_folders_says_which_are_where(tmp_path: Path) -> None:
    from resflex.data.datasets import ImageFolderSource

    root = make_image_folder(tmp_path / "images", classes=("cats", "dogs", "owls"), splits=("train",))
    make_image_folder(root, classes=("cats", "lions"), splits=("val",))
    with pytest.raises(DataError) as info:
        ImageFolderSource(str(root))
    assert "val/ has different class folders than train/: lions only in val/; dogs, owls only in train/" in (
        info.value.one_line()
    )


def test_ctrl_c_while_a_checkpoint_is_written_stays_an_interruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C mid-write: torch's zip writer fails on the way out with "unexpected pos" (a RuntimeError
    whose context is the KeyboardInterrupt). Re-raised as such, it hid the interruption: the run was
    "failed", with two tracebacks, its epoch's checkpoint lost and no resume line."""
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"weights": torch.ones(3)}, path)

    def interrupted(obj: object, handle) -> None:
        handle.write(b"x" * 4096)
        try:
            raise KeyboardInterrupt
        finally:  # what the zip writer's cleanup does while the interrupt unwinds
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 4032")

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"weights": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(path)["weights"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_bad_image_raised_in_a_loader_worker_is_the_same_one_line_error() -> None:
    """on_bad_image=raise with loader workers: torch rebuilds a worker's exception from its class and
    one text, and BadImageError took two arguments: a RuntimeError with the worker's traceback (exit 1)."""
    from torch.utils.data import DataLoader, Dataset

    from resflex.data.bad_images import BadImageError

    class OneBadImage(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, index: int) -> torch.Tensor:
            raise BadImageError("/data/cat/cut.png", "image file is truncated")

    with pytest.raises(BadImageError) as info:
        next(iter(DataLoader(OneBadImage(), num_workers=1)))
    assert info.value.one_line() == (
        "cannot read image /data/cat/cut.png: image file is truncated "
        "(hint: fix or remove the file, or set data.source.on_bad_image=skip)"
    )
