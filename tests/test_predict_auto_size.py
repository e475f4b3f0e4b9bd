"""``predict.size=auto``: the robust sizes come from the run's recorded curve (val, else test, else the eval
size), and each image runs at the robust size nearest to it in log scale, framed as that fixed size would be.
The end-to-end prediction on a trained run is in tests/test_predict.py (it reuses that module's run)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from resflex.data.resolution import FixedResolution
from resflex.errors import ConfigError
from resflex.predict import auto_sizes, framed_shape, nearest_size, parse_predict_size, plan_batches
from resflex.run_folder import read_record

#: robust on 48-96 px: 32 and 128 px are more than 0.03 below the best (64 px)
CURVE = {"32": 0.50, "48": 0.80, "64": 0.82, "96": 0.80, "128": 0.55}
ROBUST = [(48, 48), (64, 64), (96, 96)]


def fabricated_run(root: Path, metrics: dict) -> dict:
    """A run folder's metrics.json, read back the way load_classifier reads it (``info["metrics"]``)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "metrics.json").write_text(json.dumps({"status": "completed", "metrics": metrics}))
    return read_record(root)["metrics"]


def test_candidates_are_the_robust_sizes_of_the_val_curve(tmp_path: Path) -> None:
    metrics = fabricated_run(tmp_path, {f"val/acc@{t}": a for t, a in CURVE.items()} | {"val/acc": 0.82})
    assert auto_sizes(metrics, (64, 64)) == (ROBUST, "val")
    # a tested run too: still the val curve's sizes (the test split is not for choosing)
    narrow = {"test/acc@48": 0.6, "test/acc@64": 0.8, "test/acc@96": 0.6}
    both = fabricated_run(tmp_path / "both", {**metrics, **narrow})
    assert auto_sizes(both, (64, 64)) == (ROBUST, "val")


def test_candidates_fall_back_to_the_test_curve_then_to_the_eval_size(tmp_path: Path) -> None:
    tested = fabricated_run(tmp_path / "a", {f"test/acc@{t}": a for t, a in CURVE.items()})
    assert auto_sizes(tested, (64, 64)) == (ROBUST, "test")
    assert auto_sizes(fabricated_run(tmp_path / "b", {"val/acc": 0.8}), (40, 40)) == ([(40, 40)], "eval size")


@pytest.mark.parametrize(
    ("side", "expected"),
    [
        (20, 48),  # smaller than every robust size: the smallest
        (300, 96),  # larger than every robust size: the largest
        (48, 48),
        (52, 48),
        (56, 64),  # log(56/48)=0.154 > log(64/56)=0.134
        (70, 64),
        (78, 64),  # below sqrt(64*96)=78.4, the log-scale midpoint
        (80, 96),
        (math.sqrt(48 * 64), 64),  # an exact tie goes to the larger size
    ],
)
def test_nearest_robust_size_in_log_scale(side: float, expected: int) -> None:
    assert nearest_size(side, ROBUST) == (expected, expected)


def test_keep_aspect_compares_the_image_with_the_bucket_shape_it_would_run_at() -> None:
    schedule = FixedResolution(size=64, geometry="keep_aspect")
    wide = lambda size: framed_shape(schedule, size, 2.0)  # noqa: E731
    assert wide((48, 48)) == (48, 96) and wide((32, 32)) == (32, 64)
    # a 2:1 image of 90x45 (side 63.6): 48 px runs it at 48x96 (side 67.9), nearer than 64x128 (90.5)
    assert nearest_size(math.sqrt(90 * 45), ROBUST, wide) == (48, 48)
    assert nearest_size(math.sqrt(90 * 45), ROBUST) == (64, 64)  # square framing: 64x64
    assert framed_shape(None, (48, 48), 2.0) == (48, 48)


def write_images(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (width, height) in enumerate(sizes):
        path = folder / f"img_{i}.png"
        Image.new("RGB", (width, height), (100, 150, 200)).save(path)
        files.append(path)
    return files


def test_plan_batches_each_image_at_its_robust_size_one_shape_per_batch(tmp_path: Path) -> None:
    sizes = [(20, 20), (300, 300), (70, 70), (20, 22), (310, 290), (120, 60)]  # (width, height)
    files = write_images(tmp_path / "imgs", sizes)
    plan = plan_batches(files, "auto", 2, "square", None, [0.5, 1.0, 2.0], 8, 16, 512, ROBUST)
    assert [plan.sizes[i] for i in range(6)] == [(48, 48), (96, 96), (64, 64), (48, 48), (96, 96), (96, 96)]
    assert [shape for shape, _, _ in plan.batches] == [(48, 48), (64, 64), (96, 96), (96, 96)]
    assert all(bucket is None for _, _, bucket in plan.batches)  # square framing: no buckets
    for shape, members, _ in plan.batches:
        assert all(plan.sizes[i] == shape for i in members) and len(members) <= 2

    schedule = FixedResolution(size=64, geometry="keep_aspect")
    plan = plan_batches(
        files, "auto", 8, "keep_aspect", schedule, list(schedule.aspect_ratios), 8, 16, 512, ROBUST
    )
    # 120x60 (side 84.9) is in the 2:1 bucket: 64 px runs it at 64x128 (side 90.5), 48 px at 48x96 (67.9)
    assert plan.sizes[5] == (64, 64)
    shapes = {i: shape for shape, members, _ in plan.batches for i in members}
    assert shapes[5] == (64, 128) and shapes[0] == (48, 48) and shapes[1] == (96, 96)


def test_auto_parses_and_a_bad_value_is_one_line() -> None:
    classifier = SimpleNamespace(eval_size=(64, 64))
    assert parse_predict_size("auto", classifier) == "auto"
    assert parse_predict_size("Auto", classifier) == "auto"
    with pytest.raises(ConfigError, match="predict.size") as info:
        parse_predict_size("automatic", classifier)
    assert "\n" not in str(info.value) and "auto" in info.value.hint
