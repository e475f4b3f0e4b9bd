"""Every relative link in the project's Markdown (README, docs/, experiments/) reaches a file that exists,
and every ``#anchor`` a heading of its target, named as GitHub names it: a renamed heading or a moved
file breaks a reader's click without failing anything else."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: [text](target) with a relative target: no scheme, no bare anchor-less mail link
LINK = re.compile(r"\]\((?!https?:|mailto:)([^)\s]*)\)")


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path: Path) -> set[str]:
    """The anchors of ``path``'s headings (not the ``#`` lines of its code blocks)."""
    found, in_code = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            found.add(github_anchor(line.lstrip("#")))
    return found


def markdown_files() -> list[Path]:
    tracked = subprocess.run(
        ["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.split()
    return [ROOT / name for name in tracked] or sorted(ROOT.glob("*.md"))


def test_github_anchor_matches_githubs_rule() -> None:
    assert github_anchor("Where the 40 px cost comes from (explorations)") == (
        "where-the-40-px-cost-comes-from-explorations"
    )
    assert github_anchor("Scale consistency (`model.scale_consistency`, on by default)") == (
        "scale-consistency-modelscale_consistency-on-by-default"
    )


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in headings(file):
            broken.append(f"{target}: no heading with this anchor")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)
