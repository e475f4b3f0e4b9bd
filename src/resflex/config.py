"""Where the Hydra configs live, the trainer group's schema, and checks on group choices before Hydra runs.

Hydra answers ``pooling=foo`` with a multi-line "Could not find" report; resflex
answers with one line that lists the choices, before any work starts.

The ``trainer`` group starts from ``trainer/lightning``: every ``pytorch_lightning.Trainer``
argument with Lightning's own default, read from its signature (:func:`register_trainer_schema`,
run when this module is imported, so any ``hydra.compose`` after ``from resflex.config import
CONFIG_DIR`` finds it). ``configs/trainer/default.yaml`` then states only what resflex changes,
and every Lightning argument stays a plain override (``trainer.max_time=...``, no ``+``).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resflex.errors import ConfigError

CONFIG_DIR = Path(os.environ.get("RESFLEX_CONFIG_DIR", Path(__file__).resolve().parents[2] / "configs"))


#: ``pytorch_lightning.Trainer`` arguments that are objects resflex builds from its own groups
#: (:func:`resflex.build.build_trainer`): not trainer keys
TRAINER_OBJECTS = ("logger", "callbacks")
TRAINER_TARGET = "pytorch_lightning.Trainer"


def trainer_schema() -> type:
    """A dataclass of every ``pytorch_lightning.Trainer`` argument (but :data:`TRAINER_OBJECTS`) with
    Lightning's default, and ``_target_`` for ``instantiate``: Lightning's defaults, stated once, by it."""
    import pytorch_lightning as pl

    fields: list[tuple[str, Any, Any]] = [("_target_", str, dataclasses.field(default=TRAINER_TARGET))]
    for name, param in inspect.signature(pl.Trainer.__init__).parameters.items():
        if name == "self" or name in TRAINER_OBJECTS or param.default is inspect.Parameter.empty:
            continue
        if param.default is None or isinstance(param.default, bool | int | float | str):
            fields.append((name, Any, dataclasses.field(default=param.default)))
    return dataclasses.make_dataclass("LightningTrainer", fields)


def register_trainer_schema() -> None:
    """Store :func:`trainer_schema` as the config ``trainer/lightning`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="trainer", name="lightning", node=trainer_schema())


def group_options(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    folder = config_dir / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def check_group_choices(argv: Sequence[str], config_dir: Path = CONFIG_DIR) -> None:
    """Raise :class:`ConfigError` for ``group=value`` overrides naming a config file that does not exist."""
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if "." in key or "/" in key or key.startswith("hydra") or not (config_dir / key).is_dir():
            continue
        if value in ("", "null") or "(" in value or "*" in value:  # sweeps like range(...)/glob(...)
            continue
        options = group_options(key, config_dir)
        if value.startswith("[") and value.endswith("]"):  # several options of one group: logger=[a,b]
            value = value[1:-1]
        for choice in value.split(","):
            choice = choice.strip()
            if choice and choice not in options:
                raise ConfigError(
                    f"unknown {key} {choice!r} ({key}={choice})",
                    hint=f"choose one of: {', '.join(options)}",
                )


def exit_on_unknown_group_choice(argv: Sequence[str]) -> None:
    """For console entry points: one ``error:`` line and exit code 2 instead of Hydra's report."""
    import sys

    try:
        check_group_choices(argv)
    except ConfigError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        raise SystemExit(2) from None


def prepare_cli(argv: Sequence[str]) -> None:
    """What every console entry point does before Hydra runs: check group choices, register resolvers."""
    from resflex.sweeps import register_resolvers

    exit_on_unknown_group_choice(argv)
    register_resolvers()  # ${resflex.job_dir:...} names sweep job folders (configs/hydra/default.yaml)


register_trainer_schema()  # trainer/lightning for every composition (CLIs, tests, notebooks)
