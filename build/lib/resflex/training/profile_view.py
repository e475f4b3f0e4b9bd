"""IMAGES ``run/data_profile``: the training split's sizes and aspects as a figure, once per sweep.

Apart from :mod:`resflex.training.views` because it is the one view that coordinates across the
jobs of a sweep: identical data profiles (same digest) are drawn by the first job only, claimed
through a small file in the sweep's folder (``train.py`` passes ``shared_dir``), so a sweep of many
jobs on one data set shows one profile, not one per job.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger("resflex")


def profile_digest(profile: Mapping[str, Any]) -> str:
    """A short hash of a data profile's numbers (:meth:`resflex.data.profile.DatasetProfile.as_dict`)."""
    import hashlib
    import json

    text = json.dumps(profile, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def claim_profile(shared_dir: str | Path, digest: str, job: str) -> str | None:
    """Claim the data profile ``digest`` for ``job`` in ``shared_dir/.data_profiles/``.

    Returns None when this job is the first with that profile (it logs the figure; also when
    the folder cannot be written), else the job that logged it. Created exclusively, so jobs
    launched in parallel agree on one.
    """
    import os

    marker = Path(shared_dir) / ".data_profiles" / digest
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            owner = marker.read_text().strip() or "another job"
        except OSError:
            owner = "another job"
        return None if owner == job else owner
    except OSError:
        return None
    with os.fdopen(fd, "w") as handle:
        handle.write(job)
    return None


class DataProfileFigure(pl.Callback):
    """IMAGES: the training data's size and aspect histograms (:mod:`resflex.data.profile`), once.

    Once per sweep where identical: the jobs of a Hydra multirun that profile the same data
    (same numbers, :func:`profile_digest`) log the figure in the first job only
    (:func:`claim_profile` in ``shared_dir``, the sweep's folder, which ``resflex.train`` sets in a
    multirun: the training layer does not ask Hydra); the others say where it
    is on the console. The profile's numbers go to every run's ``metrics.json``
    (``data_profile``), not to SCALARS, where one-point charts would push the training curves
    down the page.
    """

    def __init__(self, output_dir: str | None = None, shared_dir: str | None = None) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.shared_dir = shared_dir

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        profile = getattr(getattr(trainer, "datamodule", None), "profile", None)
        if profile is None or not trainer.is_global_zero or trainer.global_step > 0:
            return
        if self.shared_dir:  # a sweep's folder: train.py sets it (resflex.sweeps.sweep_dir)
            shared = Path(self.shared_dir)
            job = Path(self.output_dir or trainer.default_root_dir).name  # the job's folder
            owner = claim_profile(shared, profile_digest(profile.as_dict()), job)
            if owner is not None:
                log.info("data profile: as in sweep job %s (IMAGES, run/data_profile)", owner)
                return
        from resflex.training.loggers import log_figure

        figure = profile.figure()
        log_figure(trainer, "run/data_profile", figure, step=0)
        figure.clear()


# ---- the headline: at which size, and at which epoch ----------------------------------------------
