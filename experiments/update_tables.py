"""Regenerate every ``<!-- generated: COMMAND -->`` table in README.md, experiments/*/README.md and
docs/*.md in place, from the committed result files (``make results``). tests/test_generated_tables.py
fails when a committed table differs from what its command prints.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- generated: (?P<command>.+?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def run(command: str) -> str:
    args = shlex.split(command)
    if args[0] != "python" or not args[1].startswith("experiments/"):
        raise SystemExit(f"not a table script: {command}")
    return subprocess.run(
        [sys.executable, *args[1:]], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout


def main() -> None:
    docs = [REPO / "README.md", *sorted((REPO / "experiments").glob("*/README.md"))]
    for doc in [*docs, *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        new = BLOCK.sub(lambda m: m[1] + run(m["command"]).rstrip("\n") + "\n" + m[4], text)
        if new != text:
            doc.write_text(new)
            print(f"updated {doc.relative_to(REPO)}")


if __name__ == "__main__":
    main()
