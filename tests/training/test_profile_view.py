"""The data-profile figure (IMAGES ``run/data_profile``): drawn once per run, and once per sweep where the
jobs profile the same data (resflex.training.profile_view)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from resflex.training import loggers
from resflex.training.profile_view import DataProfileFigure, claim_profile, profile_digest


class FakeProfile:
    """The two things the callback asks of a :class:`resflex.data.profile.DatasetProfile`."""

    def __init__(self, images: int = 100) -> None:
        self.images = images

    def as_dict(self) -> dict:
        return {"images": self.images, "geometry": "square"}

    def figure(self) -> SimpleNamespace:
        return SimpleNamespace(clear=lambda: None)


def fake_trainer(root: Path, profile: FakeProfile | None = None, *, rank_zero: bool = True, step: int = 0):
    datamodule = SimpleNamespace(profile=profile or FakeProfile())
    return SimpleNamespace(
        datamodule=datamodule, is_global_zero=rank_zero, global_step=step, default_root_dir=str(root)
    )


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tags the callback logs a figure under (log_figure recorded, not drawn)."""
    tags: list[str] = []
    monkeypatch.setattr(loggers, "log_figure", lambda trainer, tag, figure, step: tags.append(tag))
    return tags


def test_a_single_run_draws_its_data_profile_once_at_the_start(tmp_path: Path, drawn: list[str]) -> None:
    """Rank 0 at step 0 draws; other ranks, and a run resumed past step 0, do not draw it again."""
    callback = DataProfileFigure(output_dir=str(tmp_path / "run"))
    callback.on_fit_start(fake_trainer(tmp_path / "run"), None)
    assert drawn == ["run/data_profile"]
    callback.on_fit_start(fake_trainer(tmp_path / "run", rank_zero=False), None)
    callback.on_fit_start(fake_trainer(tmp_path / "run", step=40), None)
    assert drawn == ["run/data_profile"]


def test_sweep_jobs_with_the_same_data_draw_the_profile_in_the_first_job_only(
    tmp_path: Path, drawn: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Each job is named by its own folder (not the sweep's): the first draws, the second points at it,
    a job with other data draws its own."""
    sweep = tmp_path / "sweep"
    for job in ("pooling=avg", "pooling=max"):
        callback = DataProfileFigure(output_dir=str(sweep / job), shared_dir=str(sweep))
        with caplog.at_level("INFO", logger="resflex"):
            callback.on_fit_start(fake_trainer(sweep / job), None)
    assert drawn == ["run/data_profile"]
    assert "data profile: as in sweep job pooling=avg" in caplog.text
    other = DataProfileFigure(output_dir=str(sweep / "data=other"), shared_dir=str(sweep))
    other.on_fit_start(fake_trainer(sweep / "data=other", FakeProfile(images=7)), None)
    assert drawn == ["run/data_profile", "run/data_profile"]


def test_a_sweep_folder_that_cannot_be_written_still_draws_the_profile(tmp_path: Path) -> None:
    """The claim is a convenience: when its folder cannot be made, the job draws its own figure."""
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    assert claim_profile(not_a_folder, profile_digest({"images": 1}), "pooling=avg") is None
