"""experiments/robustness/wall_passes.py: each timing pass's wall-time ratios, paired by pair index,
and all pairs pooled, from the result file as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_each_pass_pairs_by_index_and_the_last_row_pools_every_pair(tmp_path: Path) -> None:
    rows = [
        ("fixed_a", "0", "completed", 100), ("up_a", "0", "completed", 110),
        ("fixed_a", "1", "completed", 200), ("up_a", "1", "completed", 240),
        ("up_a", "2", "completed", 999),  # no baseline run with this index: left out
        ("fixed_b", "0", "completed", 100), ("up_b", "0", "completed", 105),
        ("fixed_b", "1", "completed", 100), ("up_b", "1", "failed", 500),  # not completed: left out
    ]  # fmt: skip
    path = tmp_path / "timing.csv"
    path.write_text("cell,seed,status,wall_time_s\n" + "".join(f"{c},{s},{st},{w}\n" for c, s, st, w in rows))
    out = subprocess.run(
        [sys.executable, str(REPO / "experiments/robustness/wall_passes.py"), str(path), "fixed_a:up_a",
         "fixed_b:up_b"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert out[2] == "| fixed_a : up_a | 2 | 1.10, 1.20 | 1.150 ± 0.071× |", out
    assert out[3] == "| fixed_b : up_b | 1 | 1.05 | 1.050× |", out
    assert out[4] == "| all passes | 3 | median 1.100× | 1.117 ± 0.076× |", out


def test_a_pass_without_its_colon_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "timing.csv"
    path.write_text("cell,seed,status,wall_time_s\n")
    done = subprocess.run(
        [sys.executable, str(REPO / "experiments/robustness/wall_passes.py"), str(path), "fixed_a"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and "BASELINE:CELL" in done.stderr.splitlines()[-1], done.stderr


def test_each_pair_is_listed_in_pair_index_order_past_nine(tmp_path: Path) -> None:
    """Pair indices are numbers: pair 10 comes after pair 2 in "each pair", not before it as text."""
    rows = [("fixed_a", str(s), "completed", 100) for s in (2, 10)]
    rows += [("up_a", "2", "completed", 120), ("up_a", "10", "completed", 150)]
    path = tmp_path / "timing.csv"
    path.write_text("cell,seed,status,wall_time_s\n" + "".join(f"{c},{s},{st},{w}\n" for c, s, st, w in rows))
    out = subprocess.run(
        [sys.executable, str(REPO / "experiments/robustness/wall_passes.py"), str(path), "fixed_a:up_a"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert out[2].startswith("| fixed_a : up_a | 2 | 1.20, 1.50 |"), out
