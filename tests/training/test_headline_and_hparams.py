"""Issue 27, what is left: a headline that names its size, checkpoint selection by a chosen metric,
HPARAMS columns that line up across a sweep's jobs (one type each, what differs first, best-epoch
metrics), the schedule chart showing the scheduled size, and the data profile once per sweep.

The pure parts are checked directly; one slow two-job sweep (a subprocess, as a user runs it) is
read back from its event files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from resflex.errors import ConfigError
from resflex.sweeps import swept_text_keys
from resflex.training.callbacks import BestEpochMetrics
from resflex.training.loggers import TensorBoardLogger
from resflex.training.profile_view import claim_profile, profile_digest
from resflex.training.results import EVAL_SIZE_COLUMN, collect_metrics, hparam_metric_tags, run_hparams
from resflex.training.selection import apply_monitor, check_monitor, monitor_needs_every_size
from resflex.training.views import (
    command_markdown,
    custom_scalars_layout,
    draw_confusion_matrix,
    headline_titles,
)
from tests.conftest import TINY, run_cli, scalar_tags
from tests.training.test_logging_ui import read_events

SIZES = ["32", "16", "48"]  # as tags: the main size first


# ---- checkpoint selection by a chosen metric -------------------------------------------------------------


def test_monitors_over_every_size_need_every_size_validated() -> None:
    for monitor in ("val/acc_mean_sizes", "val/acc_worst", "val/acc_range", "val/acc@48", "val/loss@16"):
        assert monitor_needs_every_size(monitor, SIZES), monitor
    for monitor in ("val/acc", "val/loss", "val/acc@32", "train/loss"):
        assert not monitor_needs_every_size(monitor, SIZES), monitor
    assert not monitor_needs_every_size("val/acc_mean_sizes", ["32"])  # one size: nothing to add


def test_unknown_monitor_or_maximised_loss_fail_in_one_line_with_a_hint() -> None:
    check_monitor("val/acc_mean_sizes", "max", SIZES)
    check_monitor("val/loss", "min", SIZES)
    check_monitor("val/acc@48", "max", SIZES)
    with pytest.raises(ConfigError) as typo:
        check_monitor("val/acc_mean", "max", SIZES)
    assert "val/acc_mean_sizes" in str(typo.value) and "\n" not in str(typo.value)
    assert typo.value.hint and "callbacks.model_checkpoint.monitor=" in typo.value.hint
    with pytest.raises(ConfigError, match="val/acc@96"):
        check_monitor("val/acc@96", "max", SIZES)  # not an evaluation size
    with pytest.raises(ConfigError, match="val/acc_top5"):
        check_monitor("val/acc_top5", "max", SIZES, top5=False)
    with pytest.raises(ConfigError) as loss:
        check_monitor("val/loss", "max", SIZES)
    assert loss.value.hint == "callbacks.model_checkpoint.mode=min"


def test_a_monitor_over_sizes_turns_on_validation_at_every_size_every_epoch() -> None:
    def cfg(monitor: str | None) -> object:
        return OmegaConf.create({"callbacks": {"model_checkpoint": {"monitor": monitor, "mode": "max"}}})

    data = SimpleNamespace(eval_sizes=[(32, 32), (16, 16), (48, 48)], eval_sizes_every_epoch=False)
    assert apply_monitor(cfg("val/acc"), data) == "val/acc" and data.eval_sizes_every_epoch is False
    assert apply_monitor(cfg("val/acc_mean_sizes"), data) == "val/acc_mean_sizes"
    assert data.eval_sizes_every_epoch is True
    assert apply_monitor(cfg(None), data) is None
    with pytest.raises(ConfigError):
        apply_monitor(cfg("val/acc@40"), data)


def _trainer(metrics: dict[str, float], epoch: int, monitor: str = "val/acc", mode: str = "max") -> object:
    return SimpleNamespace(
        sanity_checking=False,
        state=SimpleNamespace(fn="fit"),
        checkpoint_callback=SimpleNamespace(monitor=monitor, mode=mode),
        callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
        current_epoch=epoch,
    )


def test_best_epoch_is_the_first_strictly_better_one_by_the_monitor() -> None:
    best = BestEpochMetrics()
    for epoch, (acc, mean) in enumerate([(0.5, 0.40), (0.7, 0.45), (0.6, 0.45), (0.8, 0.30)]):
        metrics = {"val/acc": acc, "val/acc_mean_sizes": mean}
        best.on_validation_end(_trainer(metrics, epoch, "val/acc_mean_sizes"), None)  # type: ignore[arg-type]
    # epoch 1 and 2 tie on the monitor: the first is kept (as ModelCheckpoint keeps it)
    assert best.metrics("val/acc_mean_sizes") == {
        "val/best_epoch": 1.0,
        "val/acc_best": pytest.approx(0.7),
        "val/acc_mean_sizes_best": pytest.approx(0.45),
    }
    low = BestEpochMetrics()
    for epoch, loss in enumerate([1.0, 0.5, 0.7]):
        low.on_validation_end(
            _trainer({"val/loss": loss, "val/acc": 0.1 * epoch}, epoch, "val/loss", "min"), None
        )  # type: ignore[arg-type]
    assert low.metrics("val/loss")["val/best_epoch"] == 1.0
    restored = BestEpochMetrics()
    restored.load_state_dict(low.state_dict())  # a resumed run goes on comparing
    assert restored.metrics("val/loss") == low.metrics("val/loss")
    assert BestEpochMetrics().metrics("val/acc") == {}


# ---- the headline names its size -----------------------------------------------------------------------


def test_headline_titles_name_the_size() -> None:
    titles = headline_titles((64, 64))
    assert set(titles) == {"val/acc", "val/loss", "test/acc", "test/loss"}
    assert titles["val/acc"][0] == "val/acc at 64 px"
    assert "64 px" in titles["test/loss"][1] and "eval/test_loss_vs_size" in titles["test/loss"][1]
    assert headline_titles((48, 80))["val/acc"][0] == "val/acc at 48x80 px (h x w)"


def test_tensorboard_logger_writes_the_title_into_the_first_point_only(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    logger = TensorBoardLogger(save_dir=str(tmp_path), name="", version="")
    logger.titles.update(headline_titles((40, 40)))
    logger.log_metrics({"val/acc": 0.5, "val/acc@32": 0.25, "epoch": 0}, step=3)
    logger.log_metrics({"val/acc": torch.tensor(0.75)}, step=7)
    logger.experiment.flush()
    # one series, as TensorBoard reads it: the titled first point and the plain ones after it
    assert scalar_tags(tmp_path) == {"val/acc": [(3, 0.5), (7, 0.75)], "val/acc@32": [(3, 0.25)]}
    acc = EventAccumulator(str(tmp_path))  # TensorBoard's loader: the tag keeps its first metadata
    acc.Reload()
    metadata = acc.SummaryMetadata("val/acc")
    assert metadata.display_name == "val/acc at 40 px" and "40 px" in metadata.summary_description
    assert metadata.plugin_data.plugin_name == "scalars"
    assert acc.SummaryMetadata("val/acc@32").display_name == "val/acc@32"  # untitled: named by its tag
    assert "val/acc" not in logger.titles  # written once


# ---- HPARAMS: same columns, one type each, what differs first, best-epoch metrics -----------------------


def _cfg(size: object) -> object:
    return OmegaConf.create(
        {
            "seed": 1,
            "backbone": {"name": "resnet18", "pretrained": False},
            "resolution": {"size": size},
            "optimizer": {"lr": 0.01, "weight_decay": 0.05},
            "data": {"batch_size": 32, "augment": {"color_jitter": None}},
            "trainer": {"max_epochs": 4},
        }
    )


def test_a_sweeps_jobs_have_the_same_columns_with_one_type_each() -> None:
    sweep = ["pooling=avg,pyramid", "resolution.size=40,[32,48]", "data.augment.color_jitter=null,0.4"]
    sweep += ["trainer.max_epochs=4"]  # the same in every job: a column, not "what differs"
    assert swept_text_keys(sweep) == {"pooling", "resolution.size", "data.augment.color_jitter"}
    swept = {"pooling", "resolution.size", "data.augment.color_jitter"}
    jobs = [("avg", 40, None), ("pyramid", [32, 48], 0.4)]
    rows = []
    for pooling, size, jitter in jobs:
        cfg = _cfg(size)
        cfg.data.augment.color_jitter = jitter
        overrides = [
            f"pooling={pooling}",
            f"resolution.size={size}",
            f"data.augment.color_jitter={jitter}",
            "trainer.max_epochs=4",
        ]
        choices = {"pooling": pooling, "resolution": "fixed"}
        eval_size = "40" if size == 40 else "32x48"
        rows.append(
            run_hparams(
                cfg, choices, overrides, eval_size=eval_size, swept=swept, text_keys=swept_text_keys(sweep)
            )
        )
    (first, varied), (second, varied2) = rows
    assert list(first) == list(second)  # same columns, same order
    assert varied == varied2 == ["data.augment.color_jitter", "pooling", "resolution.size"]
    assert list(first)[:3] == varied  # what differs first; trainer.max_epochs is not among them
    for key in first:
        assert type(first[key]) is type(second[key]), (key, first[key], second[key])
    assert first["resolution.size"] == "40" and second["resolution.size"] == "[32,48]"
    assert first["data.augment.color_jitter"] == "null" and second["data.augment.color_jitter"] == "0.4"
    assert first[EVAL_SIZE_COLUMN] == "40" and second[EVAL_SIZE_COLUMN] == "32x48"
    assert first["trainer.max_epochs"] == 4


def test_best_epoch_metrics_are_columns_beside_the_final_ones() -> None:
    metrics = {"val/acc": 0.5, "val/acc_best": 0.6, "val/best_epoch": 3.0, "val/acc_mean_sizes_best": 0.4}
    tags = hparam_metric_tags({**metrics, "test/acc": 0.55})
    assert tags[:4] == ["val/acc", "test/acc", "val/acc_best", "val/best_epoch"]
    assert "val/acc_mean_sizes_best" in tags
    # a flag is no metric column (a bool is an int to Python), nor is text or a missing value
    odd = {"val/acc": 0.5, "test/acc": True, "val/loss": "nan", "val/acc_worst": None}
    assert hparam_metric_tags(odd) == ["val/acc"]


def test_a_per_size_monitors_best_score_is_one_column_not_two() -> None:
    """With ``callbacks.model_checkpoint.monitor=val/acc@32`` the run logs ``val/acc@32_best``: it is a
    best-score column (once), and the per-size columns stay the sizes, smallest first."""
    metrics = {"val/acc": 0.5, "val/acc@96": 0.4, "val/acc@32_best": 0.7, "val/acc@32": 0.6}
    tags = hparam_metric_tags(metrics)
    assert tags == ["val/acc", "val/acc@32_best", "val/acc@32", "val/acc@96"]


def test_metrics_json_holds_no_infinity_or_nan() -> None:
    """JSON has neither: a diverged loss is recorded as null, which every reader (and a sort) takes."""
    metrics = collect_metrics(None, {"train/loss": float("inf"), "val/loss": float("nan"), "val/acc": 0.5})
    assert metrics == {"train/loss": None, "val/acc": 0.5, "val/loss": None}
    tensors = {"x": torch.tensor(float("-inf")), "y": torch.tensor(2.0)}
    assert collect_metrics(None, tensors) == {"x": None, "y": 2.0}


# ---- the schedule chart, the data profile once per sweep --------------------------------------------------


def test_schedule_chart_draws_the_scheduled_size_not_the_bucket_shape() -> None:
    charts = custom_scalars_layout()["resflex: across sizes"]
    [patterns] = [chart[1] for title, chart in charts.items() if title.startswith("resolution schedule")]
    tags = ["train/resolution", "train/batch_h", "train/batch_w", "train/resolution_h"]
    assert [t for t in tags if any(re.search(p, t) for p in patterns)] == ["train/resolution"]


def test_data_profile_is_claimed_once_per_identical_profile(tmp_path: Path) -> None:
    profile = {"images": 100, "width": {"p50": 64.0}, "geometry": "square"}
    digest = profile_digest(profile)
    assert digest == profile_digest(dict(reversed(list(profile.items()))))  # key order does not matter
    assert digest != profile_digest({**profile, "images": 101})
    assert claim_profile(tmp_path, digest, "pooling=avg") is None  # first: logs the figure
    assert claim_profile(tmp_path, digest, "pooling=pyramid") == "pooling=avg"
    assert claim_profile(tmp_path, digest, "pooling=avg") is None  # the same job again (a resumed run)
    assert claim_profile(tmp_path, profile_digest({**profile, "images": 7}), "pooling=pyramid") is None


def test_run_command_text_wraps_one_override_per_line_and_names_the_sizes_used() -> None:
    text = command_markdown(
        ["pooling=avg", "eval.resolutions=auto", "+tag=a b"], "/runs/x", [(64, 64), (32, 32)]
    )
    block = [line for line in text.splitlines() if line.startswith("    ")]
    assert block == [
        "    python scripts/train.py \\",
        "        pooling=avg \\",
        "        eval.resolutions=auto \\",
        "        '+tag=a b'",
    ]
    assert "Evaluated at 64 (main), 32 px" in text and "`/runs/x`" in text
    assert "Evaluated" not in command_markdown([], "/runs/x")  # sizes unknown: not claimed


# ---- one real sweep ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_jobs_line_up_in_hparams_name_their_size_and_select_by_the_mean(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *(o for o in TINY if o != "resolution.size=32"),
        "trainer.max_epochs=2",
        "data.source.num_train=48",
        "data.source.num_val=16",
        "data.source.num_test=16",
        "eval.resolutions=[16,32,48]",
        "resolution.size=32,[24,32]",
        "resolution.geometry=squash",  # 24x32 itself (keep_aspect would use one side: refused)
        "callbacks.model_checkpoint.monitor=val/acc_mean_sizes",
        f"hydra.sweep.dir={sweep}",
    ]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [sweep / "resolution.size=32", sweep / "resolution.size=[24,32]"]
    events = [read_events(job) for job in jobs]

    # HPARAMS: the same columns and types in both jobs, the swept key marked as what differs
    infos = [[(i.name, i.type, i.differs) for i in e["experiment"].hparam_infos] for e in events]
    assert infos[0] == infos[1]
    assert infos[0][0] == ("resolution.size", infos[0][0][1], True)
    values = [{k: v.WhichOneof("kind") for k, v in e["hparams"].items()} for e in events]
    assert values[0] == values[1]
    assert [e["hparams"][EVAL_SIZE_COLUMN].string_value for e in events] == ["32", "24x32"]
    metric_tags = [m.name.tag for m in events[0]["experiment"].metric_infos]
    assert {"val/acc_best", "val/best_epoch", "val/acc_mean_sizes_best"} <= set(metric_tags)

    # the data profile (identical data) is drawn once, in the first job
    assert ["run/data_profile" in e["images"] for e in events] == [True, False]

    for job, title in zip(jobs, ["val/acc at 32 px", "val/acc at 24x32 px (h x w)"], strict=True):
        from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

        acc = EventAccumulator(str(job))
        acc.Reload()
        assert acc.SummaryMetadata("val/acc").display_name == title
        scalars = scalar_tags(job)
        record = json.loads((job / "metrics.json").read_text())
        # selection by the mean over sizes: every size validated every epoch (2 epochs + after fit)
        assert len(scalars["val/acc@16"]) == 3 and len(scalars["val/acc@48"]) == 3
        per_epoch = [value for _, value in scalars["val/acc_mean_sizes"][:2]]
        best_epoch = max(range(2), key=lambda k: (per_epoch[k], -k))
        assert record["best"]["monitor"] == "val/acc_mean_sizes" and record["best"]["epoch"] == best_epoch
        assert record["best"]["val/acc_mean_sizes"] == pytest.approx(per_epoch[best_epoch], abs=1e-6)
        assert scalars["val/acc_mean_sizes_best"][-1][1] == pytest.approx(per_epoch[best_epoch], abs=1e-6)
        assert scalars["val/best_epoch"][-1][1] == best_epoch
        assert scalars["val/acc_best"][-1][1] == pytest.approx(scalars["val/acc"][best_epoch][1], abs=1e-6)
        assert record["metrics"]["val/best_epoch"] == best_epoch


def test_a_moved_checkpoint_folder_starts_the_best_afresh_as_model_checkpoint_does() -> None:
    """Resumed in a copied run folder, Lightning's ModelCheckpoint forgets its best score; the record's
    best epoch did not, and named epoch 5 while the best file became a worse, later one."""
    restored = BestEpochMetrics()
    restored.load_state_dict({"best": 0.2, "epoch": 5, "values": {"val/acc": 0.2}})
    moved = SimpleNamespace(checkpoint_callback=SimpleNamespace(best_model_score=None))
    restored.on_train_start(moved, None)  # type: ignore[arg-type]
    assert restored.metrics("val/acc") == {}
    restored.on_validation_end(_trainer({"val/acc": 0.1}, 7), None)  # type: ignore[arg-type]
    assert restored.metrics("val/acc")["val/best_epoch"] == 7.0  # the file ModelCheckpoint keeps
    same_folder = BestEpochMetrics()
    same_folder.load_state_dict({"best": 0.2, "epoch": 5, "values": {"val/acc": 0.2}})
    kept = SimpleNamespace(checkpoint_callback=SimpleNamespace(best_model_score=torch.tensor(0.2)))
    same_folder.on_train_start(kept, None)  # type: ignore[arg-type]
    assert same_folder.metrics("val/acc")["val/best_epoch"] == 5.0


def test_the_confusion_matrix_colours_each_cell_by_its_share_of_the_true_class() -> None:
    """Rows are true classes: a cell's colour is its count over its row's (a class never seen: zeros)."""
    counts = torch.tensor([[8, 2, 0], [1, 1, 0], [0, 0, 0]])
    figure = draw_confusion_matrix(counts, ["cat", "dog", "fox"], "val")
    (ax, _colorbar) = figure.axes
    shown = torch.as_tensor(ax.images[0].get_array(), dtype=torch.float64)
    expected = torch.tensor([[0.8, 0.2, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(shown, expected)
    assert sorted(text.get_text() for text in ax.texts) == ["1", "1", "2", "8"]  # counts, zeros left out
    assert [label.get_text() for label in ax.get_yticklabels()] == ["cat", "dog", "fox"]


def test_a_resume_in_a_moved_run_folder_keeps_its_best_checkpoint(tmp_path) -> None:
    """A copied run folder resumed: ModelCheckpoint dropped its best score (the folder differs from the
    saved one), a later, worse epoch became "best" and the card and ckpt_path=RUN used it, beside the
    better file. With that file in the new folder, its state is restored from BestEpochMetrics' score."""
    import warnings
    from types import SimpleNamespace

    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    old, new = tmp_path / "run" / "checkpoints", tmp_path / "copy" / "checkpoints"
    new.mkdir(parents=True)
    name = "best-epoch000-acc0.1300.ckpt"
    (new / name).write_bytes(b"")
    saved = ModelCheckpoint(dirpath=old, monitor="val/acc", mode="max")
    saved.best_model_path, saved.best_model_score = str(old / name), torch.tensor(0.13)
    saved.best_k_models = {str(old / name): torch.tensor(0.13)}
    ckpt = ModelCheckpoint(dirpath=new, monitor="val/acc", mode="max")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's "The dirpath has changed"
        ckpt.load_state_dict(saved.state_dict())
    assert ckpt.best_model_score is None  # what Lightning leaves
    best = BestEpochMetrics()
    best.load_state_dict({"best": 0.13, "epoch": 0, "values": {"val/acc": 0.13}})
    one_process = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
    trainer = SimpleNamespace(checkpoint_callback=ckpt, strategy=one_process)
    best.on_train_start(trainer, None)  # type: ignore[arg-type]
    assert ckpt.best_model_path == str(new / name) and float(ckpt.best_model_score) == pytest.approx(0.13)
    assert not ckpt.check_monitor_top_k(trainer, torch.tensor(0.06))  # a worse epoch is no new best
    assert best.metrics("val/acc") == {"val/best_epoch": 0.0, "val/acc_best": 0.13}

    (new / name).unlink()  # the best file is not there: both start afresh, with a warning
    ckpt = ModelCheckpoint(dirpath=new, monitor="val/acc", mode="max")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt.load_state_dict(saved.state_dict())
    best.load_state_dict({"best": 0.13, "epoch": 0, "values": {"val/acc": 0.13}})
    best.on_train_start(SimpleNamespace(checkpoint_callback=ckpt), None)  # type: ignore[arg-type]
    assert best.metrics("val/acc") == {}
