"""Shared test helpers: tiny image folders, running the CLI as a user types it, reading TensorBoard events."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from resflex.sweeps import register_resolvers

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "scripts" / "train.py"

# Keep each test process to the machine's size and the run deterministic; with pytest-xdist
# (`make test` runs `-n auto`) the workers share the cores instead of each taking them all.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

# Overrides that make a CLI run take seconds: a tiny timm model, tiny data, a few batches.
TINY = (
    "backbone.name=test_resnet",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.log_every_n_steps=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "resolution.size=32",
)
TINY_SYNTHETIC = ("data.source.num_train=48", "data.source.num_val=16", "data.source.num_test=16")
#: the smallest run that really learns (slow tests): 800 synthetic images, 4 epochs at 32 px, a tiny
#: resnet; each test adds its own split sizes and evaluation sizes
LEARNING_RUN = (
    "backbone.name=test_resnet",
    "data.source.num_train=800",
    "data.num_workers=0",
    "data.batch_size=16",
    "resolution.size=32",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=4",
    "trainer.enable_progress_bar=false",
    "optimizer.lr=0.004",
)

#: a tiny deterministic 2-epoch run, 5 steps an epoch: the SIGTERM-and-resume tests' base
RESUME_RUN = (
    *TINY_SYNTHETIC,
    "backbone.name=test_resnet",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
    "resolution.size=32",
    "test_after_fit=false",
)

#: a tiny NaFlex run on an image folder (add data.root): a 1-block, 24-wide NaFlexVit, 4 images at the
#: longest of two sequence lengths (16, 32 tokens), no loader workers
TINY_NAFLEX_MODEL = (
    "backbone=naflexvit",
    "resolution=naflex",
    "backbone.model_kwargs.embed_dim=24",
    "backbone.model_kwargs.depth=1",
    "backbone.model_kwargs.num_heads=2",
    "data=imagefolder",
    "data.num_workers=0",
    "data.batch_size=4",
    "resolution.tokens_per_batch=null",  # data.batch_size images at the longest length
    "resolution.seq_lens=[16,32]",
    "resolution.max_seq_len=32",
)

register_resolvers()  # ${resflex.job_dir:...} in configs/hydra/default.yaml, as the CLIs do


def _load_file(path: Path, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module, to call its ``main(argv)`` in this process."""
    return _load_file(REPO / "scripts" / f"{name}.py", f"scripts_{name}")


def load_experiment(study: str, name: str) -> ModuleType:
    """``experiments/<study>/<name>.py`` as a module (a study's data generator, called by its tests)."""
    return _load_file(REPO / "experiments" / study / f"{name}.py", f"experiments_{study}_{name}")


def run_cli(
    args: Sequence[str], cwd: Path, script: Path = TRAIN_SCRIPT, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run ``python scripts/<script> args...`` in a subprocess, exactly as a user would."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.setdefault("PYTHONWARNINGS", "ignore")
    env.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))  # the worker's share of the cores
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # tests.faults
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_run(overrides: Sequence[str], run_dir: Path, hydra_files: bool = False) -> dict:
    """``python scripts/train.py <overrides> hydra.run.dir=<run_dir>`` in this process.

    ``train(cfg)`` on the composed config, without a subprocess's start-up (seconds per run).
    ``hydra_files``: first write ``.hydra/config.yaml`` and ``overrides.yaml`` as Hydra does (what
    ``RunText`` and ``load_classifier`` read). Exit codes, stderr one-liners, DDP and sweeps need
    :func:`run_cli`.
    """
    from omegaconf import OmegaConf

    from resflex.train import train
    from tests.test_configs import compose_train

    cfg = compose_train(list(overrides), run_dir)
    if hydra_files:
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        saved = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        OmegaConf.save(saved, run_dir / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create(list(overrides)), run_dir / ".hydra" / "overrides.yaml")
    return train(cfg)


def scalar_tags(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series in the TensorBoard event files directly under ``run_dir``, read as TensorBoard
    reads them: plain scalars and tensor-style ones (the titled first point of ``val/acc``) together."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    series: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
                continue
            points = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
            series.setdefault(tag, []).extend(points)
    return series


def make_image_folder(
    root: Path,
    classes: Sequence[str] = ("cats", "dogs", "owls"),
    per_class: int = 6,
    splits: Sequence[str] = ("train",),
    seed: int = 0,
) -> Path:
    """Write a folder of varied images: sizes, aspect ratios, modes (L, RGB, RGBA, P) and formats (PNG, JPEG).

    Each class has a distinct mean colour so that a model can learn it quickly.
    """
    rng = np.random.default_rng(seed)
    modes = ("RGB", "L", "RGBA", "P")
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = int(rng.integers(9, 90)), int(rng.integers(9, 90))
                base = np.zeros(3)
                base[c % 3] = 200
                pixels = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels, "RGB")
                mode = modes[i % len(modes)]
                if mode == "L":
                    image = image.convert("L")
                elif mode == "RGBA":
                    image = image.convert("RGBA")
                elif mode == "P":
                    image = image.convert("P")
                ext = "jpg" if mode in ("RGB", "L") and i % 2 == 0 else "png"
                image.save(folder / f"{name}_{i}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images", splits=("train", "val"))


def pooling_from_config(name: str, **overrides: object) -> torch.nn.Module:
    """The pooling head ``configs/pooling/<name>.yaml`` builds (the config files are the registry)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from resflex.config import CONFIG_DIR

    return instantiate(
        {**OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "pooling" / f"{name}.yaml")), **overrides}
    )


def run_out_of_memory_from(monkeypatch: pytest.MonkeyPatch, side: int) -> None:
    """From inputs whose sides are both ``side`` px or more, the classifier asks torch's CPU allocator
    for more than any machine has, as a large model would on a GPU: the allocator's own failure,
    nothing made up (resflex/training/out_of_memory.py names it)."""
    from resflex.models.classifier import ImageClassifier

    forward = ImageClassifier.forward

    def hungry(self: ImageClassifier, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) >= side:
            torch.empty(2**62, dtype=torch.uint8)
        return forward(self, x)

    monkeypatch.setattr(ImageClassifier, "forward", hungry)


def load_rgb(path: str | Path) -> Image.Image:
    """A whole file decoded to RGB the plain way (EXIF applied): the reference for the reduced decode."""
    from PIL import ImageOps

    from resflex.data.images import to_rgb

    with Image.open(path) as image:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))
