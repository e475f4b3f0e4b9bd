"""Every command the project's Markdown shows a reader (README, docs/, experiments/) is one the code
accepts: a renamed key, a dropped group option or a changed default breaks a copied command without
failing any other test, because the other tests write their own commands.

- Every ``scripts/{train,eval,predict,export}.py`` command names only group options and keys that
  exist (the checks each console entry point makes before Hydra runs: :func:`resflex.config.prepare_cli`).
- Every training command also composes and passes the checks a run makes before it reads any data
  (:func:`resflex.preflight.check_before_work`), once for each value of each swept key.
- The README's "Errors" block, the ``$ command`` / ``error: ...`` pairs, is what the command line prints.
- (slow) Every eval, predict and export command runs, on a tiny run of this machine (a NaFlex run
  where it names sequence lengths), and writes the file it names.

A command's placeholders are the reader's to fill: a value written as ``DIR``, ``RUN``, ``S`` or
``<run>`` is left out of the composed config (its key is still checked), ``[key=value]`` is an
optional argument (taken), ``[switch]`` a placeholder argument (dropped), and the paths a command
reads (``data.root``, ``backbone.init_from``, ``backbone.weights``) are stood in for by a small
image folder and an existing file: the reader's folders are not on this machine.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep
from omegaconf import open_dict

from resflex.config import check_group_choices, check_override_keys, check_override_syntax
from resflex.preflight import check_before_work
from tests.conftest import make_image_folder, run_cli
from tests.test_configs import compose_train
from tests.test_docs_links import markdown_files

#: hydra-submitit-launcher's config, composed by the SLURM commands: the plugin's own deprecation
pytestmark = pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema:UserWarning")

#: the console scripts whose arguments are Hydra overrides, and the config each composes
HYDRA_SCRIPTS = {"train": "train", "eval": "eval", "predict": "predict", "export": "export"}
#: a command in a code block (``torchrun ... scripts/train.py`` too) and in a prose span
COMMAND = re.compile(r"\bscripts/(\w+)\.py\b(.*)")
#: what a command line starts with (a diagram's ``scripts/train.py ─ ...`` is not one)
LAUNCHER = re.compile(r"^\s*(\$\s+)?(\S*/)?(python3?|srun|torchrun)\s")
INLINE = re.compile(r"`([^`]*python scripts/\w+\.py[^`]*)`")
#: a value the reader fills in: DIR, RUN, RUN_DIR, CKPT, S, P, <run>, <time>, a shell variable
PLACEHOLDER = re.compile(r"^([A-Z][A-Z_]*|<[^>]*>|.*\$.*)$")
#: Hydra's flags that take the next word as their value
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp"}
FLAGS_WITH_VALUE |= {"--config-dir", "-cd", "--experimental-rerun"}  # --info: its value is optional
#: keys naming a path the command reads: stood in for by a file or folder of this machine
PATH_KEYS = ("data.root", "backbone.init_from", "backbone.weights")


@dataclass(frozen=True)
class DocumentedCommand:
    page: str  # relative to the repository
    line: int
    script: str  # train, eval, ...
    text: str  # the arguments as written
    error: str | None = None  # the README's "error: ..." line printed below a "$ command"

    @property
    def args(self) -> list[str]:
        """The arguments a shell would pass, with the placeholder notation resolved (see the module)."""
        args: list[str] = []
        tokens = shlex.split(self.text.replace("\\|", "|"), comments=True)
        for index, token in enumerate(tokens):
            if index and tokens[index - 1] in FLAGS_WITH_VALUE:
                continue  # --cfg job: the flag's value
            if token.startswith(("-", "$")) or token in ("...", "|"):
                continue  # Hydra's flags (-m, --help, --cfg), and "$@": the shell's own arguments
            if token.startswith("[") and token.endswith("]") and "=" not in token:
                continue  # [switch]: one of the page's named variants goes here
            if token.startswith("[") and token.endswith("]"):
                token = token[1:-1]  # [key=value]: an optional argument
            args.append(token)
        return args

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def code_lines(text: str) -> list[bool]:
    """Which lines of a Markdown page are code: in a fenced block (indented too, inside a list item)
    or in an indented block (four spaces after a blank line), as the page renders them."""
    is_code, fenced, indented, blank_before = [], False, False, True
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            is_code.append(False)  # the fence itself
        else:
            indented = bool(line.strip()) and line.startswith(("    ", "\t")) and (blank_before or indented)
            is_code.append(fenced or indented)
        blank_before = not line.strip()
    return is_code


def _commands_in(page: Path, root: Path) -> list[DocumentedCommand]:
    text = page.read_text(encoding="utf-8")
    name = str(page.relative_to(root))
    lines, is_code = text.splitlines(), code_lines(text)
    found: list[DocumentedCommand] = []
    index = 0
    while index < len(lines):
        start, joined = index, lines[index]
        index += 1
        if not is_code[start]:
            continue
        while joined.rstrip().endswith("\\") and index < len(lines) and is_code[index]:  # continued
            joined = joined.rstrip()[:-1] + " " + lines[index]
            index += 1
        match = COMMAND.search(joined)
        if not match or match.group(1) not in HYDRA_SCRIPTS or not LAUNCHER.match(joined):
            continue
        after = lines[index].strip() if index < len(lines) and is_code[index] else ""
        error = after if joined.lstrip().startswith("$ ") and after.startswith("error: ") else None
        found.append(DocumentedCommand(name, start + 1, match.group(1), match.group(2), error))
    prose = "\n".join("" if code else line for line, code in zip(lines, is_code, strict=True))
    for span in INLINE.finditer(prose):
        match = COMMAND.search(" ".join(span.group(1).split()))
        if match and match.group(1) in HYDRA_SCRIPTS:
            line = prose.count("\n", 0, span.start()) + 1
            found.append(DocumentedCommand(name, line, match.group(1), match.group(2)))
    return found


def documented_commands() -> list[DocumentedCommand]:
    root = Path(__file__).resolve().parents[1]
    return [command for page in markdown_files() for command in _commands_in(page, root)]


COMMANDS = documented_commands()
RUNS = [c for c in COMMANDS if c.error is None]
TRAINING = [c for c in RUNS if c.script == "train"]
ERRORS = [c for c in COMMANDS if c.error is not None]


def test_the_docs_show_commands_of_every_kind() -> None:
    """The extraction itself: if it found nothing, every test below would pass on nothing."""
    assert len(TRAINING) >= 50 and len(ERRORS) >= 4
    assert {c.script for c in RUNS} == set(HYDRA_SCRIPTS)
    pages = {c.page for c in COMMANDS}
    assert {"README.md", "docs/resolution.md", "docs/scaling.md", "docs/transfer.md"} <= pages


def test_extraction_reads_continued_lines_inline_spans_and_placeholders(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Run `python scripts/train.py pooling=avg\ndata.root=DIR` first.\n\n"
        "```bash\n"
        "python scripts/train.py -m --cfg job a=1,2 \\\n"
        "    b=3 seed=S [switch] [optimizer=lamb]   # a comment\n"
        "$ python scripts/train.py pooling=median\n"
        "error: unknown pooling\n"
        "python scripts/benchmark.py --quick\n"
        "```\n\n"
        "    torchrun --nnodes=2 \\\n"
        '        scripts/train.py trainer=ddp "$@"\n\n'
        "    scripts/train.py ─ resflex.train.main\n"
    )
    found = _commands_in(page, tmp_path)
    assert [(c.line, c.script, c.args, c.error) for c in found] == [
        (5, "train", ["a=1,2", "b=3", "seed=S", "optimizer=lamb"], None),
        (7, "train", ["pooling=median"], "error: unknown pooling"),
        (12, "train", ["trainer=ddp"], None),
        (1, "train", ["pooling=avg", "data.root=DIR"], None),
    ]


@pytest.mark.parametrize("command", RUNS, ids=str)
def test_every_documented_command_names_existing_options_and_keys(command: DocumentedCommand) -> None:
    """What ``prepare_cli`` checks before Hydra runs, for the script's own config."""
    args = command.args
    choices = [a for a in args if not PLACEHOLDER.match(a.partition("=")[2])]
    check_override_syntax(choices)
    check_group_choices(choices)
    check_override_keys(args, HYDRA_SCRIPTS[command.script])


