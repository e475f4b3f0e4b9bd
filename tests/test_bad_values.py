"""Every number of the training config, given a word or a negative, is refused in one line before the first
training step: the keys resflex owns in its constructors and checks, Lightning's trainer and callback keys
through the trainer and callback builders, the synthetic data's keys. A key added without a check fails
here (a traceback from deep inside, or a run that trains on a nonsense value)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
from omegaconf import DictConfig, ListConfig, OmegaConf

from resflex.errors import ResflexError, find_user_error
from tests.conftest import TINY, TINY_SYNTHETIC
from tests.test_configs import compose_train
from tests.test_eval_script import compose_config, train_tiny_run

BASE = [*TINY, *TINY_SYNTHETIC, "logger=none"]


def base(option: str | None) -> list[str]:
    """The tiny run with ``option``; a schedule other than fixed has no ``resolution.size``."""
    if option is None:
        return BASE
    keep = [o for o in BASE if not (option.startswith("resolution=") and o.startswith("resolution."))]
    return [*keep, option]


#: free text, or set by the run: any string is a value
FREE_TEXT = {
    "trainer.model_registry",
    "logger.csv.name",
    "logger.csv.version",
    "task_name",
    "data.name",
    "callbacks.model_checkpoint.filename",
    "callbacks.last_checkpoint.filename",
}


def leaves(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every plain leaf: no interpolation, list or switch (the CLI checks switches),
    and not Hydra's own node. A null leaf is a number or a word left unset: both bad values apply."""
    for key in node:
        if key == "hydra" or str(key).startswith("_"):
            continue
        child = node._get_node(key)
        if child is None or child._is_interpolation():
            continue
        if isinstance(child, DictConfig):
            yield from leaves(child, f"{prefix}{key}.")
        elif not isinstance(child, ListConfig):
            value = child._value()
            if not isinstance(value, bool) and value != "???":
                yield f"{prefix}{key}", value


#: group options whose own keys are swept too (data=imagefolder/fashion_mnist read a folder first, and
#: resolution=naflex needs its backbone: their keys have tests of their own)
OPTIONS = [
    *(f"resolution={o}" for o in ("progressive", "random", "multiscale", "multigrid", "fixres")),
    *(f"optimizer={o}" for o in ("sgd", "lamb", "lion")),
    *(f"scheduler={o}" for o in ("step", "plateau", "constant")),
    *(f"finetune={o}" for o in ("linear_probe", "gradual")),
    *(f"pooling={o}" for o in ("avg", "max", "avgmax", "gem")),
    "logger=csv",
]


def bad_values() -> list[tuple[str, str, str | None]]:
    """(key, bad value, the group option it needs or None): every leaf of the default config, then the
    leaves each option in :data:`OPTIONS` adds or changes under its group."""
    default = dict(leaves(compose_train(BASE, Path("unused"))))
    keyed = [(key, value, None) for key, value in default.items()]
    for option in OPTIONS:
        group = option.split("=")[0]
        for key, value in leaves(compose_train(base(option), Path("unused"))):
            if key.split(".")[0] == group and default.get(key, object()) != value:
                keyed.append((key, value, option))
    cases: list[tuple[str, str, str | None]] = []
    for key, value, option in keyed:
        if key in FREE_TEXT:
            continue
        if value is None or isinstance(value, int | float):
            cases += [(key, "abc", option), (key, "-7", option)]
        elif isinstance(value, str):
            cases.append((key, "zzz_bad", option))
    return cases


CASES = bad_values()


def test_the_sweep_covers_the_config() -> None:
    """The cases come from the composed configs (a broken walk would make the test below vacuous)."""
    keys = {key for key, _, _ in CASES}
    assert len(keys) > 60
    assert {"trainer.accumulate_grad_batches", "data.prefetch_factor", "model.ema_decay"} <= keys
    assert {"data.source.noise", "callbacks.model_checkpoint.mode", "pooling.level_scale_init"} <= keys
    assert {"optimizer.momentum", "resolution.end_size", "finetune.unfreeze_warmup_epochs"} <= keys


