"""What a run reports about itself (``<run>/metrics.json``), filled in explicitly as the run goes.

The training task creates one :class:`RunRecord`; :func:`resflex.build.build_trainer`
hands it to every callback that implements :class:`FillsRunRecord`, and those
callbacks write their part when they know it (the fine-tuning callback its
parameter counts, the throughput logger its last rates, the interrupt handler the
checkpoint it saved). The task itself adds status, timing and metrics. Nothing is
looked up after the fact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunRecord:
    """The fields of ``metrics.json``; :meth:`as_dict` keeps today's key order and omits empty parts."""

    output_dir: str
    status: str = "running"
    # the command-line overrides the run was started with; a resume in its folder keeps them, and adds
    # its own to ``resumes`` (resflex.resume_check)
    overrides: list[str] | None = None
    resumes: list[list[str]] | None = None
    choices: dict[str, Any] | None = None
    data_profile: dict[str, Any] | None = None
    wall_time_s: float | None = None
    params: dict[str, int] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    #: per split, the checkpoint file its final metrics were measured on and whether after BatchNorm
    #: calibration (:class:`resflex.training.callbacks.MeasuredOn`)
    measured_on: dict[str, dict[str, Any]] | None = None
    checkpoint: str | None = None
    error: str | None = None
    throughput: dict[str, float] = field(default_factory=dict)
    # the best epoch's validation metrics (val/acc_best, val/best_epoch), merged into metrics
    best_metrics: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "output_dir": self.output_dir}
        optional = (
            ("overrides", self.overrides),
            ("resumes", self.resumes),
            ("choices", self.choices),
            ("data_profile", self.data_profile),
            ("checkpoint", self.checkpoint),
            ("error", self.error),
            ("wall_time_s", self.wall_time_s),
            ("params", self.params or None),
            ("best", self.best),
            ("measured_on", self.measured_on),
        )
        out.update({key: value for key, value in optional if value is not None})
        out["metrics"] = self.metrics
        return out


class FillsRunRecord:
    """Mixin for callbacks that report into the run record; :func:`attach_run_record` sets it."""

    run_record: RunRecord | None = None


def attach_run_record(callbacks: list[Any], record: RunRecord | None) -> None:
    """Give ``record`` to every callback that fills part of it."""
    for callback in callbacks:
        if isinstance(callback, FillsRunRecord):
            callback.run_record = record