def _stand_in(key: str, value: str, folder: Path, files: Path) -> str:
    """A path of this machine for a path the reader's machine has."""
    if key == "data.root":
        return str(folder)
    stand_in = files / Path(value.lstrip("/")).name
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    stand_in.touch()  # the checks before any work read no weights: the file has to exist
    return str(stand_in)


def _jobs(args: list[str], folder: Path, files: Path) -> list[list[str]]:
    """The overrides of each job, so that every value of every swept key is in one of them."""
    axes: list[list[str]] = []
    for override in OverridesParser.create().parse_overrides(args):
        key, line = override.get_key_element(), override.input_line
        value = line.partition("=")[2]
        if override.key_or_group in PATH_KEYS:
            axes.append([f"{key}={_stand_in(override.key_or_group, value, folder, files)}"])
        elif PLACEHOLDER.match(value):
            continue
        elif isinstance(override.value(), IntervalSweep):  # an Optuna range: its lower end
            axes.append([f"{key}={override.value().start}"])
        elif override.is_sweep_override():
            axes.append([f"{key}={choice}" for choice in override.sweep_string_iterator()])
        else:
            axes.append([line])
    jobs = max((len(axis) for axis in axes), default=1)
    return [[axis[job % len(axis)] for axis in axes] for job in range(jobs)]