def user_error_of(call: Callable[[], object], what: str) -> ResflexError:
    """The one-line error ``call`` (quiet) must raise, found through the exception chain as the CLI does."""
    logging.disable(logging.CRITICAL)
    try:
        with pytest.raises(BaseException) as info:
            call()
    finally:
        logging.disable(logging.NOTSET)
    error = find_user_error(info.value)
    assert error is not None, f"{what}: {type(info.value).__name__}: {info.value}"
    return error


class FitStarted(Exception):
    """Training would have started: the bad value got through every check."""


@pytest.mark.parametrize(
    ("key", "value", "option"), CASES, ids=[f"{o + ' ' if o else ''}{k}={v}" for k, v, o in CASES]
)
def test_a_bad_value_is_one_line_before_training(
    key: str, value: str, option: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resflex.train import train

    def refuse_to_fit(*args: object, **kwargs: object) -> None:
        raise FitStarted(f"{key}={value} reached trainer.fit")

    monkeypatch.setattr(pl.Trainer, "fit", refuse_to_fit)
    cfg = compose_train([*base(option), f"{key}={value}"], tmp_path)
    saved = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    error = user_error_of(lambda: train(saved), f"{key}={value}")
    assert key.rsplit(".", 1)[0].split(".")[0] in error.one_line(), error.one_line()


#: eval, predict and export: what each is called with, and the keys that name files (any text is a value)
COMMANDS = {
    "eval": [],
    "predict": ["input=IMAGES", "output=OUT/preds.csv"],
    "export": ["output=OUT/model.onnx"],
}
PATHS = {"ckpt_path", "run_config", "input", "output", "task_name"}


def command_cases() -> list[tuple[str, str, str]]:
    cases = []
    for command, extra in COMMANDS.items():
        cfg = compose_config(command, ["ckpt_path=RUN", *extra], Path("unused"))
        for key, value in leaves(cfg):
            if key in PATHS:
                continue
            if value is None or isinstance(value, int | float):
                cases += [(command, key, "abc"), (command, key, "-7")]
            elif isinstance(value, str):
                cases.append((command, key, "zzz_bad"))
        for key in ("eval.resolutions", "predict.size", "check.sizes"):  # lists and nulls: a word inside
            if OmegaConf.select(cfg, key, default="absent") != "absent":
                cases.append((command, key, "[abc]"))
    return cases


COMMAND_CASES = command_cases()


def test_the_command_sweep_covers_their_configs() -> None:
    keys = {key for _, key, _ in COMMAND_CASES}
    assert {
        "predict.device",
        "predict.print_rows",
        "eval.limit_batches",
        "eval.precision",
        "check.atol",
    } <= keys


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("bad_values") / "run"
    assert train_tiny_run(run_dir)["status"] == "completed"
    return run_dir


@pytest.mark.parametrize(
    ("command", "key", "value"), COMMAND_CASES, ids=[f"{c} {k}={v}" for c, k, v in COMMAND_CASES]
)
def test_a_bad_value_of_eval_predict_or_export_is_one_line_and_writes_nothing(
    command: str, key: str, value: str, tiny_run: Path, tmp_path: Path
) -> None:
    """Each was a traceback (``predict.device=zzz``, ``eval.limit_batches=abc``, ``opset=-7``), an
    unrelated error (``check.atol=-7``: "differs from the eager model"), or silently used
    (``predict.progress=zzz``, ``eval.precision=zzz``)."""
    from resflex.evaluate import evaluate
    from resflex.export import run_export
    from resflex.predict import predict

    task = {"eval": evaluate, "predict": predict, "export": run_export}[command]
    images = tiny_run.parent / "images"
    if not images.exists():
        from tests.conftest import make_image_folder

        make_image_folder(images, splits=("val",), per_class=2)
    extra = [
        arg.replace("IMAGES", str(images / "val")).replace("OUT", str(tmp_path)) for arg in COMMANDS[command]
    ]
    cfg = compose_config(command, [f"ckpt_path={tiny_run}", *extra, f"{key}={value}"], tmp_path / "job")
    error = user_error_of(lambda: task(cfg), f"{command} {key}={value}")
    assert key.split(".")[-1] in error.one_line(), error.one_line()
    assert not list(tmp_path.glob("preds.csv")) and not list(tmp_path.glob("model.onnx"))
