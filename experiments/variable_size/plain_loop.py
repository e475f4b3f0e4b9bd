"""The study's reference: a plain PyTorch loop that resizes the whole image to size x size.

No resflex code: torchvision ``ImageFolder``, timm's model, AdamW with a one-cycle
schedule, no augmentation, the aspect ratio ignored (squash) - the ~40-line loop
issue #13 measured against. Prints and writes (``--out``) the best val accuracy and, when DATA
has a test/ split, the test accuracy of the epoch with the best val accuracy (chosen on val,
reported on test).

    python experiments/variable_size/plain_loop.py DATA --size 40 --epochs 10 --seed 0 --out result.json

``--recipe resflex`` trains with resflex's recipe as far as a squashing loop can take it (the
``resolution.geometry=squash`` cell's recipe; keep_aspect's buckets need resflex's sampler): each
side of the whole image keeps sqrt(s) of its length, s uniform in 0.8-1, at a random place (squash's
jitter, ``data.augment.whole_scale``), no flip, a linear warm-up from 1 % of the LR over 3 epochs then
cosine to 1 % per step (``scheduler.warmup_epochs=3``, ``min_lr_ratio=0.01``), label smoothing 0.1;
AdamW 2e-3, wd 0.05 as before (resflex also exempts norms and biases from weight decay; this does not).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


class WholeImageJitter:
    """Squash's training jitter: each side keeps sqrt(s) of its length (s uniform in ``scale``), at a
    random place; the result is then squashed to the square."""

    def __init__(self, scale: tuple[float, float] = (0.8, 1.0)) -> None:
        self.scale = scale

    def __call__(self, image):  # a PIL image
        keep = math.sqrt(random.uniform(*self.scale))
        w, h = image.size
        cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
        left, top = random.randint(0, w - cw), random.randint(0, h - ch)
        return image.crop((left, top, left + cw, top + ch))


def accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += (model(images).argmax(1) == labels).sum().item()
            total += len(labels)
    return correct / total


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
    parser.add_argument("--recipe", choices=["plain", "resflex"], default="plain")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    resize = [
        transforms.Resize((args.size, args.size)),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ]
    tf = transforms.Compose(resize)
    train_tf = transforms.Compose([WholeImageJitter(), *resize]) if args.recipe == "resflex" else tf
    train = datasets.ImageFolder(str(args.data / "train"), train_tf)
    val = datasets.ImageFolder(str(args.data / "val"), tf)
    train_loader = DataLoader(train, args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True)
    val_loader = DataLoader(val, 256, num_workers=args.workers)
    model = timm.create_model(args.model, num_classes=len(train.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * len(train_loader)
    smoothing = 0.0
    if args.recipe == "resflex":
        warmup, smoothing = 3 * len(train_loader), 0.1

        def factor(step: int) -> float:  # resflex's WarmupCosine: 1 % -> 1 over warm-up, cosine to 1 %
            if step < warmup:
                return 0.01 + 0.99 * step / warmup
            progress = (step - warmup) / max(1, steps - warmup)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    else:
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps)
    best, best_state, started, history = -1.0, None, time.time(), []
    for epoch in range(args.epochs):
        model.train()
        for images, labels in train_loader:
            loss = F.cross_entropy(model(images), labels, label_smoothing=smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        acc = accuracy(model, val_loader)
        if acc > best:  # the first epoch with the best val accuracy, as a best-checkpoint callback keeps
            best, best_epoch, best_state = acc, epoch, copy.deepcopy(model.state_dict())
        history.append(round(acc, 4))
        print(f"epoch {epoch}: val/acc {acc:.4f}", flush=True)
    result = {
        "val_acc_best": best,
        "best_epoch": best_epoch,
        "val_acc_last": history[-1],
        "history": history,
        "seconds": time.time() - started,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if (args.data / "test").is_dir():  # the best-on-val epoch's weights, scored once on test
        model.load_state_dict(best_state)
        test = datasets.ImageFolder(str(args.data / "test"), tf)
        result["test_acc"] = accuracy(model, DataLoader(test, 256, num_workers=args.workers))
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
