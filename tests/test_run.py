"""resflex.run, the one way to reopen a finished run: its one-line errors for what is not a run, its
strict load, and a guard that no module of resflex but resflex.run / resflex.run_folder reads a run
folder's files."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from resflex.errors import ConfigError, DataError
from resflex.run import Run, open_run, open_run_folder, read_config
from resflex.run_folder import find_run_config, read_classes
from resflex.runtime import resolve_device

SRC = Path(__file__).resolve().parents[1] / "src" / "resflex"
HEAD = "model.head.weight"


def _checkpoint(path: Path, state: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "epoch": 0}, path)
    return path


def test_a_checkpoint_without_its_run_config_is_one_line_with_a_hint(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", {HEAD: torch.zeros(3, 4)})
    with pytest.raises(ConfigError, match="no run config found for .*last.ckpt") as info:
        open_run(tmp_path / "run")  # a run folder: its checkpoints/last.ckpt
    assert info.value.hint.startswith("pass run_config=") and "\n" not in info.value.one_line()
    assert find_run_config(ckpt) is None
    # a run_config given that is not there: said as such, not "looked for .hydra/config.yaml next to..."
    with pytest.raises(ConfigError, match=r"run_config=\S*nowhere.yaml does not exist \(hint"):
        open_run(tmp_path / "run", run_config=tmp_path / "nowhere.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        open_run(tmp_path / "run", run_config=tmp_path)


def test_a_file_that_is_not_a_resflex_checkpoint_is_refused(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "resnet.pth", {"conv1.weight": torch.zeros(2, 3, 3, 3)})
    with pytest.raises(DataError, match="is not a resflex checkpoint") as info:
        open_run(ckpt)
    assert "backbone.weights=" in (info.value.hint or "")


def test_an_unsafe_checkpoint_is_refused_before_its_config_is_looked_for(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'hacked'}",))

    evil = tmp_path / "run" / "checkpoints" / "evil.ckpt"
    evil.parent.mkdir(parents=True)
    torch.save({"state_dict": {HEAD: torch.zeros(1)}, "evil": Evil()}, evil)
    with pytest.raises(DataError, match="refusing to load"):
        open_run(evil)
    assert not (tmp_path / "hacked").exists()


def test_a_run_folder_without_a_config_and_a_config_of_something_else(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no run config") as info:
        open_run_folder(tmp_path)
    assert "training run" in (info.value.hint or "")
    other = tmp_path / "other.yaml"
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": 1}}}), other)
    with pytest.raises(ConfigError, match="is not the config of a resflex training run"):
        read_config(other)


def _run_with_weights(tmp_path: Path, state: dict[str, torch.Tensor]) -> tuple[Run, torch.nn.Module]:
    """A run whose checkpoint holds ``state``, and a model with one ``head`` (weight and bias)."""
    module = torch.nn.Module()
    module.head = torch.nn.Linear(4, 3)
    run = Run(
        run_dir=tmp_path,
        config_path=tmp_path / "config.yaml",
        config=OmegaConf.create({}),
        checkpoint=tmp_path / "last.ckpt",
        state=state,
    )
    return run, module


def test_weights_that_do_not_fit_the_rebuilt_model_are_one_error(tmp_path: Path) -> None:
    run, module = _run_with_weights(tmp_path, {"head.weight": torch.zeros(3, 4), "tail.bias": torch.zeros(3)})
    with pytest.raises(
        ConfigError, match=r"does not fit .* missing \['head.bias'\], unexpected \['tail.bias'\]"
    ):
        run.load_weights(module)  # type: ignore[arg-type]


def test_weights_missing_a_key_are_refused_even_with_nothing_unexpected(tmp_path: Path) -> None:
    """Loading is strict about missing keys alone: a half-loaded model would predict with random layers."""
    run, module = _run_with_weights(tmp_path, {"head.weight": torch.zeros(3, 4)})
    with pytest.raises(ConfigError, match=r"missing \['head.bias'\], unexpected \[\]"):
        run.load_weights(module)  # type: ignore[arg-type]


def test_class_names_need_the_right_count(tmp_path: Path) -> None:
    (tmp_path / "classes.json").write_text('["cat", "dog"]')
    assert read_classes(tmp_path) == ["cat", "dog"]
    run = Run(run_dir=tmp_path, config_path=tmp_path / "c.yaml", config=OmegaConf.create({}))
    assert run.classes(2) == ["cat", "dog"]
    assert run.classes(3) == ["0", "1", "2"]  # a stale classes.json is not the run's


def test_device_auto_is_the_gpu_when_there_is_one() -> None:
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


#: the files of a run folder that only resflex.run reads (file names as they appear in code)
RUN_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml", "metrics.json", "classes.json", ".hydra")
#: modules that name a run's files for a reason other than reopening a finished run, and the names
ALLOWED = {
    "run_folder.py": set(RUN_FILES) | {"OmegaConf.load"},  # where the files are, their plain readers
    "run.py": {"OmegaConf.load"},  # the config, in today's layout
    # an exported TorchScript / .pt2 file's own extra file, not the run's
    "export_formats.py": {"classes.json"},
    # the training layer (which resflex.run builds on) cannot import it. RunText: the running run's
    # own .hydra files, shown in TensorBoard
    "training/views.py": {".hydra", "config.yaml", "overrides.yaml", "OmegaConf.load"},
    # a plotting CLI over metrics.json files (issue 29 moves it out of the package, to scripts/)
    "training/resolution_eval.py": {"metrics.json"},
}


def run_file_readers(root: Path) -> dict[str, list[str]]:
    """Per module (relative to ``root``): the run files it names in code (not in docstrings or error
    messages) and its ``OmegaConf.load`` calls."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        hits = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if any(node.value == name or node.value.endswith("/" + name) for name in RUN_FILES):
                    hits.append(node.value)
            elif (
                isinstance(node, ast.Attribute)
                and node.attr == "load"
                and ast.unparse(node.value) == "OmegaConf"
            ):
                hits.append("OmegaConf.load")
        if hits:
            found[path.relative_to(root).as_posix()] = hits
    return found


