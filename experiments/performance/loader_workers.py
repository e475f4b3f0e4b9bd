"""What worker processes cost on top of the in-process per-core rate of ``--sections loader``.

docs/scaling.md projects the cores a GPU needs from images per CPU-second of one in-process
loader; a training run loads in worker processes, which start each epoch (unless persistent)
and hand batches over through shared memory. This measures both ways on the same files, for
resflex (``data.source.decoder=auto``) and timm's ``create_loader``, train transform, square:

- ``inproc``: ``num_workers=0``, images per CPU-second of this process (as the benchmark);
- ``workers``: ``num_workers=W``, persistent (as resflex and timm train), after a warm-up
  epoch that starts them: images per CPU-second of this process and its workers together
  (the workers' user + system time read from /proc), and images per wall second.

``cost`` = inproc rate / workers rate per CPU-second: the factor by which worker processes
raise the CPU an image needs in steady state (shared-memory hand-over, queues, the main
process's side).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/performance/loader_workers.py \\
        --json experiments/performance/loader_workers_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from resflex.benchmark.loader import resflex_loader, timm_loader, write_photo_folder


def _workers_cpu(loader) -> float:  # type: ignore[no-untyped-def]
    """User + system seconds of the loader's live worker processes (0 without workers)."""
    iterator = getattr(loader, "_iterator", None)
    total = 0
    for worker in getattr(iterator, "_workers", []):
        fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def epoch(loader) -> tuple[int, float, float]:  # type: ignore[no-untyped-def]
    """Images, wall seconds, CPU seconds of this process and the loader's workers."""
    cpu, workers, wall = time.process_time(), _workers_cpu(loader), time.perf_counter()
    images = sum(int(batch.shape[0]) for batch, _ in loader)
    wall = time.perf_counter() - wall
    return images, wall, time.process_time() - cpu + _workers_cpu(loader) - workers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=960)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="resflex-workers-") as tmp:
        root = Path(tmp) / "photos"
        files = write_photo_folder(root, args.images)
        for size in args.sizes:
            makers = {
                ("resflex", 0): lambda s=size: resflex_loader(root, "auto", "train", "square", s),
                ("resflex", args.workers): lambda s=size: resflex_loader(
                    root, "auto", "train", "square", s, workers=args.workers
                ),
                ("timm", 0): lambda s=size: timm_loader(root, "train", s),
                ("timm", args.workers): lambda s=size: timm_loader(root, "train", s, workers=args.workers),
            }
            loaders = {key: make() for key, make in makers.items()}
            samples: dict[tuple[str, int], list[tuple[float, float]]] = {key: [] for key in loaders}
            for loader in loaders.values():  # warm-up
                epoch(loader)
            for r in range(args.repeats):
                for key in loaders if r % 2 == 0 else reversed(list(loaders)):
                    images, wall, cpu = epoch(loaders[key])
                    samples[key].append((images / cpu, images / wall))
            for name in ("resflex", "timm"):
                inproc = statistics.median(c for c, _ in samples[(name, 0)])
                per_cpu = statistics.median(c for c, _ in samples[(name, args.workers)])
                wall = statistics.median(w for _, w in samples[(name, args.workers)])
                rows.append(
                    {
                        "loader": name,
                        "size": size,
                        "inproc_per_cpu_s": round(inproc, 1),
                        "workers_per_cpu_s": round(per_cpu, 1),
                        "workers_per_wall_s": round(wall, 1),
                        "cost": round(inproc / per_cpu, 3),
                        "samples": {f"{k[0]}_{k[1]}": v for k, v in samples.items() if k[0] == name},
                    }
                )
    record = {
        **files,
        "workers": args.workers,
        "repeats": args.repeats,
        "cores": os.cpu_count(),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "rows": rows,
    }
    print(
        f"{files['images']} JPEGs, {args.workers} workers, median of {args.repeats}; load {load_start[0]:.2f}"
    )
    print(
        f"{'loader':<8}{'size':>5}{'inproc/cpu-s':>14}{'workers/cpu-s':>15}{'workers/wall-s':>16}{'cost':>7}"
    )
    for row in rows:
        print(
            f"{row['loader']:<8}{row['size']:>5}{row['inproc_per_cpu_s']:>14,.0f}"
            f"{row['workers_per_cpu_s']:>15,.0f}{row['workers_per_wall_s']:>16,.0f}{row['cost']:>7.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
