"""A ``keep_aspect`` run uses one side of each size: a non-square training size is refused in one line,
naming the key it came from, as ``scripts/eval.py`` and ``predict.py`` refuse it. Before, training ran
``resolution.size=[40,72]`` at the 40 px buckets (40x40, 40x56, 40x80, never 40x72) while the table,
the model card and eval.py called it 40x72."""

from __future__ import annotations

from pathlib import Path

import pytest

from resflex.build import build_datamodule, check_sizes_bucketed
from resflex.data.sizes import check_training_sizes_bucketed, non_square_key
from resflex.errors import ConfigError
from resflex.train import train
from tests.conftest import TINY, TINY_SYNTHETIC
from tests.test_configs import compose_train

#: the tiny run without its size (each test gives its own, some schedules have no resolution.size)
BASE = [*(o for o in TINY if not o.startswith("resolution.size=")), *TINY_SYNTHETIC]


@pytest.mark.parametrize(
    ("overrides", "key", "side"),
    [
        (["resolution.size=[40,72]"], "resolution.size", 40),
        (["resolution=random", "resolution.sizes=[[40,72],64]"], "resolution.sizes", 40),
        (["resolution=progressive", "resolution.start_size=[48,32]"], "resolution.start_size", 32),
        # multigrid's sizes are factors of its size: the key they came from
        (["resolution=multigrid", "resolution.size=[40,72]"], "resolution.size", 16),
    ],
)
def test_a_non_square_training_size_on_a_keep_aspect_run_names_its_key_and_the_side_it_would_train_at(
    overrides: list[str], key: str, side: int, tmp_path: Path
) -> None:
    cfg = compose_train([*BASE, *overrides], tmp_path)
    datamodule = build_datamodule(cfg)
    assert datamodule.schedule.geometry == "keep_aspect"  # geometry=auto chose it for the shapes
    with pytest.raises(ConfigError) as info:
        check_sizes_bucketed(cfg, datamodule)
    line = info.value.one_line()
    assert line.startswith(f"{key}: [") and f"would train as {side} px" in line, line
    assert "resolution.geometry=auto chose it" in line and "resolution.geometry=squash" in line, line


@pytest.mark.parametrize("geometry", ["squash", "square", "pad"])
def test_a_geometry_that_frames_the_image_at_h_x_w_keeps_a_non_square_size(
    geometry: str, tmp_path: Path
) -> None:
    overrides = [*BASE, "resolution.size=[32,48]", f"resolution.geometry={geometry}"]
    cfg = compose_train(overrides, tmp_path)
    check_sizes_bucketed(cfg, build_datamodule(cfg))  # no error


def test_a_non_square_evaluation_size_asked_by_name_is_refused_on_a_keep_aspect_run(tmp_path: Path) -> None:
    cfg = compose_train([*TINY, *TINY_SYNTHETIC, "eval.resolutions=[32,[32,48]]"], tmp_path)
    with pytest.raises(ConfigError, match=r"eval.resolutions: \[32, 48\] is not square"):
        check_sizes_bucketed(cfg, build_datamodule(cfg))


def test_keep_aspect_set_by_the_user_is_not_blamed_on_auto() -> None:
    with pytest.raises(ConfigError) as info:
        check_training_sizes_bucketed(
            {"size": [40, 72]}, [(40, 72)], "keep_aspect", "short_side", chosen=False
        )
    assert "auto" not in info.value.message and "would train as 40 px" in info.value.message


def test_by_area_the_side_is_that_of_the_same_area() -> None:
    with pytest.raises(ConfigError, match="the side of the same area: \\[32, 72\\] would train as 48 px"):
        check_training_sizes_bucketed({"size": [32, 72]}, [(32, 72)], "keep_aspect", "area", chosen=True)


def test_the_key_is_the_one_holding_the_size_and_a_list_of_two_square_sizes_is_not_one() -> None:
    assert non_square_key({"sizes": [[40, 72], 64]}, (40, 72)) == "resolution.sizes"
    assert non_square_key({"sizes": [40, 72], "start_size": [24, 48]}, (12, 24)) == "resolution.start_size"
    assert non_square_key({"sizes": [40, 72], "size": 64}, (20, 36)) == "resolution.size"


def test_the_run_is_refused_before_training(tmp_path: Path) -> None:
    cfg = compose_train([*BASE, "resolution.size=[32,48]"], tmp_path)
    with pytest.raises(ConfigError, match="resolution.size: \\[32, 48\\] is not square"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()
