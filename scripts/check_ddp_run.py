#!/usr/bin/env python
"""Check a DDP run from its folder: ``python scripts/check_ddp_run.py <run> [--num-samples N]``.

Reads the per-rank batch logs that ``callbacks.rank_batch_log`` writes to
``<run>/ranks/rank<k>.jsonl`` (:class:`resflex.training.distributed.RankBatchLog`) and prints,
per epoch, whether the ranks used the same size at each step, whether their shards were
disjoint and covered the data, and whether their weights agreed (docs/scaling.md).
Exit status 0 when every epoch passes, 1 when one does not, 2 when there is nothing to check.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from resflex.errors import ResflexError
from resflex.training.distributed import check_rank_logs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="check a DDP run's per-rank batch logs (<run>/ranks/)")
    parser.add_argument("run_dir")
    parser.add_argument("--num-samples", type=int, default=None, help="size of the train split")
    args = parser.parse_args(argv)
    try:
        report = check_rank_logs(args.run_dir, args.num_samples)
    except ResflexError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    ok = True
    print(f"ranks: {report['ranks']}")
    for epoch, e in report["epochs"].items():
        ok &= e["sizes_agree"] and e["rank_repeats"] == 0 and e["weights_agree"] is not False
        missing = f", missing {e['missing']}" if "missing" in e else ""
        print(
            f"epoch {epoch}: steps/rank {e['steps']}, sizes agree: {e['sizes_agree']} {e['sizes']}, "
            f"samples {e['covered']} distinct of {e['seen']} seen "
            f"({e['padding']} padding repeats{missing}), "
            f"weights agree: {e['weights_agree']}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