def test_no_module_but_run_reads_a_run_folder() -> None:
    """A new reader of a run's config, record or class names fails here: read through resflex.run."""
    readers = run_file_readers(SRC)
    unexpected = {module: set(hits) - ALLOWED.get(module, set()) for module, hits in readers.items()}
    assert {module: hits for module, hits in unexpected.items() if hits} == {}
    assert "run_folder.py" in readers  # the guard looks where the files are named


def test_the_guard_finds_a_reader(tmp_path: Path) -> None:
    (tmp_path / "sneaky.py").write_text(
        '"""Reads metrics.json, but only in this docstring."""\n'
        "import json\n"
        "def f(run):\n"
        '    return json.loads((run / "metrics.json").read_text())\n'
    )
    (tmp_path / "quiet.py").write_text(
        'def g(run):\n    raise ValueError(f"no {run}/.hydra/config.yaml here")\n'
    )
    (tmp_path / "cfg.py").write_text("from omegaconf import OmegaConf\ncfg = OmegaConf.load('x.yaml')\n")
    assert run_file_readers(tmp_path) == {"cfg.py": ["OmegaConf.load"], "sneaky.py": ["metrics.json"]}


def _naflex_run_without_schedule(tmp_path: Path) -> Run:
    """A NaFlex run whose config cannot rebuild its resolution schedule (an edited or foreign config)."""
    config = OmegaConf.create({"resolution": {"_target_": "resflex.data.naflex.NoSuchResolution"}})
    return Run(
        run_dir=tmp_path, config_path=tmp_path / "c.yaml", config=config, checkpoint=tmp_path / "x.ckpt"
    )


def test_exporting_a_naflex_run_without_its_schedule_is_one_line(tmp_path: Path) -> None:
    """It was an AttributeError ('NoneType' object has no attribute 'max_seq_len') with a traceback."""
    from resflex.export_naflex import export_token_run

    with pytest.raises(ConfigError, match="has no resolution schedule"):
        export_token_run(_naflex_run_without_schedule(tmp_path), "onnx", tmp_path / "out.onnx", atol=1e-4)
    assert not (tmp_path / "out.onnx").exists()


def test_loading_a_naflex_run_without_its_schedule_says_so(tmp_path: Path) -> None:
    """It said 'predict.seq_len must be a whole number of tokens >= 1, got None': no option was given."""
    from resflex.inference import naflex_classifier_of

    with pytest.raises(ConfigError, match="has no resolution schedule"):
        naflex_classifier_of(_naflex_run_without_schedule(tmp_path))


def test_a_run_config_that_builds_another_model_is_warned_about(tmp_path: Path, caplog) -> None:
    """eval.py with another run's config: avg and max pooling have no parameters, the weights load
    strictly into either, and the numbers were the other model's without a word."""
    import logging

    from omegaconf import OmegaConf

    from tests.test_eval_script import train_tiny_run

    run_dir = tmp_path / "run"
    train_tiny_run(run_dir, "pooling=avg")
    other = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    other.pooling = OmegaConf.create({"_target_": "resflex.models.pooling.MaxPool"})
    (tmp_path / "other" / ".hydra").mkdir(parents=True)
    OmegaConf.save(other, tmp_path / "other" / ".hydra" / "config.yaml")
    with caplog.at_level(logging.WARNING, logger="resflex"):
        open_run(run_dir, run_config=run_dir / ".hydra" / "config.yaml")  # its own: nothing to say
        assert "builds another model" not in caplog.text
        open_run(run_dir, run_config=tmp_path / "other" / ".hydra" / "config.yaml")
    assert "builds another model than the checkpoint's own" in caplog.text
    assert "model.net.pooling._target_" in caplog.text