@pytest.fixture(scope="module")
def reader_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("docs") / "images", per_class=2, splits=("train", "val"))


@pytest.mark.parametrize("command", TRAINING, ids=str)
def test_every_documented_training_command_passes_the_checks_before_work(
    command: DocumentedCommand, reader_folder: Path, tmp_path: Path
) -> None:
    """Composed as the run composes it, then every key and value checked as the run checks them
    first (backbone, pooling, schedule, sizes, optimizer ...), for every value a sweep takes."""
    for job in _jobs(command.args, reader_folder, tmp_path / "files"):
        cfg = compose_train(job, tmp_path / "run")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
        check_before_work(cfg)


@pytest.mark.parametrize("command", ERRORS, ids=str)
def test_the_readme_errors_are_what_the_command_line_prints(
    command: DocumentedCommand, tmp_path: Path
) -> None:
    result = run_cli([*command.args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [command.error]


# ---- the commands that use a trained run, run end to end (slow) ------------------------------------

USING_A_RUN = [c for c in RUNS if c.script != "train"]
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _alternatives(args: list[str]) -> list[list[str]]:
    """``format=onnx|torchscript|exported`` is one command per format."""
    for index, arg in enumerate(args):
        key, _, value = arg.partition("=")
        if "|" in value:
            return [[*args[:index], f"{key}={choice}", *args[index + 1 :]] for choice in value.split("|")]
    return [args]


def _on_this_machine(args: list[str], run: Path, images: Path) -> list[str]:
    """The reader's run, checkpoint and folders replaced by this test's; placeholders left out."""
    placed = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "ckpt_path":  # a checkpoint file of the run by its name, else the run folder
            value = str(run / "checkpoints" / Path(value).name) if value.endswith(".ckpt") else str(run)
        elif key in ("input", "data.root"):
            value = str(images / "val") if key == "input" else str(images)
        elif PLACEHOLDER.match(value):
            continue
        placed.append(f"{key}={value}")
    return placed


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny run on images (keep_aspect buckets, curves at ½×-2×) and a tiny NaFlex run, each with a
    labelled val/ and test/ split: what the docs' eval, predict and export commands start from."""
    from tests.conftest import TINY, TINY_NAFLEX_MODEL, train_run

    base = tmp_path_factory.mktemp("documented")
    images = make_image_folder(base / "images", per_class=4, splits=("train", "val", "test"))
    common = ("trainer.enable_progress_bar=false", "logger=none", "test_after_fit=false")
    train_run([*TINY, "data=imagefolder", f"data.root={images}", *common], base / "run", hydra_files=True)
    naflex = (*TINY_NAFLEX_MODEL, "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0")
    train_run([*naflex, f"data.root={images}", *common], base / "naflex", hydra_files=True)
    return {"run": base / "run", "naflex": base / "naflex", "images": images}


@pytest.mark.slow
@pytest.mark.parametrize("command", USING_A_RUN, ids=str)
def test_every_documented_eval_predict_and_export_command_runs(
    command: DocumentedCommand, trained_runs: dict[str, Path], tmp_path: Path
) -> None:
    """As a reader types it, on a run of this machine (a NaFlex run where the command names sequence
    lengths): it finishes, and says what it wrote or measured."""
    naflex = any("seq_len" in arg for arg in command.args)
    run = trained_runs["naflex" if naflex else "run"]
    for args in _alternatives(command.args):
        result = run_cli(
            _on_this_machine(args, run, trained_runs["images"]),
            cwd=tmp_path,
            script=SCRIPTS / f"{command.script}.py",
        )
        assert result.returncode == 0, f"{command}: {args}\n{result.stderr[-3000:]}"
        assert "error:" not in result.stderr
        for arg in args:  # a file the command was told to write is there
            key, _, value = arg.partition("=")
            if key == "output" and not PLACEHOLDER.match(value):
                assert (tmp_path / value).is_file(), f"{command}: {value} not written"
