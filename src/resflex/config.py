"""Where the Hydra configs live, the trainer group's schema, ``--help``, and the command line checked
before Hydra runs (:func:`prepare_cli`, every console entry point's first step).

Hydra answers a mistake on the command line with a multi-line report, or a traceback from deep in
the run: ``pooling=foo`` ("Could not find"), ``data.root=~/x`` (a lexer's exception), a mistyped
key (a page suggesting ``+key``), ``model.ema=maybe`` (taken as true), a run folder on a read-only
disk (Hydra's own ``mkdir``). resflex answers each with one line and a hint, before any work
starts: :func:`check_override_syntax`, :func:`check_group_choices`, :func:`check_override_keys`
(with :func:`check_switches`), :func:`check_groups_of_command`, :func:`check_sweep_has_multirun`,
:func:`check_output_folder`.

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
from resflex.validation import unwritable_reason

CONFIG_DIR = Path(os.environ.get("RESFLEX_CONFIG_DIR", Path(__file__).resolve().parents[2] / "configs"))


#: Hydra's page on the override grammar (what ``key=value`` may contain)
OVERRIDE_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"

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
        options = group_options(key, config_dir)
        if value == "" and not arg.startswith("~"):  # Hydra: "Could not find 'pooling/'", and a page
            raise ConfigError(f"{key}= has no value", hint=f"choose one of: {', '.join(options)}")
        if value == "null" or "(" in value or "*" in value:  # sweeps like range(...)/glob(...)
            continue
        if value.startswith("[") and value.endswith("]"):  # several options of one group: logger=[a,b]
            value = value[1:-1]
        for choice in value.split(","):
            choice = choice.strip()
            if choice and choice not in options:
                raise ConfigError(
                    f"unknown {key} {choice!r} ({key}={choice})",
                    hint=f"choose one of: {', '.join(options)}",
                )


def _grammar_cause(message: str) -> str:
    """Hydra's parse error in a few words: the character its lexer stopped at, or its parser's line."""
    lines = [line for line in message.splitlines() if line.strip() and not line.startswith("See https")]
    if lines and lines[0].startswith("LexerNoViableAltException") and len(lines) > 1 and "^" in lines[1]:
        column = lines[1].index("^")
        if column < len(lines[0]):
            return f"Hydra's grammar has no place for {lines[0][column]!r} there"
    lines = [line for line in lines if not line.startswith("Error parsing override")]
    cause = "; ".join(line.strip() for line in lines) or "Hydra's grammar cannot read it"
    return cause if len(cause) <= 120 else cause[:117] + "..."


def check_override_syntax(argv: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for a ``key=value`` argument Hydra's override grammar cannot read.

    Hydra's own answer is several lines about a lexer (``LexerNoViableAltException: data.root=~/x``)
    and a traceback hint; the usual cause is a value the shell passed on as typed: ``~`` (the shell
    expands it only at the start of a word, and ``data.root=~/x`` starts with ``data``), a bracket
    left open. Flags (``-m``, ``--cfg job``) are Hydra's to read.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as exc:
            key, _, value = arg.partition("=")
            if value.startswith("~"):  # the shell expands ~ only at the start of a word
                hint = f"{key}=$HOME{value[1:]}, or quoted for Hydra: '{key}=\"{value}\"'"
            else:
                quoted = f"'{key}=\"...\"'"
                hint = f"close brackets and quotes; quote special characters, {quoted}: {OVERRIDE_GRAMMAR}"
            raise ConfigError(
                f"cannot read the override {arg!r}: {_grammar_cause(str(exc))}", hint=hint
            ) from None


def exit_on_unknown_group_choice(argv: Sequence[str]) -> None:
    """For console entry points: one ``error:`` line and exit code 2 instead of Hydra's report."""
    import sys

    try:
        check_override_syntax(argv)
        check_group_choices(argv)
    except ConfigError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        raise SystemExit(2) from None


