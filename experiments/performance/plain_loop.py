"""An independent plain PyTorch + timm training loop on an image folder, for cross-checking
resflex's ``train/images_per_sec`` (TensorBoard) on the same folder, model and size.

Deliberately written the way a researcher would without resflex: torchvision
``ImageFolder`` + a v2 transform that normalises in the worker (float batches),
``DataLoader`` with workers, ``timm.create_model``, AdamW, cross-entropy with label
smoothing, a cosine LR per step. It shares no code with resflex. Throughput is images over wall
time (data waiting included, as resflex's logger counts it): per epoch, and for the epochs after
the first together — all their images over all their seconds, the definition ``tb_rate.py`` applies
to resflex's side (not a mean of per-epoch rates; issue 28).

    python experiments/performance/plain_loop.py --root /tmp/folder --backbone resnet18 \
        --size 64 --batch-size 32 --workers 2 --epochs 3

``--write N`` first writes N synthetic JPEGs (sides in [side, 2*side], ``--write-side``,
default ``--size``) under ``--root`` with resflex's benchmark helper, then both sides
read the very same files.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="folder with train/<class>/*")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--write", type=int, default=0, help="first write this many synthetic JPEGs under --root")
    p.add_argument("--write-side", type=int, help="their sides are drawn in [side, 2*side] (default: --size)")
    p.add_argument("--json", help="write per-epoch images/s here")
    args = p.parse_args()

    if args.write:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ lives beside src/
        from benchmarks.sections import write_image_folder

        write_image_folder(Path(args.root), args.write, args.write_side or args.size)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    transform = v2.Compose(
        [
            v2.RandomResizedCrop(args.size, scale=(0.35, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    data = datasets.ImageFolder(f"{args.root}/train", transform=transform)
    loader = DataLoader(
        data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
    )  # fmt: skip
    model = timm.create_model(args.backbone, num_classes=len(data.classes)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    total = args.epochs * len(loader)
    cosine = lambda step: 0.5 * (1 + math.cos(math.pi * step / total))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    per_epoch, images_per_epoch, seconds_per_epoch = [], [], []
    model.train()
    for epoch in range(args.epochs):
        images_seen, started = 0, time.perf_counter()
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            images_seen += images.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        rate = images_seen / seconds
        per_epoch.append(round(rate, 2))
        images_per_epoch.append(images_seen)
        seconds_per_epoch.append(round(seconds, 3))
        print(f"epoch {epoch}: {rate:.1f} images/s (loss {loss.item():.3f})", flush=True)
    later = slice(1, None) if len(per_epoch) > 1 else slice(None)
    steady = sum(images_per_epoch[later]) / sum(seconds_per_epoch[later])
    print(f"plain loop: {args.backbone} @{args.size}, batch {args.batch_size}, {args.workers} workers: "
          f"epochs after the first {steady:.1f} images/s")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            record = {
                "images_per_sec_per_epoch": per_epoch,
                "images_per_epoch": images_per_epoch,
                "seconds_per_epoch": seconds_per_epoch,
                "images_per_sec_after_first_epoch": round(steady, 2),
                "rate": "images over wall time of the epochs after the first (tb_rate.py: the same)",
            }
            json.dump({**record, **vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
