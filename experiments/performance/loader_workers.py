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
process's side). ``--collate-only`` prints what one suspect costs alone: stacking a batch into a
fresh shared-memory block, as every worker batch is, against ordinary memory.

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

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "src"), str(Path(__file__).resolve().parents[2])]

from benchmarks.loader import resflex_loader, timm_loader, write_photo_folder  # noqa: E402 (after sys.path)


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


def _stack_into_shared(images: list[torch.Tensor]) -> torch.Tensor:
    """What ``default_collate`` does in a worker: the batch stacked into a new shared-memory block."""
    first = images[0]
    storage = first._typed_storage()._new_shared(len(images) * first.numel(), device=first.device)
    return torch.stack(images, 0, out=first.new(storage).resize_(len(images), *first.shape))


def collate_costs(sizes: list[int], batch: int = 32, repeats: int = 50) -> dict[str, float]:
    """CPU ms per image to stack a batch of (3, s, s) uint8 images (HWC-backed, as the transforms
    return them) into ordinary memory (in-process ``default_collate``) and into a fresh shared-memory
    block (what ``default_collate`` does in a worker, so the batch can reach the main process)."""
    from torch.utils.data import default_collate

    costs = {}
    for size in sizes:
        images = [torch.zeros(size, size, 3, dtype=torch.uint8).permute(2, 0, 1) for _ in range(batch)]
        labeled = [(image, 0) for image in images]
        cases = (("ordinary", default_collate, labeled), ("shared", _stack_into_shared, images))
        for name, step, arg in cases:
            cpu = time.process_time()
            for _ in range(repeats):
                step(arg)
            costs[f"{name}_{size}"] = round((time.process_time() - cpu) / repeats / batch * 1e3, 4)
    return costs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=960)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--collate-only", action="store_true", help="only the collate costs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    collate = collate_costs(args.sizes)
    print("collate, CPU ms per image:", ", ".join(f"{k} {v}" for k, v in collate.items()))
    if args.collate_only:
        return
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
        "collate_ms_per_image": collate,
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
