"""experiments/robustness/split_gap.py: the 64-vs-96 px gap of the same runs on val and on test, and
their paired difference, from the result file as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEYS = ["val_cal_acc@64", "val_cal_acc@96", "test_acc@64", "test_acc@96"]


def _split_gap_table(tmp_path: Path, lines: list[str]) -> list[str]:
    """The lines ``split_gap.py`` prints for a result file holding ``lines``."""
    path = tmp_path / "results.csv"
    path.write_text("\n".join(lines) + "\n")
    return subprocess.run(
        [sys.executable, str(REPO / "experiments/robustness/split_gap.py"), str(path)],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip


def test_each_run_gives_its_val_gap_its_test_gap_and_their_difference(tmp_path: Path) -> None:
    runs = [
        ("a", "0", "completed", [0.80, 0.77, 0.79, 0.73]),  # val 0.03, test 0.06
        ("a", "1", "completed", [0.82, 0.78, 0.81, 0.73]),  # val 0.04, test 0.08
        ("a", "2", "failed", [0.10, 0.90, 0.10, 0.90]),  # left out: not completed
        ("b", "0", "completed", [0.70, 0.70, 0.70, 0.75]),  # val 0, test -0.05
        ("b", "1", "completed", [0.70, 0.70, 0.70, 0.0]),
    ]
    lines = ["cell,seed,status," + ",".join(KEYS)]
    lines += [f"{c},{s},{st}," + ",".join(map(str, v)) for c, s, st, v in runs]
    lines[-1] = "b,1,completed,0.7,0.7,0.7,"  # no test at 96 px: left out
    out = _split_gap_table(tmp_path, lines)
    assert out[2] == "| a | 2 | 0.035 ± 0.007 | 0.070 ± 0.014 | +0.035 ± 0.007 |", out
    assert out[3] == "| b | 1 | 0.000 | -0.050 | -0.050 |", out
    assert len(out) == 4


def test_without_cells_the_rows_follow_the_file(tmp_path: Path) -> None:
    """With no ``--cells`` the cells come in the order the file first lists them (the order the runs
    were made), not sorted by name."""
    lines = ["cell,seed,status," + ",".join(KEYS)]
    lines += [f"{cell},0,completed,0.8,0.75,0.8,0.7" for cell in ("zeta", "alpha")]
    out = _split_gap_table(tmp_path, lines)
    assert [line.split(" | ")[0] for line in out[2:]] == ["| zeta", "| alpha"], out
