"""Where the Hydra configs live, and checks on command-line group choices before Hydra runs.

Hydra answers ``pooling=foo`` with a multi-line "Could not find" report; resflex
answers with one line that lists the choices, before any work starts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from resflex.errors import ConfigError

CONFIG_DIR = Path(os.environ.get("RESFLEX_CONFIG_DIR", Path(__file__).resolve().parents[2] / "configs"))


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
