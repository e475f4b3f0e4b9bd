"""Per-step cost at equal tokens: resflex's NaFlex training step against timm's ``--naflex-loader``
step, side by side in one process on the same image folder (issue 30's target: within 1.1x).

    OMP_NUM_THREADS=1 python experiments/naflex/timing.py DATA_DIR [--steps 20] [--warmup 3] [--rounds 2] \
        [--csv experiments/naflex/timing.csv]

Both sides: the study's model (naflexvit_base_patch16_gap at patch 8, width 192, 4 blocks, 3
heads), sequence lengths 48/64/96 with --batch images at the longest (64: 6,144 token slots a step at most),
linear loss scaling, AdamW 2e-3, label smoothing 0.1, one loader worker, float32 on the CPU.

- resflex: the default command's pieces (``backbone=naflexvit resolution=naflex data=imagefolder``,
  composed by Hydra, built by resflex's builders: its loader, sampler, collate, LightningModule with
  the pyramid head) in a Lightning Trainer with resflex's settings (benchmarks/runners.make_trainer:
  TensorBoard logger, LR monitor, throughput logger; no validation, no checkpoints).
- timm: ``timm.data.create_naflex_loader`` (its map-dataset wrapper, transforms, collation and
  prefetcher, as train.py builds it; --scale 0.8 1 --ratio 0.9 1.111, no flip, no colour jitter)
  and the plain step of train.py (model(dict), LabelSmoothingCrossEntropy x B/64, backward, AdamW),
  with timm's own head. Both use the installed timm (resflex's dependency).

The rounds alternate (resflex, timm, resflex, timm...), each ``warmup`` steps then ``steps`` timed;
a step is the time between the ends of two consecutive steps (loader wait included). The two
loaders draw their sequence lengths independently, so steps are compared per sequence length:
the median seconds per step at each length on each side, their ratio, and the mean of the ratios
(the headline: resflex / timm, <= 1.1 is the target). Also the padded share of token slots.
``--csv``: one row per side (and its commit, machine, finished, command) appended to a result file
that ``table.py --timing`` prints.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # benchmarks/
SEQ_LENS = (48, 64, 96)
BATCH = 64
BUDGET = BATCH * max(SEQ_LENS)
MODEL_KWARGS = {"patch_size": 8, "embed_dim": 192, "depth": 4, "num_heads": 3}


def set_batch(batch: int) -> None:
    """Both sides' images a step at the longest length (timm's ``-b``), and the token budget it makes."""
    global BATCH, BUDGET
    BATCH, BUDGET = batch, batch * max(SEQ_LENS)


class StepLog:
    """(seq_len, seconds, slots, padded slots) per step after the warm-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.seen, self.last = warmup, 0, 0.0
        self.steps: list[tuple[int, float, int, int]] = []

    def done(self, images: int, slots: int, padded: int) -> None:
        now = time.perf_counter()
        self.seen += 1
        if self.seen > self.warmup:
            self.steps.append((BUDGET // images, now - self.last, slots, padded))
        self.last = now


class TokenStepTimer(pl.Callback):
    def __init__(self, log: StepLog) -> None:
        self.record = log

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, index: int) -> None:
        valid = batch[0].patch_valid
        self.record.done(int(valid.shape[0]), int(valid.numel()), int((~valid).sum()))


def resflex_round(data: Path, warmup: int, steps: int, seed: int) -> StepLog:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from benchmarks.runners import Setup, make_trainer
    from resflex.build import build_datamodule, build_module

    GlobalHydra.instance().clear()
    overrides = ["backbone=naflexvit", "resolution=naflex", "data=imagefolder", f"data.root={data}",
                 "data.num_workers=1", f"seed={seed}", f"data.batch_size={BATCH}",
                 "resolution.tokens_per_batch=null",  # BATCH images at the longest length, as timm's -b
                 f"resolution.seq_lens=[{','.join(map(str, SEQ_LENS))}]"]  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = out
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        pl.seed_everything(seed, workers=True)
        datamodule = build_datamodule(cfg)
        module = build_module(cfg, datamodule.num_classes)
        log = StepLog(warmup)
        setup = Setup(backbone=str(cfg.backbone.name), device=torch.device("cpu"), batch_size=BATCH)
        trainer = make_trainer(setup, warmup + steps, [TokenStepTimer(log)], out)
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.fit(module, datamodule=datamodule)
    return log


def timm_round(data: Path, warmup: int, steps: int, seed: int) -> StepLog:
    import timm
    from timm.data import create_dataset, create_naflex_loader, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2

    torch.manual_seed(seed)
    model = timm.create_model("naflexvit_base_patch16_gap", num_classes=10, **MODEL_KWARGS)
    config = resolve_data_config({}, model=model)
    dataset = create_dataset("", root=str(data), split="train", is_training=True)
    loader = create_naflex_loader(
        dataset, patch_size=MODEL_KWARGS["patch_size"], train_seq_lens=SEQ_LENS, max_seq_len=64,
        batch_size=BATCH, is_training=True, scale=(0.8, 1.0), ratio=(0.9, 1.111), hflip=0.0,
        color_jitter=0.0, interpolation=config["interpolation"], mean=config["mean"], std=config["std"],
        num_workers=1, seed=seed, device=torch.device("cpu"), pin_memory=False,
    )  # fmt: skip
    optimizer = create_optimizer_v2(model, "adamw", lr=2e-3, weight_decay=0.05)
    criterion = LabelSmoothingCrossEntropy(smoothing=0.1)
    model.train()
    log = StepLog(warmup)
    log.last = time.perf_counter()
    done = 0
    while done < warmup + steps:
        for inputs, target in loader:
            loss = criterion(model(inputs), target) * (inputs["patches"].shape[0] / BATCH)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            valid = inputs["patch_valid"]
            log.done(int(valid.shape[0]), int(valid.numel()), int((~valid).sum()))
            done += 1
            if done == warmup + steps:
                break
    return log


def summary(logs: dict[str, list[StepLog]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    per_len: dict[str, dict[int, list[float]]] = {}
    for side, rounds in logs.items():
        steps = [s for log in rounds for s in log.steps]
        by_len: dict[int, list[float]] = defaultdict(list)
        for seq_len, seconds, _, _ in steps:
            by_len[seq_len].append(seconds)
        per_len[side] = by_len
        slots = sum(s[2] for s in steps)
        out[side] = {
            "steps": len(steps),
            "s_per_step": statistics.median(s[1] for s in steps),
            "padding_share": sum(s[3] for s in steps) / slots,
            "slots_per_step": slots / len(steps),
            "s_per_step_at": {n: statistics.median(v) for n, v in sorted(by_len.items())},
        }
    common = sorted(set(per_len["resflex"]) & set(per_len["timm"]))
    ratios = {n: out["resflex"]["s_per_step_at"][n] / out["timm"]["s_per_step_at"][n] for n in common}
    out["ratio_at"] = ratios
    out["ratio"] = statistics.mean(ratios.values()) if ratios else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="an image folder with a train/ split (make_digits.py)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--csv", type=Path, default=None, help="append one row per side to this file")
    parser.add_argument(
        "--batch", type=int, default=BATCH, help="images a step at the longest length (both sides)"
    )
    args = parser.parse_args()
    set_batch(args.batch)
    from benchmarks.runners import quiet

    quiet()
    logs: dict[str, list[StepLog]] = {"resflex": [], "timm": []}
    for r in range(args.rounds):
        logs["resflex"].append(resflex_round(args.data.resolve(), args.warmup, args.steps, seed=r))
        logs["timm"].append(timm_round(args.data.resolve(), args.warmup, args.steps, seed=r))
    result = summary(logs)
    print(f"torch threads {torch.get_num_threads()}, budget {BUDGET} token slots, seq lens {SEQ_LENS}")
    print("| side | steps | s / step | s / step at 48 / 64 / 96 | padded slots | slots / step |")
    print("|---|---|---|---|---|---|")
    for side in ("resflex", "timm"):
        r = result[side]
        at = " / ".join(f"{r['s_per_step_at'].get(n, float('nan')):.3f}" for n in SEQ_LENS)
        print(f"| {side} | {r['steps']} | {r['s_per_step']:.3f} | {at} | {100 * r['padding_share']:.1f} % "
              f"| {r['slots_per_step']:.0f} |")  # fmt: skip
    at = ", ".join(f"{n}: {v:.3f}" for n, v in result["ratio_at"].items())
    if result["ratio"] is None:  # a short run: no sequence length drawn on both sides
        print("resflex / timm: no sequence length was drawn on both sides (more --steps compare them)")
    else:
        print(f"resflex / timm, seconds per step at equal tokens: {result['ratio']:.3f} (per length: {at})")
    if args.csv:
        write_csv(args.csv, result, args)


def write_csv(path: Path, result: dict[str, Any], args: argparse.Namespace) -> None:
    import csv
    import importlib.util
    from datetime import datetime, timezone

    spec = importlib.util.spec_from_file_location("naflex_collect", Path(__file__).with_name("collect.py"))
    collect = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(collect)  # type: ignore[union-attr]
    command = " ".join(["python experiments/naflex/timing.py", *sys.argv[1:]])
    finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = []
    for side in ("resflex", "timm"):
        r = result[side]
        row = {"side": side, "commit": collect.commit(), "machine": collect.machine(), "finished": finished}
        row.update(rounds=args.rounds, steps=r["steps"], s_per_step=round(r["s_per_step"], 4))
        for n in SEQ_LENS:
            row[f"s_per_step@{n}"] = round(r["s_per_step_at"][n], 4) if n in r["s_per_step_at"] else ""
        row["padding_share"] = round(r["padding_share"], 4)
        row["slots_per_step"] = round(r["slots_per_step"], 1)
        row["ratio_vs_timm"] = (
            (round(result["ratio"], 4) if result["ratio"] is not None else "") if side == "resflex" else 1.0
        )
        row["command"] = command
        rows.append(row)
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
