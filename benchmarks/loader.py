"""Figure 6, ``--sections loader``: the data path alone (no model), images/s per core.

A folder of photo-sized JPEGs (:data:`PHOTO_SIZE`, quality :data:`QUALITY`, textured like a
photo so that entropy decoding costs what it does on real files) is written once; then, per
case (train/eval transform x square/keep_aspect x size), one epoch over the same files through:

- ``resflex_<decoder>``: ``ImageFolderSource(decoder=...)`` + ``ResflexDataModule`` with a
  ``FixedResolution`` schedule, its train or val loader: header read, crop drawn, decode
  (reduced by PIL when the crop allows), one resample, uint8 batches;
- ``timm``: ``timm.data.ImageDataset`` + ``timm.data.create_loader`` with the same crop
  ``scale``/``ratio``, flip 0.5, no colour jitter, bilinear, eval ``crop_pct=1``; its
  prefetcher's inner loader, i.e. the uint8 batches before normalisation (which the
  prefetcher does on the device, as resflex does);
- ``torchvision``: ``torchvision.io.decode_jpeg`` (libjpeg-turbo) + v2 ``RandomResizedCrop`` /
  ``Resize`` + ``CenterCrop`` on the uint8 tensor, a plain ``DataLoader``.

A separate block measures ``data.source.decoder=device`` (square cases): its loader alone (what
the workers do: header, framing draw, file bytes; images/s per core) and the decode + crop +
resize + flip of its batches on the device (``EncodedBatch.decode``; images/s, wall clock,
synchronised on CUDA). The device is the benchmark's (``--device``): on a machine without a GPU
that is the CPU, on one thread, and the rows say so; it is not a GPU figure then.

Everything runs in this process (``num_workers=0``) on one torch thread, so the loader uses
one core; the rate per core is images per second of this process's CPU time, which a
machine shared with other jobs disturbs less than wall time (wall-clock images/s are in
the record too). timm and torchvision have no aspect-bucketed framing: keep_aspect cases
are compared with their square pipeline at the same size (keep_aspect's batches have the
bucket's shape, short side = size, so they carry more pixels). Pipelines alternate in
order over the repeats; each figure is the median over repeats.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from resflex.data.images import AUTO_RULE, simplejpeg_module
from resflex.data.workers import usable_cores

PHOTO_SIZE = (500, 375)
QUALITY = 90
CLASSES = 4
BATCH_SIZE = 32
#: resflex's CPU decoders measured (``simplejpeg`` when the optional package is installed)
DECODERS = tuple(
    d for d in ("pil", "torchvision", "simplejpeg", "auto") if d != "simplejpeg" or simplejpeg_module()
)
#: column names in the printed table
SHORT = {"pil": "pil", "torchvision": "tv", "simplejpeg": "sj", "auto": "auto"}
BASELINES = ("timm", "torchvision")
#: the issue's targets: per core, train transform, square, resflex (default decoder) / timm
TARGETS = {224: 1.0, 128: 1.5}
SPLITS = ("train", "eval")
GEOMETRIES = ("square", "keep_aspect")
AUGMENT = {"scale": (0.35, 1.0), "ratio": (0.75, 1.3333)}


# ---- files -------------------------------------------------------------------------------------
def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour fields at four scales, fine noise and a few discs: a JPEG of it at quality
    90 and 500x375 is ~70 KB, about what photos of that size are (66 KB for scikit-learn's
    ``china.jpg`` re-encoded so; 35-60 KB for flatter ones), so decoding costs what it does on
    photos; the benchmark's shapes are much flatter and decode faster."""
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 128.0)
    for cells, amplitude in ((3, 70.0), (12, 35.0), (48, 25.0), (160, 25.0)):
        grid = rng.uniform(-1, 1, (max(2, cells * height // width) + 2, cells + 2, 3)).astype(np.float32)
        for c in range(3):
            field = Image.fromarray(grid[..., c]).resize((width, height), Image.Resampling.BICUBIC)
            pixels[..., c] += amplitude * np.asarray(field)
    pixels += rng.normal(0, 10, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 80)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def _write_photos(job: tuple[str, int, int, int]) -> int:
    root, start, stop, seed = job
    written = 0
    for i in range(start, stop):
        path = Path(root) / f"c{i % CLASSES}" / f"{i:05d}.jpg"
        photo_like(*PHOTO_SIZE, seed * 1_000_003 + i).save(path, quality=QUALITY)
        written += path.stat().st_size
    return written


def write_photo_folder(root: Path, count: int, seed: int = 0) -> dict[str, Any]:
    """``root/train/c<k>/*.jpg`` and ``root/val`` = the same files (a link): both splits read them."""
    train = root / "train"
    for k in range(CLASSES):
        (train / f"c{k}").mkdir(parents=True, exist_ok=True)
    workers = max(1, min(16, usable_cores()))
    chunk = max(1, math.ceil(count / workers))
    jobs = [(str(train), s, min(count, s + chunk), seed) for s in range(0, count, chunk)]
    started = time.perf_counter()
    if len(jobs) > 1:
        with ProcessPoolExecutor(len(jobs)) as pool:
            total = sum(pool.map(_write_photos, jobs))
    else:
        total = sum(map(_write_photos, jobs))
    try:
        (root / "val").symlink_to(train, target_is_directory=True)
    except OSError:  # no symlinks here: the val split reads the train folder's files anyway
        import shutil

        shutil.copytree(train, root / "val")
    return {
        "images": count,
        "image_size": list(PHOTO_SIZE),
        "quality": QUALITY,
        "mean_file_kb": round(total / count / 1024, 1),
        "write_seconds": round(time.perf_counter() - started, 2),
    }


# ---- pipelines: each returns a loader (an iterable of (uint8 images, labels)) ----------------------
def resflex_loader(
    root: Path, decoder: str, split: str, geometry: str, size: int, workers: int = 0
) -> Iterable:
    from resflex.data.datamodule import ResflexDataModule
    from resflex.data.datasets import ImageFolderSource
    from resflex.data.resolution import FixedResolution

    datamodule = ResflexDataModule(
        source=ImageFolderSource(str(root), decoder=decoder),
        schedule=FixedResolution(size, geometry=geometry),
        batch_size=BATCH_SIZE,
        num_workers=workers,
        pin_memory=False,
        persistent_workers=workers > 0,  # as in training (data.persistent_workers)
        prefetch_factor=None,
        augment={"scale": list(AUGMENT["scale"]), "ratio": list(AUGMENT["ratio"]), "hflip": True},
        eval_crop_pct=1.0,
    )
    return datamodule.train_dataloader() if split == "train" else datamodule.val_dataloader()


def timm_loader(root: Path, split: str, size: int, workers: int = 0) -> Iterable:
    from timm.data import ImageDataset, create_loader

    loader = create_loader(
        ImageDataset(str(root / "train")),
        input_size=(3, size, size),
        batch_size=BATCH_SIZE,
        is_training=split == "train",
        scale=AUGMENT["scale"],
        ratio=AUGMENT["ratio"],
        hflip=0.5,
        color_jitter=None,
        interpolation="bilinear",
        crop_pct=1.0,
        num_workers=workers,
        use_prefetcher=True,  # uint8 batches (fast_collate); normalisation would be on the device
        device=torch.device("cpu"),
        persistent_workers=workers > 0,  # timm's default
    )
    return loader.loader  # the DataLoader inside the PrefetchLoader


class _DecodeJpegFiles(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        image = decode_jpeg(read_file(str(self.paths[index])), mode=ImageReadMode.RGB)
        return self.transform(image), 0


def torchvision_loader(root: Path, split: str, size: int) -> Iterable:
    from torchvision.transforms import v2

    if split == "train":
        transform = v2.Compose(
            [v2.RandomResizedCrop(size, antialias=True, **AUGMENT), v2.RandomHorizontalFlip()]
        )
    else:
        transform = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    paths = sorted((root / "train").rglob("*.jpg"))
    dataset = _DecodeJpegFiles(paths, transform)
    return torch.utils.data.DataLoader(
        dataset, batch_size=BATCH_SIZE, shuffle=split == "train", drop_last=True
    )


# ---- timing --------------------------------------------------------------------------------------
def _epoch(loader: Iterable, limit: int | None = None) -> tuple[int, float, float, list[int]]:
    """Images, wall seconds, CPU seconds of this process, and the last batch's (h, w)."""
    images, shape = 0, [0, 0]
    wall, cpu = time.perf_counter(), time.process_time()
    for i, (batch, _) in enumerate(loader):
        images += int(batch.shape[0])
        shape = [int(batch.shape[-2]), int(batch.shape[-1])]
        if limit is not None and i + 1 >= limit:
            break
    return images, time.perf_counter() - wall, time.process_time() - cpu, shape


def _median(values: Sequence[float]) -> float:
    return round(float(statistics.median(values)), 1) if values else float("nan")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def decode_costs(paths: Sequence[Path], repeats: int) -> dict[str, Any]:
    """Per core, the two steps alone (images/s, median over repeats): decoding a whole file with PIL
    at each draft scale, with ``decode_jpeg`` and (when installed) with simplejpeg at each scale;
    resampling a decoded file to cover 224 and 128 px (bilinear, antialiased) with PIL and with torch
    (on ``decode_jpeg``'s HWC-backed tensor)."""
    from torchvision.transforms.v2 import functional as TF

    from resflex.data.images import ImageFile

    width, height = PHOTO_SIZE
    steps: dict[str, Callable[[Path], Any]] = {
        "pil_full": lambda p: ImageFile(p, "pil").decode(),
        **{
            f"pil_1/{s}": (lambda p, s=s: ImageFile(p, "pil").decode((width // s, height // s)))
            for s in (2, 4, 8)
        },
        "decode_jpeg": lambda p: ImageFile(p, "torchvision").decode_pixels(),
    }
    if "simplejpeg" in DECODERS:
        steps["simplejpeg_full"] = lambda p: ImageFile(p, "simplejpeg").decode_pixels()
        for s in (2, 4, 8):
            steps[f"simplejpeg_1/{s}"] = lambda p, s=s: ImageFile(p, "simplejpeg").decode_pixels(
                (width // s, height // s)
            )
    few = list(paths[:32])
    pil_images = [ImageFile(p, "pil").decode()[0] for p in few]
    tensors = [ImageFile(p, "torchvision").decode_pixels()[0] for p in few]
    for side in (224, 128):
        cover = [side, math.ceil(side * width / height)]
        steps[f"resample_pil_{side}"] = lambda i, cover=cover: TF.resize(pil_images[i], cover, antialias=True)
        steps[f"resample_torch_{side}"] = lambda i, cover=cover: TF.resize(tensors[i], cover, antialias=True)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            items: Sequence[Any] = range(len(few)) if name.startswith("resample") else paths
            cpu = time.process_time()
            for item in items:
                step(item)
            rates[name].append(len(items) / max(time.process_time() - cpu, 1e-9))
    return {name: _median(v) for name, v in rates.items()}


def device_decode_case(
    root: Path, split: str, size: int, repeats: int, device: torch.device
) -> dict[str, Any]:
    """``data.source.decoder=device``, square, one split and size: the loader alone (images per CPU-second)
    and the decode + framing of its batches on ``device`` (images per wall second), medians over repeats."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def decode_all(batches: Sequence[Any]) -> None:
        for encoded, labels in batches:
            encoded.to(device).decode(labels.to(device))
        sync()

    built = resflex_loader(root, "device", split, "square", size)
    batches = list(built)
    decode_all(batches[:1])  # warm-up: decoder handles, kernels
    workers: list[float] = []
    decoded: list[float] = []
    for _ in range(repeats):
        cpu = time.process_time()
        batches = list(built)
        count = sum(len(encoded) for encoded, _ in batches)
        workers.append(count / max(time.process_time() - cpu, 1e-9))
        sync()
        wall = time.perf_counter()
        decode_all(batches)
        decoded.append(count / max(time.perf_counter() - wall, 1e-9))
    return {"split": split, "size": size, "workers_per_core": _median(workers), "device": _median(decoded)}


def default_decoder() -> str:
    """The decoder of ``configs/data/imagefolder.yaml`` (= ``ImageFolderSource``'s default)."""
    import inspect

    from resflex.data.datasets import ImageFolderSource

    return str(inspect.signature(ImageFolderSource).parameters["decoder"].default)


def loader(
    sizes: Sequence[int] = (128, 160, 192, 224),
    images: int = 320,
    repeats: int = 3,
    splits: Sequence[str] = SPLITS,
    geometries: Sequence[str] = GEOMETRIES,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Per case, images/s per core of every pipeline, and each resflex decoder's ratio to timm; and
    ``data.source.decoder=device``'s two halves, its batches decoded on ``device``."""
    device = torch.device(device)
    images = max(BATCH_SIZE, images // BATCH_SIZE * BATCH_SIZE)  # whole batches: drop_last drops none
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    load_start = _load()
    cases: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="resflex-loader-") as tmp:
            root = Path(tmp) / "photos"
            files = write_photo_folder(root, images, seed)
            steps = decode_costs(sorted((root / "train").rglob("*.jpg")), repeats)
            for split in splits:
                for size in sizes:
                    for geometry in geometries:
                        cases.append(_case(root, split, geometry, size, repeats, cases))
            on_device = [device_decode_case(root, s, z, repeats, device) for s in splits for z in sizes]
    finally:
        torch.set_num_threads(threads)
    default = default_decoder()
    headline = {}
    for size, goal in TARGETS.items():
        case = next(
            (c for c in cases if (c["split"], c["geometry"], c["size"]) == ("train", "square", size)), None
        )
        if case is not None:
            headline[str(size)] = {
                "ratio": case["ratio_vs_timm"][f"resflex_{default}"],
                "target": goal,
                "by_decoder": {d: case["ratio_vs_timm"][f"resflex_{d}"] for d in DECODERS},
            }
    return {
        **files,
        "batch_size": BATCH_SIZE,
        "threads": 1,
        "workers": 0,
        "repeats": repeats,
        "sizes": list(sizes),
        "augment": {k: list(v) for k, v in AUGMENT.items()},
        "default_decoder": default,
        "auto_rule": AUTO_RULE,
        "simplejpeg": getattr(simplejpeg_module(), "__version__", None),
        "unit": "images per CPU-second of the loading process (one core); wall: images per second",
        "load_average": {"start": load_start, "end": _load()},
        "steps_per_core": steps,
        "cases": cases,
        "targets": headline,
        "device_decode": {
            "device": str(device),
            "unit": "workers: images per CPU-second of the loader alone (bytes read, framing drawn); "
            f"device: images per second, decode + crop + resize + flip of a batch on {device}"
            + (" (one CPU thread: not a GPU figure)" if device.type == "cpu" else ""),
            "cases": on_device,
        },
    }


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _case(
    root: Path, split: str, geometry: str, size: int, repeats: int, done: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    makers: dict[str, Callable[[], Iterable]] = {
        f"resflex_{d}": (lambda d=d: resflex_loader(root, d, split, geometry, size)) for d in DECODERS
    }
    same = [c for c in done if (c["split"], c["size"]) == (split, size)]
    square = next((c for c in same if c["geometry"] == "square"), None)
    if square is None:
        makers["timm"] = lambda: timm_loader(root, split, size)
        makers["torchvision"] = lambda: torchvision_loader(root, split, size)
    loaders = {name: make() for name, make in makers.items()}
    for built in loaders.values():  # warm-up: first batch (imports, kernels, caches)
        _epoch(built, limit=1)
    per_core: dict[str, list[float]] = {name: [] for name in loaders}
    wall: dict[str, list[float]] = {name: [] for name in loaders}
    shapes: dict[str, list[int]] = {}
    names = list(loaders)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            count, wall_s, cpu_s, shape = _epoch(loaders[name])
            per_core[name].append(round(count / cpu_s, 1))
            wall[name].append(round(count / wall_s, 1))
            shapes[name] = shape
    record: dict[str, Any] = {
        "split": split,
        "geometry": geometry,
        "size": size,
        "out_hw": shapes[names[0]],
        "per_core": {name: _median(v) for name, v in per_core.items()},
        "wall": {name: _median(v) for name, v in wall.items()},
        "samples": per_core,
    }
    if square is not None:  # the baselines' square figures at the same size
        for name in BASELINES:
            record["per_core"][name] = square["per_core"][name]
            record["wall"][name] = square["wall"][name]
        record["baseline"] = "timm and torchvision: their square pipeline at the same size"
    timm = record["per_core"]["timm"]
    record["ratio_vs_timm"] = {
        name: _ratio(v, timm) for name, v in record["per_core"].items() if name != "timm"
    }
    return record


def render(record: dict[str, Any]) -> list[str]:
    """The table rows of figure 6."""
    load = record["load_average"]
    lines = [
        "",
        f"6 loader: images/s per core (1 thread, in-process), {record['images']} JPEGs "
        f"{record['image_size'][0]}x{record['image_size'][1]} q{record['quality']} "
        f"({record['mean_file_kb']} KB), batch {record['batch_size']}, median of {record['repeats']}; "
        f"load {load['start']} -> {load['end']}",
        f"  {'split':<6}{'geometry':<12}{'size':>5}{'out':>9}"
        + "".join(f"{n:>10}" for n in [*(SHORT[d] for d in DECODERS), "timm", "tv-plain"])
        + "".join(f"{SHORT[d] + '/timm':>10}" for d in DECODERS),
    ]
    for c in record["cases"]:
        rates = [c["per_core"].get(f"resflex_{d}") for d in DECODERS]
        rates += [c["per_core"].get("timm"), c["per_core"].get("torchvision")]
        ratios = [c["ratio_vs_timm"].get(f"resflex_{d}") for d in DECODERS]
        out = "x".join(str(v) for v in c["out_hw"])
        lines.append(
            f"  {c['split']:<6}{c['geometry']:<12}{c['size']:>5}{out:>9}"
            + "".join(f"{_fmt(v, 0):>10}" for v in rates)
            + "".join(f"{_fmt(v, 3):>10}" for v in ratios)
        )
    on_device = record.get("device_decode")
    if on_device:
        where = on_device["device"]
        note = " (run on the CPU, one thread: not a GPU figure)" if where == "cpu" else ""
        lines.append(
            f"  decoder=device, square: workers = bytes read + framing drawn, images/s per core; "
            f"{where} = decode + crop + resize + flip of a batch on {where}, images/s{note}"
        )
        lines.append(f"  {'split':<6}{'geometry':<12}{'size':>5}{'workers':>10}{where:>10}")
        for c in on_device["cases"]:
            lines.append(
                f"  {c['split']:<6}{'square':<12}{c['size']:>5}"
                f"{_fmt(c['workers_per_core'], 0):>10}{_fmt(c['device'], 0):>10}"
            )
    steps = record.get("steps_per_core") or {}
    if steps:
        alone = ", ".join(f"{k} {v:,.0f}" for k, v in steps.items())
        lines.append(f"  steps alone, images/s per core: {alone}")
    for size, t in record["targets"].items():
        verdict = "met" if t["ratio"] is not None and t["ratio"] >= t["target"] else "NOT met"
        lines.append(
            f"  target train square @{size}: resflex ({record['default_decoder']}) / timm "
            f"{_fmt(t['ratio'], 3)} >= {t['target']}: {verdict}"
        )
    return lines


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"