def check_groups_of_command(argv: Sequence[str], config_name: str, config_dir: Path = CONFIG_DIR) -> None:
    """Raise :class:`ConfigError` for ``group=option`` naming a group this command's config does not
    compose (``eval.py pooling=avg``, ``predict.py data=imagefolder``). Hydra's answer is "Could not
    override 'pooling'. No match in the defaults list", with a hint to append it (``+pooling=avg``)
    that would add a node nothing reads: eval, predict and export build the model from the run's own
    config. Only for entry points that are not training (training composes every group)."""
    if config_name == "train":
        return
    named = []
    for arg in argv:
        if arg.startswith(("-", "+", "~")) or "=" not in arg:
            continue
        key = arg.split("=", 1)[0]
        if "." not in key and "/" not in key and not key.startswith("hydra") and (config_dir / key).is_dir():
            named.append(key)
    if not named:
        return
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            cfg = compose(config_name, return_hydra_config=True)
        groups = set(cfg.hydra.runtime.choices)
    except Exception:  # a problem with the config itself: the command reports it
        return
    for key in named:
        if key not in groups:
            own = ", ".join(sorted(g for g in groups if not g.startswith("hydra")))
            raise ConfigError(
                f"{config_name}.py has no {key} group ({key}=...): it builds the model from the "
                "checkpoint's run config",
                hint=f"the groups it has: {own}; its keys: --cfg job",
            )


def check_sweep_has_multirun(argv: Sequence[str], config_name: str, config_dir: Path = CONFIG_DIR) -> None:
    """Raise :class:`ConfigError` for a sweep (``pooling=avg,max``, ``seed=range(3)``) in a command
    that runs once: no ``-m`` and no config that sets ``hydra.mode: MULTIRUN`` (``hparams_search``).

    Hydra's answer is a five-line page ("Ambiguous value for argument") ending in a traceback hint;
    the usual cause is a forgotten ``-m``. The composition that reads ``hydra.mode`` runs only when
    an override is a sweep, so a plain run pays nothing for it.
    """
    if "-m" in argv or "--multirun" in argv or any(arg.split("=", 1)[0] in PRINT_ONLY_FLAGS for arg in argv):
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in argv if not a.startswith("-") and "=" in a]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception:  # check_override_syntax has said why
        return
    sweeps = [arg for arg, override in zip(args, overrides, strict=True) if override.is_sweep_override()]
    if not sweeps:
        return
    from hydra import compose, initialize_config_dir
    from hydra.types import RunMode

    plain = [arg for arg in args if arg not in sweeps]
    try:
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=plain, return_hydra_config=True)
        if cfg.hydra.mode == RunMode.MULTIRUN:
            return
    except Exception:  # a problem with the config itself: the run reports it
        return
    key, _, value = sweeps[0].partition("=")
    hint = "add -m to sweep"
    if "(" not in value and not (config_dir / key.lstrip("+")).is_dir():  # a value list, not a group's
        hint += f"; a list is {key}=[{value}], a text with commas is quoted: '{key}=\"{value}\"'"
    raise ConfigError(f"{sweeps[0]} is a sweep (one job per value), and this command runs once", hint=hint)


def _split_overrides(argv: Sequence[str], config_dir: Path) -> tuple[list[str], list[str], list[str]] | None:
    """(group choices as typed, first choice of a sweep; dotted keys set; keys added with ``+``), or None
    when the command picks another config (``--config-name``/``--config-dir``) and nothing can be said."""
    groups: list[str] = []
    keys: list[str] = []
    added: list[str] = []
    for arg in argv:
        if arg.startswith(("--config-name", "-cn", "--config-dir", "-cd", "--config-path", "-cp")):
            return None
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        bare = key.lstrip("+")
        if bare.startswith(("hydra", "~")) or "@" in bare or "/" in bare:
            continue
        if "." not in bare and (config_dir / bare).is_dir():
            choice = value.strip("[]").split(",")[0].strip()
            if choice and "(" not in choice and "*" not in choice:
                groups.append(f"{key}={choice}")
            continue
        (added if key.startswith("+") else keys).append(bare)
    return groups, keys, added


def _has_key(cfg: Any, key: str) -> bool:
    from omegaconf import DictConfig, OmegaConf

    absent = object()
    try:
        if OmegaConf.select(cfg, key, default=absent) is not absent:
            return True
    except Exception:  # an interpolation that cannot resolve yet: not a typo to report here
        return True
    parent_key, _, last = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    # keys(), not `in`: a key whose value is ??? (filled in later) is "not in" a DictConfig, yet it exists
    return isinstance(parent, DictConfig) and last in parent.keys()  # noqa: SIM118


