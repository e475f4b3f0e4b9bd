"""Every generated table in the docs equals what its script prints from the committed result file,
and every committed result file says where it came from.

A block in README.md, experiments/*/README.md or docs/*.md written as

    <!-- generated: python experiments/robustness/table.py experiments/robustness/results_shapes.csv -->
    | cell | ... |
    <!-- end generated -->

is regenerated here (the command run from the repository root) and compared line by line, so a
number in the docs can only change with its result file or its script. A result file (a CSV or
JSON under experiments/<study>/) carries its provenance: ``commit`` and ``machine`` columns per
row, or a ``<file>.provenance.json`` beside it (experiments/README.md).
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- generated: (?P<command>.+?) -->\n(?P<body>.*?)<!-- end generated -->", re.S)
DOCS = [
    REPO / "README.md",
    *sorted((REPO / "experiments").glob("*/README.md")),
    *sorted((REPO / "docs").glob("*.md")),
]


def generated_blocks() -> list[tuple[str, str, str]]:
    blocks = []
    for doc in DOCS:
        for match in BLOCK.finditer(doc.read_text()):
            blocks.append((doc.relative_to(REPO).as_posix(), match["command"], match["body"]))
    return blocks


def regenerate(command: str) -> str:
    args = shlex.split(command)
    assert args[0] == "python" and args[1].startswith("experiments/"), f"not a table script: {command}"
    result = subprocess.run([sys.executable, *args[1:]], cwd=REPO, capture_output=True, text=True, check=True)
    return result.stdout


def test_the_docs_have_generated_tables() -> None:
    assert generated_blocks(), "no <!-- generated: ... --> block found"


@pytest.mark.parametrize(("doc", "command", "body"), generated_blocks(), ids=lambda v: str(v)[:60])
def test_a_generated_table_matches_its_script(doc: str, command: str, body: str) -> None:
    assert body.strip() == regenerate(command).strip(), f"{doc}: regenerate with `{command}`"


def result_files() -> list[Path]:
    files = [*(REPO / "experiments").glob("*/**/*.csv"), *(REPO / "experiments").glob("*/**/*.json")]
    return sorted(f for f in files if not f.name.endswith(".provenance.json"))


@pytest.mark.parametrize("path", result_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_a_result_file_says_where_it_came_from(path: Path) -> None:
    sidecar = path.with_name(path.name + ".provenance.json")
    if sidecar.exists():
        record = json.loads(sidecar.read_text())
        assert {"added_in", "added_at", "machine", "code"} <= set(record), sidecar
        return
    assert path.suffix == ".csv", f"{path}: no {sidecar.name}"
    with path.open() as f:
        header = next(csv.reader(f))
    assert {"commit", "machine"} <= set(header), f"{path}: no commit/machine columns and no {sidecar.name}"


def test_the_robustness_figure_draws_from_the_result_files(tmp_path: Path) -> None:
    out = tmp_path / "accuracy_vs_size.png"
    script = REPO / "experiments" / "robustness" / "plot.py"
    subprocess.run([sys.executable, script, "--out", out], cwd=REPO, capture_output=True, check=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
