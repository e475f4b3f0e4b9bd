"""The scripts that turn result files into the docs' tables: experiments/summarize_cells.py and
experiments/robustness/table.py on small hand-made result files (each number checkable by hand),
experiments/update_tables.py replacing the ``<!-- generated: ... -->`` blocks of the docs, and
experiments/provenance.py writing a result file's history beside it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script(rel: str) -> ModuleType:
    """``experiments/<rel>`` as a module, to call its functions (or ``main``) in this process."""
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_").removesuffix(".py"), REPO / rel)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- experiments/summarize_cells.py


def test_a_one_seed_change_keeps_its_sign() -> None:
    """With one seed per cell the paired change is a single difference: a gain reads ``+0.020`` and a
    loss ``-0.010``, the sign a reader looks for, as with several seeds."""
    cells = _script("experiments/summarize_cells.py")
    rows = [
        {"cell": "base", "seed": "0", "val_acc_best": "0.800", "test_acc": "0.700"},
        {"cell": "up", "seed": "0", "val_acc_best": "0.820", "test_acc": "0.690"},
    ]
    lines = cells.table(rows, "base", None, val_pairs=True).splitlines()
    assert lines[3] == "| up | 1 | 0.820 | 0.690 | +0.020 | -0.010 | — |", lines


def test_a_tied_seed_is_not_counted_as_ahead() -> None:
    """``--pairs A:B`` counts the seeds where A beats B; a seed where both score the same is not one."""
    cells = _script("experiments/summarize_cells.py")
    rows = [
        {"cell": cell, "seed": seed, "test_acc@64": acc}
        for cell, seed, acc in [("a", "0", "0.75"), ("b", "0", "0.5"), ("a", "1", "0.5"), ("b", "1", "0.5"),
                                ("a", "2", "0.25"), ("b", "2", "0.5")]
    ]  # fmt: skip
    lines = cells.paired_table(rows, ["a:b"]).splitlines()
    assert lines[2] == "| a − b | 3 | +0.000 ± 0.250 (1/3 ahead) |", lines


def test_changes_pair_each_run_with_the_baselines_run_of_the_same_seed() -> None:
    """The paired change subtracts the baseline's run with the same seed, wherever the rows sit in the
    file; a seed the baseline lacks has no partner and is left out of the change."""
    cells = _script("experiments/summarize_cells.py")
    rows = [
        {"cell": "base", "seed": "1", "val_acc_best": "0.5", "test_acc": "0.5"},
        {"cell": "base", "seed": "0", "val_acc_best": "0.75", "test_acc": "0.75"},
        {"cell": "up", "seed": "0", "val_acc_best": "0.75", "test_acc": "0.875"},
        {"cell": "up", "seed": "1", "val_acc_best": "0.5", "test_acc": "0.625"},
        {"cell": "up", "seed": "2", "val_acc_best": "0.0", "test_acc": "0.0"},
    ]
    lines = cells.table(rows, "base", ["base", "up"]).splitlines()
    assert lines[3].startswith("| up | 3 | 0.417 ± 0.382 | 0.500 ± 0.451 | +0.125 ± 0.000 |"), lines


def test_a_pair_compares_only_the_seeds_both_cells_ran() -> None:
    """``--pairs A:B`` differences need both runs of a seed: a seed only A ran is left out (and
    counted out of the seeds), not an error."""
    cells = _script("experiments/summarize_cells.py")
    rows = [{"cell": c, "seed": s, "test_acc@64": "0.5"} for c, s in [("a", "0"), ("a", "1"), ("b", "0")]]
    assert cells.paired_table(rows, ["a:b"]).splitlines()[2] == "| a − b | 1 | +0.000 (0/1 ahead) |"


def test_a_size_no_run_evaluated_is_no_column_of_the_resolution_table() -> None:
    """``--resolutions`` shows the sizes that have numbers: a ``test_acc@128`` column empty in every row
    (runs made before 128 px was evaluated) gets no column, not an error."""
    cells = _script("experiments/summarize_cells.py")
    rows = [
        {"cell": "a", "seed": s, "test_acc@64": acc, "test_acc@128": ""}
        for s, acc in [("0", "0.5"), ("1", "0.75")]
    ]
    lines = cells.resolution_table(rows, None, seconds=False).splitlines()
    assert lines[0] == "| cell | seeds | 64 px |" and lines[2] == "| a | 2 | 0.625 ± 0.177 |", lines


# -- experiments/robustness/table.py


def _robustness_rows(extra: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    """Two seeds of ``fixed`` and ``up`` at 64 px (``up`` 0.125 ahead on each), 128 px not evaluated."""
    rows = []
    for cell, seed, acc in [
        ("fixed", "0", 0.5),
        ("fixed", "1", 0.75),
        ("up", "0", 0.625),
        ("up", "1", 0.875),
    ]:
        worst_mean = {"test_acc_worst": str(acc), "test_acc_mean_sizes": str(acc)}
        rows.append({"cell": cell, "seed": seed, "status": "completed", "test_acc@64": str(acc),
                     "test_acc@128": "", **worst_mean})  # fmt: skip
    return rows + (extra or [])


def test_a_run_that_did_not_complete_is_left_out_of_its_cell() -> None:
    """A failed run's numbers (its last logged ones) are no result: the cell's seeds and means come from
    its completed runs only."""
    table = _script("experiments/robustness/table.py")
    failed = {"cell": "up", "seed": "2", "status": "failed", "test_acc@64": "0.1", "test_acc@128": "",
              "test_acc_worst": "0.1", "test_acc_mean_sizes": "0.1"}  # fmt: skip
    lines = table.table(_robustness_rows([failed]), "fixed", ["fixed", "up"], "test", 64).splitlines()
    sizes_worst_mean = "0.750 ± 0.177 | 0.750 ± 0.177 | 0.750 ± 0.177"
    assert lines[3] == f"| up | 2 | {sizes_worst_mean} | +0.125 ± 0.000 | +0.125 ± 0.000 |", lines


def test_robustness_changes_pair_runs_by_seed_not_by_row_order() -> None:
    """Δ vs the baseline subtracts the baseline's run with the same seed, also when the file lists the
    baseline's seeds in another order than the cell's."""
    table = _script("experiments/robustness/table.py")
    rows = _robustness_rows()
    rows[0], rows[1] = rows[1], rows[0]  # fixed: seed 1 first
    lines = table.table(rows, "fixed", ["fixed", "up"], "test", 64).splitlines()
    assert lines[3].endswith("| +0.125 ± 0.000 | +0.125 ± 0.000 |"), lines


def test_the_wall_column_is_the_median_of_the_runs_that_logged_a_wall_time() -> None:
    """``--wall``: a run without a wall time (a row written before the column existed) is left out of
    the median, not counted as 0 s."""
    table = _script("experiments/robustness/table.py")
    rows = _robustness_rows()
    for row, wall in zip(rows, ["100", "300", "200", ""], strict=True):
        row["wall_time_s"] = wall
    lines = table.table(rows, "fixed", ["fixed", "up"], "test", 64, wall_time=True).splitlines()
    assert lines[2].endswith("| 200 |") and lines[3].endswith("| 200 |"), lines


def test_a_size_no_run_evaluated_gets_no_column() -> None:
    """A ``test_acc@128`` column left empty in every row (the runs did not evaluate 128 px) is no size of
    the table: the sizes are the ones with a number."""
    table = _script("experiments/robustness/table.py")
    head = table.table(_robustness_rows(), "fixed", [], "test", 64).splitlines()[0]
    assert head.startswith("| cell | seeds | 64 px | worst | mean |"), head


# -- experiments/update_tables.py


def _docs_repo(tmp_path: Path) -> ModuleType:
    """A repository in ``tmp_path`` with a table script, and update_tables pointed at it."""
    (tmp_path / "experiments" / "study").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "experiments" / "rows.py").write_text(
        "import sys\nprint('| ' + sys.argv[1] + ' |')\nprint()\n"  # a trailing blank line
    )
    update = _script("experiments/update_tables.py")
    update.REPO = tmp_path
    return update


def block(arg: str, body: str) -> str:
    return f"<!-- generated: python experiments/rows.py {arg} -->\n{body}<!-- end generated -->\n"


def test_every_block_of_every_doc_is_regenerated_and_the_text_around_them_kept(tmp_path: Path) -> None:
    """`make results` rewrites each block from its own command, in README.md, a study's README and
    docs/*.md, and leaves the prose between two blocks as it was; the end marker stays on its own line,
    whatever blank lines the script prints last."""
    update = _docs_repo(tmp_path)
    readme = "# Title\n\n" + block("one", "| old |\n") + "\nProse between.\n\n" + block("two", "") + "End.\n"
    (tmp_path / "README.md").write_text(readme)
    (tmp_path / "experiments" / "study" / "README.md").write_text(block("three", "| stale |\n| rows |\n"))
    (tmp_path / "docs" / "guide.md").write_text("Guide.\n" + block("four", "| old |\n"))
    update.main()
    expected = "# Title\n\n" + block("one", "| one |\n") + "\nProse between.\n\n" + block("two", "| two |\n")
    assert (tmp_path / "README.md").read_text() == expected + "End.\n"
    assert (tmp_path / "experiments" / "study" / "README.md").read_text() == block("three", "| three |\n")
    assert (tmp_path / "docs" / "guide.md").read_text() == "Guide.\n" + block("four", "| four |\n")


def test_a_second_update_changes_and_reports_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make results` names each doc it rewrote; once the tables are current, a second run rewrites and
    names none (a doc's diff then shows only what a result file changed)."""
    update = _docs_repo(tmp_path)
    (tmp_path / "README.md").write_text(block("one", "| old |\n"))
    (tmp_path / "docs" / "guide.md").write_text(block("four", "| four |\n"))
    update.main()
    assert capsys.readouterr().out == "updated README.md\n"
    update.main()
    assert capsys.readouterr().out == ""


def test_a_block_whose_command_is_no_table_script_is_refused(tmp_path: Path) -> None:
    """Only ``python experiments/...`` runs: a block naming any other script stops the update before
    running it."""
    update = _docs_repo(tmp_path)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "touch.py").write_text("open('ran', 'w').close()\n")
    text = "<!-- generated: python scripts/touch.py -->\n<!-- end generated -->\n"
    (tmp_path / "README.md").write_text(text)
    with pytest.raises(SystemExit, match="not a table script"):
        update.main()
    assert not (tmp_path / "ran").exists() and (tmp_path / "README.md").read_text() == text


def test_a_failing_table_script_stops_the_update_and_leaves_the_doc(tmp_path: Path) -> None:
    """A table script that fails (a result file missing, a bad argument) must not empty its block: the
    update stops with the error and the doc keeps its last table."""
    update = _docs_repo(tmp_path)
    (tmp_path / "experiments" / "fails.py").write_text("raise SystemExit('no such result file')\n")
    text = "<!-- generated: python experiments/fails.py -->\n| kept |\n<!-- end generated -->\n"
    (tmp_path / "README.md").write_text(text)
    with pytest.raises(subprocess.CalledProcessError):
        update.main()
    assert (tmp_path / "README.md").read_text() == text


# -- experiments/provenance.py


def _git(repo: Path, *args: str, date: str = "2026-01-01T00:00:00+00:00") -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date,
           "HOME": str(repo), "GIT_CONFIG_NOSYSTEM": "1"}  # fmt: skip
    # (HOME and GIT_CONFIG_NOSYSTEM: no user's or system's git config, e.g. commit signing)
    done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_provenance_of_a_file_never_committed_is_an_error_naming_it(tmp_path: Path) -> None:
    """A result file git does not know has no history to record: the script stops and names it rather
    than writing a record with no commit."""
    _git(tmp_path, "init", "-q")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "old.csv").write_text("cell,seed\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "old")
    (tmp_path / "experiments" / "new.csv").write_text("cell,seed\n")
    provenance = _script("experiments/provenance.py")
    provenance.REPO = tmp_path
    with pytest.raises(SystemExit, match="experiments/new.csv: not committed"):
        provenance.history(tmp_path / "experiments" / "new.csv")


def test_provenance_records_the_commit_that_added_a_file_before_its_rename_and_the_last_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """added_in is the first commit of the file's history, across a rename; last_changed_in the latest;
    ``--code`` is what the reader is told made the numbers (else "unknown", naming the last commit)."""
    study = tmp_path / "experiments" / "study"
    study.mkdir(parents=True)
    _git(tmp_path, "init", "-q")
    (study / "old.csv").write_text("cell,seed,acc\n" + "".join(f"a,{s},0.{s}5\n" for s in range(9)))
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "add", date="2026-01-01T10:00:00+00:00")
    added = _git(tmp_path, "rev-parse", "--short", "HEAD")
    _git(tmp_path, "mv", "experiments/study/old.csv", "experiments/study/results.csv")
    _git(tmp_path, "commit", "-qm", "rename", date="2026-01-02T10:00:00+00:00")
    with (study / "results.csv").open("a") as f:
        f.write("a,9,0.95\n")
    _git(tmp_path, "commit", "-qam", "more", date="2026-01-03T10:00:00+00:00")
    last = _git(tmp_path, "rev-parse", "--short", "HEAD")
    provenance = _script("experiments/provenance.py")
    provenance.REPO = tmp_path
    results = study / "results.csv"
    for code in ("abc1234", ""):
        argv = ["provenance.py", str(results), "--machine", "2-core VM", "--note", "chosen on val"]
        monkeypatch.setattr(sys, "argv", argv + (["--code", code] if code else []))
        provenance.main()
        record = json.loads((study / "results.csv.provenance.json").read_text())
        assert record["file"] == "experiments/study/results.csv"
        assert (record["added_in"], record["added_at"]) == (added, "2026-01-01T10:00:00+00:00")
        assert (record["last_changed_in"], record["last_changed_at"]) == (last, "2026-01-03T10:00:00+00:00")
        assert record["machine"] == "2-core VM" and record["note"] == "chosen on val"
        if code:
            assert record["code"] == code
        else:
            assert record["code"].startswith("unknown") and last in record["code"], record