def _closest(cfg: Any, key: str, cutoff: float) -> str | None:
    """The existing key nearest to ``key`` among the siblings under its longest existing prefix."""
    import difflib

    from omegaconf import DictConfig, OmegaConf

    parts = key.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        prefix = ".".join(parts[:depth])
        node = OmegaConf.select(cfg, prefix, default=None) if prefix else cfg
        if isinstance(node, DictConfig):
            names = [str(k) for k in node.keys()]  # noqa: SIM118 (keys whose value is ??? too)
            match = difflib.get_close_matches(parts[depth], names, n=1, cutoff=cutoff)
            return ".".join([*parts[:depth], match[0]]) if match else None
    return None


#: keys whose default is true or false but that take more: Lightning's ``fast_dev_run=5`` (batches),
#: ``deterministic=warn`` and ``ModelCheckpoint(save_last="link")``
NOT_ONLY_SWITCHES = frozenset(
    {
        "trainer.fast_dev_run",
        "trainer.deterministic",
        "callbacks.model_checkpoint.save_last",
        "callbacks.last_checkpoint.save_last",
    }
)


def check_switches(argv: Sequence[str], cfg: Any) -> None:
    """Raise :class:`ConfigError` for ``key=value`` where the key is a switch (true/false in the
    composed config) and the value is neither: ``backbone.pretrained=maybe`` would reach Python as a
    non-empty string, which is true, and ``eval.bn_calibration=no`` would turn calibration *on*."""
    from omegaconf import OmegaConf

    for arg in argv:
        key, _, value = arg.partition("=")
        if not value or arg.startswith(("-", "+", "~")) or key.startswith("hydra") or "$" in value:
            continue
        try:
            default = OmegaConf.select(cfg, key, default=None)
        except Exception:  # an interpolation that cannot resolve yet
            continue
        words = [word.strip().lower() for word in value.split(",")]  # a sweep: each value
        if key in NOT_ONLY_SWITCHES or not isinstance(default, bool):
            continue
        if any(word not in ("true", "false", "null") for word in words):
            raise ConfigError(
                f"{key}={value} is invalid: expected true or false", hint=f"{key}=true or {key}=false"
            )


def check_override_keys(argv: Sequence[str], config_name: str, config_dir: Path = CONFIG_DIR) -> None:
    """Raise :class:`ConfigError` for ``a.b=v`` naming a key the composed config does not have (Hydra's
    answer is a page that suggests ``+a.b=v``, which would add a key nothing reads), with the nearest
    key as the hint; and for ``+a.b=v`` when that key is a near-miss of an existing one
    (``+data.batchsize`` for ``data.batch_size``). ``+`` for a genuinely new key (extra arguments such
    as ``+optimizer.betas``) stays allowed. The config is composed with the command's group choices."""
    split = _split_overrides(argv, config_dir)
    if split is None or not (split[1] or split[2]):
        return
    groups, keys, added = split
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=groups)
    except Exception:  # a problem with the choices themselves: Hydra reports it
        return
    for key in keys:
        if not _has_key(cfg, key):
            near = _closest(cfg, key, cutoff=0.6)
            raise ConfigError(
                f"unknown config key {key} ({key}=...)",
                hint=f"did you mean {near}?" if near else f"the keys: --cfg job; +{key}=... adds a new one",
            )
    check_switches(argv, cfg)
    for key in added:
        near = None if _has_key(cfg, key) else _closest(cfg, key, cutoff=0.8)
        if near is not None and near != key:
            raise ConfigError(
                f"+{key} adds a key nothing reads, next to the existing {near}",
                hint=f"{near}=... (without +)",
            )


def config_groups_help(config_dir: Path = CONFIG_DIR) -> str:
    """The ``--help`` lines of the groups this command composes, each with its options and this
    command's choice starred (``pooling  avg, avgmax, gem, max, pyramid*``).

    Why not Hydra's ``$APP_CONFIG_GROUPS``: it lists every folder of the search path, the internal
    ``_shared`` and the trainer's ``lightning`` schema included, and says nothing of which option a
    command picks. Read from the composition (``hydra.runtime.choices``) when there is one.
    """
    from hydra.core.hydra_config import HydraConfig

    choices: dict[str, Any] = {}
    if HydraConfig.initialized():
        choices = dict(HydraConfig.get().runtime.choices)
    groups = [g for g in choices if not g.startswith(("hydra", "_"))] or [
        p.name for p in sorted(config_dir.iterdir()) if p.is_dir() and not p.name.startswith(("hydra", "_"))
    ]
    width = max(len(group) for group in groups) + 2
    lines = []
    for group in sorted(groups):
        chosen = choices.get(group)
        options = [f"{o}*" if o == chosen else o for o in group_options(group, config_dir)]
        lines.append(f"{group:<{width}}{', '.join(options)}")
    return "\n".join(lines)


