"""The study's reference: a plain PyTorch loop that resizes the whole image to size x size.

No resflex code: torchvision ``ImageFolder``, timm's model, AdamW with a one-cycle
schedule, no augmentation, the aspect ratio ignored (squash) - the ~40-line loop
issue #13 measured against. Prints and writes (``--out``) the best val accuracy.

    python experiments/variable_size/plain_loop.py DATA --size 40 --epochs 10 --seed 0 --out result.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    tf = transforms.Compose(
        [
            transforms.Resize((args.size, args.size)),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    train = datasets.ImageFolder(str(args.data / "train"), tf)
    val = datasets.ImageFolder(str(args.data / "val"), tf)
    train_loader = DataLoader(train, args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True)
    val_loader = DataLoader(val, 256, num_workers=args.workers)
    model = timm.create_model(args.model, num_classes=len(train.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.lr, total_steps=args.epochs * len(train_loader)
    )
    best, started, history = 0.0, time.time(), []
    for epoch in range(args.epochs):
        model.train()
        for images, labels in train_loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in val_loader:
                correct += (model(images).argmax(1) == labels).sum().item()
        acc = correct / len(val)
        best = max(best, acc)
        history.append(round(acc, 4))
        print(f"epoch {epoch}: val/acc {acc:.4f}", flush=True)
    result = {
        "val_acc_best": best,
        "val_acc_last": history[-1],
        "history": history,
        "seconds": time.time() - started,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
