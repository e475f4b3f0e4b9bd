"""The dataset profile and ``geometry=auto`` as a user meets them: console, metrics.json, TensorBoard."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY, make_image_folder, run_cli, train_run


def image_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["images"])
    return tags


def square_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(("a", "b")):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(6):
                side = int(rng.integers(30, 80))
                pixels = np.full((side, side + int(rng.integers(-2, 3)), 3), 60 + 120 * c, np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_auto_geometry_on_a_variable_aspect_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """In-process (the CLI's ``train``): the console lines are the log records (test_cli.py checks that
    a CLI run's train.log gets them)."""
    data = make_image_folder(tmp_path / "images", splits=("train", "val"))  # sides 9-89 px, any aspect
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="resflex"):
        record = train_run(["data=imagefolder", f"data.root={data}", *TINY], run_dir)
    assert record["status"] == "completed"
    console = "\n".join(caplog.messages)
    assert "data profile: 18 training images" in console
    assert "aspect p5=" in console and "centre crop discards, per average image: square" in console
    assert "geometry: keep_aspect (aspect w/h" in console and "discard" in console
    profile = json.loads((run_dir / "metrics.json").read_text())["data_profile"]
    assert profile == record["data_profile"]
    assert profile["geometry"] == "keep_aspect" and profile["discarded"]["square"] > 0.1
    assert profile["images"] == 18 and set(profile["aspect"]) == {"p5", "p25", "p50", "p75", "p95"}
    assert "run/data_profile" in image_tags(run_dir)


def test_auto_geometry_on_a_square_folder_stays_square(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In-process, as above."""
    data = square_folder(tmp_path / "images")
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="resflex"):
        record = train_run(["data=imagefolder", f"data.root={data}", *TINY, "logger=none"], run_dir)
    assert record["status"] == "completed"
    assert any("geometry: square (aspect w/h" in m for m in caplog.messages), caplog.messages
    assert json.loads((run_dir / "metrics.json").read_text())["data_profile"]["geometry"] == "square"


def test_bad_geometry_is_one_line(tmp_path: Path) -> None:
    result = run_cli(["resolution.geometry=round", *TINY, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) <= 2 and "resolution.geometry must be one of" in result.stderr