def command_name() -> str:
    """How this command was typed, for ``--help``'s first line: ``python scripts/eval.py`` or an entry
    point (``resflex-eval``). Not ``task_name``, which an experiment preset renames (its runs' folder),
    nor Hydra's job name (the module, ``evaluate``)."""
    from resflex.resume_check import launch_command

    return " ".join(launch_command())


def register_help_resolver() -> None:
    """``${resflex.config_groups:}`` and ``${resflex.command:}`` in ``configs/hydra/default.yaml``'s help
    template."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("resflex.config_groups"):
        OmegaConf.register_new_resolver("resflex.config_groups", config_groups_help, use_cache=False)
    if not OmegaConf.has_resolver("resflex.command"):
        OmegaConf.register_new_resolver("resflex.command", command_name, use_cache=False)


#: flags after which a command only prints (its help, its config) and writes no run folder
PRINT_ONLY_FLAGS = (
    "--help",
    "-h",
    "--hydra-help",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
)


def _first_job_overrides(argv: Sequence[str]) -> list[str] | None:
    """The overrides of a sweep's first job (each swept key at its first value); None when a value
    is a range only the sweeper draws from (``interval(...)``) or the arguments do not parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, RangeSweep

    args = [a for a in argv if not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception:
        return None
    first: list[str] = []
    for arg, override in zip(args, overrides, strict=True):
        if not override.is_sweep_override():
            first.append(arg)
        elif isinstance(override.value(), ChoiceSweep | RangeSweep):
            first.append(f"{arg.partition('=')[0]}={next(iter(override.sweep_string_iterator()))}")
        else:
            return None
    return first


def check_output_folder(argv: Sequence[str], config_name: str, config_dir: Path = CONFIG_DIR) -> None:
    """Raise :class:`ConfigError` when the folder this command would write its run (or sweep) into
    cannot be created: a read-only file system, a file in the way, no permission.

    Why here: Hydra creates that folder itself, before the task starts, and a failure there is its
    traceback (``FileNotFoundError: '/readonly/logs'``), with nothing of resflex's one-line report.
    The check writes and removes a probe file in the nearest existing parent
    (:func:`resflex.validation.unwritable_reason`); it creates nothing that stays.
    """
    if any(arg.split("=", 1)[0] in PRINT_ONLY_FLAGS for arg in argv):
        return
    overrides = _first_job_overrides(argv)
    if overrides is None:
        return
    from hydra import compose, initialize_config_dir
    from hydra.types import RunMode

    try:
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        multirun = "-m" in argv or "--multirun" in argv or cfg.hydra.mode == RunMode.MULTIRUN
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        folder = Path(str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)).expanduser()
    except Exception:  # a problem with the config itself: the run reports it
        return
    parent = folder.absolute()
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    # probed in the nearest existing parent: the run folder itself is Hydra's to make (its name has
    # the time to the second, which this composition would not match)
    reason = "a file, not a folder" if not parent.is_dir() else unwritable_reason(parent)
    if reason is not None:
        what = "sweep folder" if multirun else "run folder"
        raise ConfigError(
            f"cannot create the {what} {folder}: {parent}: {reason}",
            hint=f"{key}=<a writable folder>, or paths.log_dir=<a writable folder>",
        ) from None


def prepare_cli(argv: Sequence[str], config_name: str | None = None) -> None:
    """What every console entry point does before Hydra runs: check group choices and, given the
    entry point's ``config_name``, the keys overridden (:func:`check_override_keys`) and the run
    folder (:func:`check_output_folder`); register resolvers."""
    import sys

    from resflex.sweeps import register_resolvers

    register_resolvers()  # ${resflex.job_dir:...} names sweep job folders (configs/hydra/default.yaml)
    exit_on_unknown_group_choice(argv)
    if config_name is not None:
        try:
            check_groups_of_command(argv, config_name)
            check_override_keys(argv, config_name)
            check_sweep_has_multirun(argv, config_name)
            check_output_folder(argv, config_name)
        except ConfigError as exc:
            print(f"error: {exc.one_line()}", file=sys.stderr)
            raise SystemExit(2) from None


register_trainer_schema()  # trainer/lightning for every composition (CLIs, tests, notebooks)
register_help_resolver()  # hydra.help.template resolves wherever the hydra node is (train(cfg) too)
