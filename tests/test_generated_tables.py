"""Every generated table in the docs equals what its script prints from the committed result file.

A block in README.md or experiments/*/README.md written as

    <!-- generated: python experiments/robustness/table.py experiments/robustness/results_shapes.csv -->
    | cell | ... |
    <!-- end generated -->

is regenerated here (the command run from the repository root) and compared line by line, so a
number in the docs can only change with its result file or its script.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- generated: (?P<command>.+?) -->\n(?P<body>.*?)<!-- end generated -->", re.S)
DOCS = [REPO / "README.md", *sorted((REPO / "experiments").glob("*/README.md"))]


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
