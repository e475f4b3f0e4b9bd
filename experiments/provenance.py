"""Write ``<file>.provenance.json`` beside result files that carry no commit, date or machine per row.

    python experiments/provenance.py FILE ... --machine "2-core CPU dev VM, no GPU" \
        [--code COMMIT] [--note TEXT]

From ``git log`` of each file: the commit that added it and when, the commit that last changed it
and when. ``--machine`` is what the study's README says the numbers were measured on; ``--code``
the commit whose code produced the numbers when the README or the rows name one (else unknown;
the numbers predate the file's last commit); ``--note`` anything a reader needs to judge the
file (which split the choices were made on). The convention is described in experiments/README.md;
result files written from now on carry ``commit``, ``machine`` and ``finished`` columns per row
instead (as experiments/robustness/results_shapes.csv does).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def history(path: Path) -> dict[str, str]:
    rel = path.resolve().relative_to(REPO).as_posix()
    log = git("log", "--follow", "--format=%h %cI", "--", rel).splitlines()
    if not log:
        raise SystemExit(f"{rel}: not committed")
    first, last = log[-1].split(), log[0].split()
    return {
        "file": rel,
        "added_in": first[0],
        "added_at": first[1],
        "last_changed_in": last[0],
        "last_changed_at": last[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--machine", required=True)
    parser.add_argument("--code", default="", help="the commit whose code made the numbers, if known")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    for path in args.files:
        record = history(path)
        unknown = f"unknown: not recorded (the numbers predate the last commit, {record['last_changed_in']})"
        record["code"] = args.code or unknown
        record["machine"] = args.machine
        record["recovered_from"] = "git log of the file and its study's README (2026-12-05)"
        if args.note:
            record["note"] = args.note
        out = path.resolve().with_name(path.name + ".provenance.json")
        out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        print(out.relative_to(REPO))


if __name__ == "__main__":
    main()
