"""Using a trained run: load_classifier, scripts/predict.py (accuracy equal to scripts/eval.py, native sizes
by aspect bucket, auto sizes from the run's robustness curve, bad inputs one line with nothing written),
scripts/export.py to ONNX checked in onnxruntime at a size it never checked (its robust range in the
metadata), and the model card."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from resflex.data.buckets import assign_buckets, file_image_size
from resflex.errors import ConfigError, DataError
from tests.conftest import TINY, make_image_folder, run_cli, run_out_of_memory_from
from tests.test_eval_script import compose_config

REPO = Path(__file__).resolve().parents[1]
PREDICT_SCRIPT = REPO / "scripts" / "predict.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A short pyramid run on an image folder of mixed sizes, modes and formats (val/ is labelled)."""
    from resflex.train import train

    base = tmp_path_factory.mktemp("predict")
    folder = make_image_folder(base / "images", splits=("train", "val"), per_class=8)
    run_dir = base / "run"
    overrides = [
        *TINY,
        "pooling=pyramid",
        "data=imagefolder",
        f"data.root={folder}",
        "logger=none",
        "test_after_fit=false",
        "eval.resolutions=[48]",
    ]
    cfg = compose_config("train", overrides, run_dir)
    saved = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(saved, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
    record = train(saved)
    assert record["status"] == "completed"
    return {"run": run_dir, "ckpt": run_dir / "checkpoints" / "last.ckpt", "data": folder, "base": base}


def predict_cfg(trained: dict, tmp_path: Path, *overrides: str):
    return compose_config("predict", [f"ckpt_path={trained['ckpt']}", *overrides], tmp_path / "predict")


def test_load_classifier(trained: dict) -> None:
    from resflex import load_classifier

    model = load_classifier(trained["ckpt"])
    assert not model.training and model.classes == ["cats", "dogs", "owls"]
    assert model.train_sizes == [(32, 32)] and model.eval_size == (32, 32)
    x = torch.randint(0, 256, (2, 3, 40, 72), dtype=torch.uint8)
    with torch.no_grad():
        logits = model(x.float() / 255)
        assert logits.shape == (2, 3)
        assert torch.equal(logits, model(x))  # [0, 1] floats normalise bit-identically to uint8
    assert load_classifier(trained["run"]).classes == model.classes  # a run folder works too


def test_model_card_written_by_training(trained: dict) -> None:
    card = (trained["run"] / "model_card.md").read_text()
    for text in (
        "cats",
        "test_resnet",
        "PyramidPool",
        "FixedResolution",
        "| val | 48 |",
        "[0, 1]",
        "python scripts/train.py",
        "## Robustness across sizes",
        "- val: accuracy within 0.03 of the best",
    ):
        assert text in card, text
    assert json.loads((trained["run"] / "classes.json").read_text()) == ["cats", "dogs", "owls"]


def test_predict_accuracy_equals_eval(trained: dict, tmp_path: Path) -> None:
    from resflex.evaluate import evaluate
    from resflex.predict import predict

    out = tmp_path / "preds.csv"
    record = predict(
        predict_cfg(
            trained,
            tmp_path,
            f"input={trained['data'] / 'val'}",
            f"output={out}",
            "predict.size=48",
            "predict.batch_size=5",
        )
    )
    evaluated = evaluate(
        compose_config(
            "eval",
            [f"ckpt_path={trained['ckpt']}", "eval.resolutions=[48]", "eval.device=cpu"],
            tmp_path / "eval",
        )
    )
    assert record["images"] == evaluated["results"][0]["images"] == 24
    assert evaluated["results"][0]["resolution"] == "48 (buckets)"  # what ran: keep_aspect buckets
    assert record["accuracy"] == pytest.approx(evaluated["results"][0]["acc"], abs=1e-9)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 24  # auto = keep_aspect for these images: each at its bucket, short side 48
    assert {min(int(r["height"]), int(r["width"])) for r in rows} == {48}
    assert sum(int(r["correct"]) for r in rows) / 24 == pytest.approx(record["accuracy"])
    assert all(r["top1"] in ("cats", "dogs", "owls") and 0 <= float(r["prob1"]) <= 1 for r in rows)
    # predict.topk=5 of 3 classes: every class, once, their probabilities summing to 1
    assert "top4" not in rows[0] and all(
        {r["top1"], r["top2"], r["top3"]} == {"cats", "dogs", "owls"} for r in rows
    )
    assert all(sum(float(r[f"prob{j}"]) for j in (1, 2, 3)) == pytest.approx(1, abs=1e-5) for r in rows)


def test_the_printed_table_shows_print_rows_rows_and_counts_the_rest(tmp_path: Path) -> None:
    from resflex.predict import format_table

    rows = [
        {"path": str(tmp_path / f"{i}.png"), "height": 32, "width": 48, "top": [], "correct": None}
        for i in range(5)
    ]
    lines = format_table(rows, tmp_path, 2).splitlines()
    assert [line.split()[0] for line in lines] == ["0.png", "1.png", "..."] and "3 more" in lines[-1]
    assert len(format_table(rows, tmp_path, -1).splitlines()) == 5  # a negative limit: every row


def test_the_printed_tables_columns_line_up_when_sizes_and_names_differ_in_width(tmp_path: Path) -> None:
    """``[64x64]`` and ``[64x128]`` used to push the class column of their lines apart."""
    from resflex.predict import format_table

    top = [{"class": "cats", "prob": 0.5}]
    rows = [
        {"path": str(tmp_path / "a" / "red_8.jpg"), "height": 64, "width": 64, "top": top, "correct": True},
        {"path": str(tmp_path / "b" / "red_10.png"), "height": 64, "width": 128, "top": top, "correct": None},
    ]
    lines = format_table(rows, tmp_path, -1).splitlines()
    assert lines == ["a/red_8.jpg   [64x64]   cats 0.500  ✓", "b/red_10.png  [64x128]  cats 0.500"]


def test_predict_native_batches_by_bucket_and_covers_every_file_once(trained: dict, tmp_path: Path) -> None:
    from resflex.predict import predict

    out = tmp_path / "preds.json"
    tree = tmp_path / "tree"
    make_image_folder(tree / "a" / "b", classes=("x",), per_class=10, seed=3)
    make_image_folder(tree, classes=("y",), per_class=5, seed=4)
    (tree / "notes.txt").write_text("not an image")
    record = predict(
        predict_cfg(
            trained, tmp_path, f"input={tree}", f"output={out}", "predict.size=native", "predict.batch_size=4"
        )
    )
    saved = json.loads(out.read_text())
    files = sorted(str(p) for p in tree.rglob("*") if p.suffix in (".png", ".jpg"))
    assert [r["path"] for r in saved["predictions"]] == files  # every file, once, in the input's order
    assert record["accuracy"] is None and record["ignored_non_image_files"] == 1
    ratios = [0.5, 0.75, 1.0, 1.333, 2.0]
    batches: dict[int, set] = {}
    for r in saved["predictions"]:
        batches.setdefault(r["batch"], set()).add((r["height"], r["width"], r["bucket"]))
        assert r["bucket"] == assign_buckets([file_image_size(r["path"])], ratios)[0]
        assert r["height"] % 8 == 0 and r["width"] % 8 == 0
        aspect = r["width"] / r["height"]
        assert abs(np.log(aspect) - np.log(ratios[r["bucket"]])) < 0.45
    assert all(len(shapes) == 1 for shapes in batches.values())  # one shape and bucket per batch
    assert len({shape for shapes in batches.values() for shape in shapes}) > 1


def test_predict_auto_runs_each_image_at_its_nearest_robust_size(trained: dict, tmp_path: Path) -> None:
    """A copy of the run whose recorded val curve is robust on 24-48 px (16 and 64 px drop by more than
    0.03): the smallest images run at 24 px, the largest at 48, every image at a robust size, on its
    keep_aspect bucket's shape (short side = the size), one shape per batch; CSV and JSON say which."""
    from resflex.predict import predict

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    record = json.loads((run / "metrics.json").read_text())
    curve = {"16": 0.40, "24": 0.80, "32": 0.82, "48": 0.80, "64": 0.50}
    record["metrics"] = {k: v for k, v in record["metrics"].items() if "/acc@" not in k}
    record["metrics"] |= {f"val/acc@{tag}": acc for tag, acc in curve.items()}
    (run / "metrics.json").write_text(json.dumps(record))
    out = tmp_path / "preds.json"
    args = [f"ckpt_path={run}", f"input={trained['data'] / 'val'}", "predict.size=auto"]
    result = predict(compose_config("predict", [*args, f"output={out}"], tmp_path / "predict"))
    assert result["size"] == "auto" and result["auto_sizes_from"] == "val"
    assert result["auto_sizes"] == [[24, 24], [32, 32], [48, 48]]
    rows = json.loads(out.read_text())["predictions"]
    assert len(rows) == result["images"] == 24 and result["accuracy"] is not None
    area = {r["path"]: math.prod(file_image_size(r["path"])) for r in rows}
    smallest, largest = min(rows, key=lambda r: area[r["path"]]), max(rows, key=lambda r: area[r["path"]])
    assert (smallest["size"], largest["size"]) == ("24", "48")
    batches: dict[int, set] = {}
    for r in rows:
        assert r["size"] in ("24", "32", "48") and min(r["height"], r["width"]) == int(r["size"])
        batches.setdefault(r["batch"], set()).add((r["height"], r["width"]))
    assert all(len(shapes) == 1 for shapes in batches.values())
    assert len({r["size"] for r in rows}) >= 2
    out_csv = tmp_path / "preds.csv"
    predict(compose_config("predict", [*args, f"output={out_csv}"], tmp_path / "predict"))
    sizes = {r["path"]: r["size"] for r in csv.DictReader(out_csv.open())}
    assert sizes == {r["path"]: r["size"] for r in rows}


def test_training_records_which_checkpoint_its_numbers_are_of(trained: dict) -> None:
    """Eval sizes 32 and 48 on a run trained at 32: the best checkpoint is calibrated and validated
    again after fit, so metrics.json's val numbers are the best's, after calibration."""
    record = json.loads((trained["run"] / "metrics.json").read_text())
    best = Path(record["best"]["checkpoint"]).name
    assert record["measured_on"] == {"val": {"checkpoint": best, "bn_calibration": True}}


def test_a_run_folder_loads_its_best_checkpoint_and_auto_sizes_are_the_loaded_ones(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A copy of the run whose best checkpoint is another file than last.ckpt: the run folder loads the
    best (and its val curve); last.ckpt, loaded by name, has no curve of its own (the recorded one is
    the best's), so auto says so and runs at the eval size."""
    from resflex import load_classifier
    from resflex.predict import predict

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    record = json.loads((run / "metrics.json").read_text())
    best = Path(record["best"]["checkpoint"]).name
    for stale in (run / "checkpoints").glob("best-*.ckpt"):
        stale.unlink()
    shutil.copyfile(trained["run"] / "checkpoints" / best, run / "checkpoints" / "best-epoch007-acc0.9.ckpt")
    record["best"]["checkpoint"] = str(trained["run"] / "checkpoints" / "best-epoch007-acc0.9.ckpt")
    record["measured_on"]["val"]["checkpoint"] = "best-epoch007-acc0.9.ckpt"
    record["metrics"] |= {"val/acc@32": 0.8, "val/acc@48": 0.8}  # both sizes robust
    (run / "metrics.json").write_text(json.dumps(record))
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)  # later weights than the best's (one epoch: equal so far)
    head = next(k for k in saved["state_dict"] if k.endswith("head.weight"))
    saved["state_dict"][head] = saved["state_dict"][head] + 1.0
    torch.save(saved, last)

    assert load_classifier(run).info["checkpoint"] == str(run / "checkpoints" / "best-epoch007-acc0.9.ckpt")
    args = [f"input={trained['data'] / 'val'}", "predict.size=auto", f"output={tmp_path / 'p.csv'}"]
    result = predict(compose_config("predict", [f"ckpt_path={run}", *args], tmp_path / "a"))
    assert result["checkpoint"].endswith("best-epoch007-acc0.9.ckpt")
    assert result["auto_sizes_from"] == "val" and result["auto_sizes"] == [[32, 32], [48, 48]]
    capsys.readouterr()
    result = predict(compose_config("predict", [f"ckpt_path={last}", *args], tmp_path / "b"))
    assert result["auto_sizes_from"] == "eval size" and result["auto_sizes"] == [[32, 32]]
    printed = capsys.readouterr().out
    assert "size auto: 32 px (the run's eval size: metrics.json's val numbers" in printed
    assert "are of best-epoch007-acc0.9.ckpt, not of the loaded last.ckpt" in printed
    card = (run / "model_card.md").read_text()  # training's card named the file the run folder loads
    assert f"checkpoints/{best}" in card.split("## Use it", 1)[1] and "last.ckpt" not in card


def test_predict_and_eval_refuse_a_non_square_size_on_a_keep_aspect_run_alike(
    trained: dict, tmp_path: Path
) -> None:
    """keep_aspect frames each image at its bucket's shape for one side: [48, 80] would run as 48 px
    under another name (and eval would pick the statistics of 62 px); both refuse it with the side."""
    from resflex.evaluate import evaluate
    from resflex.predict import predict

    data = f"input={trained['data'] / 'val'}"
    with pytest.raises(ConfigError) as predicted:
        predict(predict_cfg(trained, tmp_path, data, "predict.size=[48,80]", f"output={tmp_path / 'p.csv'}"))
    eval_args = [f"ckpt_path={trained['ckpt']}", "eval.resolutions=[[48,80]]", "eval.device=cpu"]
    with pytest.raises(ConfigError) as evaluated:
        evaluate(compose_config("eval", eval_args, tmp_path / "eval"))
    for error, key in ((predicted.value, "predict.size"), (evaluated.value, "eval.resolutions")):
        assert (
            "is not square, and this keep_aspect run" in error.message
            and "would run as 48 px" in error.message
        )
        assert error.hint.startswith(f"{key}=48 ")
    assert not (tmp_path / "p.csv").exists()


def test_eval_robust_range_is_times_the_runs_eval_size(trained: dict, tmp_path: Path) -> None:
    """Trained at 32 px, evaluated at 48 then 32: 1x is 32 px (training's), not the first size listed."""
    from resflex.evaluate import evaluate

    args = [f"ckpt_path={trained['ckpt']}", "eval.resolutions=[48,32]", "eval.device=cpu"]
    summary = evaluate(compose_config("eval", args, tmp_path / "eval"))["robustness"]
    assert summary["reference"] == [32, 32]
    assert {summary["range_low"], summary["range_high"]} <= {1.0, 1.5}


def test_predict_skips_unreadable_files(trained: dict, tmp_path: Path) -> None:
    from resflex.predict import predict

    folder = make_image_folder(tmp_path / "imgs", classes=("cats",), per_class=3)
    (folder / "train" / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    record = predict(predict_cfg(trained, tmp_path, f"input={folder}", f"output={tmp_path / 'p.csv'}"))
    assert record["images"] == 3 and [u["path"].endswith("broken.png") for u in record["unreadable"]] == [
        True
    ]


def test_a_folder_of_unreadable_files_names_the_first_and_a_single_file_is_named_itself(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder with no readable image said only how many; one image printed its parent folder as the
    input, with "1 images"."""
    from resflex.predict import predict

    folder = tmp_path / "only_broken"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "b.jpg").write_bytes(b"")
    with pytest.raises(DataError) as info:
        predict(predict_cfg(trained, tmp_path, f"input={folder}", f"output={tmp_path / 'p.csv'}"))
    line = info.value.one_line()
    assert line.startswith(f"no readable image under {folder} (2 unreadable; the first, a.png: ")
    assert line.endswith("(hint: pass files whose bytes decode as images (PNG, JPEG, WebP, ...))")
    image = next((trained["data"] / "val").rglob("*.png"))
    predict(predict_cfg(trained, tmp_path, f"input={image}", f"output={tmp_path / 'one.csv'}"))
    assert f"input: {image} (1 image, size " in capsys.readouterr().out


def test_an_unset_or_missing_input_is_refused_before_the_checkpoint_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``predict.py ckpt_path=RUN`` without ``input=`` loaded the checkpoint (seconds) before saying so."""
    from resflex import predict as predict_module

    monkeypatch.setattr(predict_module, "open_run", lambda *args: pytest.fail("the checkpoint was read"))
    base = [f"ckpt_path={tmp_path / 'run'}", f"output={tmp_path / 'p.csv'}"]
    with pytest.raises(ConfigError, match="input is not set"):
        predict_module.predict(compose_config("predict", base, tmp_path / "p"))
    with pytest.raises(DataError, match="input not found"):
        predict_module.predict(compose_config("predict", [*base, f"input={tmp_path / 'x'}"], tmp_path / "p"))


def test_predict_bad_inputs_fail_in_one_line_and_write_nothing(trained: dict, tmp_path: Path) -> None:
    from resflex.predict import predict

    out = tmp_path / "preds.csv"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'hacked'}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "evil": Evil()}, evil)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    cases = [
        ([f"ckpt_path={tmp_path / 'missing.ckpt'}"], DataError, "checkpoint not found"),
        ([f"ckpt_path={evil}"], DataError, "refusing to load"),
        ([], DataError, "cannot read image"),
        ([f"input={tmp_path / 'nowhere'}"], DataError, "input not found"),
        (["predict.size=abc"], ConfigError, "predict.size"),
        (["predict.size=4"], ConfigError, "too small"),
        (["predict.topk=0"], ConfigError, "predict.topk=0 is invalid"),  # rows with no class before
        (["predict.max_side=0"], ConfigError, "predict.max_side=0 is invalid"),  # a traceback with native
        # native ran every image at 8x8, below what predict.size=8 is refused at, and reported accuracy
        (["predict.size=native", "predict.max_side=8"], ConfigError, "predict.max_side=8 is below the 16 px"),
        (["predict.batch_size=0"], ConfigError, "predict.batch_size=0 is invalid"),
    ]
    for overrides, error, message in cases:
        args = [f"input={text}", f"output={out}", *overrides]
        cfg = compose_config("predict", [f"ckpt_path={trained['ckpt']}", *args], tmp_path / "p")
        with pytest.raises(error, match=message) as info:
            predict(cfg)
        assert "\n" not in str(info.value)
        assert not out.exists()
    assert not (tmp_path / "hacked").exists()
    (tmp_path / "a_file").write_text("x")  # an output whose folder is a file: refused before any image
    inside_a_file = tmp_path / "a_file" / "p.csv"
    args = [f"ckpt_path={trained['ckpt']}", f"input={text}", f"output={inside_a_file}"]
    cfg = compose_config("predict", args, tmp_path / "p")
    with pytest.raises(DataError, match="cannot write output="):
        predict(cfg)


@pytest.mark.slow  # a subprocess: the in-process test above covers the same errors
def test_predict_cli_non_image_is_one_line(trained: dict, tmp_path: Path) -> None:
    text = tmp_path / "cat.jpg"
    text.write_text("plain text")
    out = tmp_path / "preds.csv"
    result = run_cli(
        [f"ckpt_path={trained['ckpt']}", f"input={text}", f"output={out}"],
        cwd=tmp_path,
        script=PREDICT_SCRIPT,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot read image" in errors[0] and "Traceback" not in result.stderr
    assert not out.exists()


def test_export_onnx_runs_in_onnxruntime_at_an_unchecked_size(trained: dict, tmp_path: Path) -> None:
    import onnxruntime as ort

    from resflex import load_classifier
    from resflex.export import run_export

    out = tmp_path / "exp" / "model.onnx"
    cfg = compose_config(
        "export", [f"ckpt_path={trained['ckpt']}", "format=onnx", f"output={out}"], tmp_path / "e"
    )
    record = run_export(cfg)
    checked = {c["size"] for c in record["checks"]}
    assert len(checked) >= 3 and record["max_abs_diff"] <= 1e-4
    assert any(not c["trained"] for c in record["checks"])
    assert any(int(s.split("x")[0]) != int(s.split("x")[1]) for s in checked)
    assert (out.parent / "model_card.md").read_text().startswith("# Model card")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["classes"]) == ["cats", "dogs", "owls"]
    (robust,) = json.loads(metadata["robustness"])  # the run's val curve: 32 and 48 px
    assert robust["split"] == "val" and robust["trained_size"] == [32, 32] and robust["tolerance"] == 0.03
    assert robust["evaluated"] == [[32, 32], [48, 48]] and record["robustness"] == [robust]
    assert "## Robustness across sizes" in (out.parent / "model_card.md").read_text()
    model = load_classifier(trained["ckpt"])  # per-size BatchNorm statistics, chosen by the input's size
    assert model.size_stats is not None and len(model.size_stats.table) > 1
    main_only = load_classifier(trained["ckpt"])
    main_only.use_main_size_stats()
    for shape in [(3, 3, 56, 104), (2, 3, 24, 40)]:  # sizes and aspects the export never checked
        x = torch.rand(*shape)
        assert f"{shape[2]}x{shape[3]}" not in checked
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        with torch.no_grad():
            assert (got - model(x)).abs().max() <= 1e-4, shape
            if shape[2] == 56:  # nearest calibrated size 48 px, not the main 32 px: the table matters here
                assert (got - main_only(x)).abs().max() > 1e-3


def test_a_run_reopened_to_use_builds_no_training_views_and_keeps_its_config(trained: dict) -> None:
    """Scale consistency is a training term with no state: a run opened to evaluate, predict or export
    builds without it (its "switched off" line was printed by every predict of a model that cannot
    have it), and the run's config still says what it trained with."""
    from resflex.run import open_run

    run = open_run(trained["ckpt"])
    trained_with = run.config.model.scale_consistency
    assert trained_with > 0
    module = run.build_module()
    assert module.scale_view is None
    assert run.config.model.scale_consistency == trained_with


def test_a_prediction_size_that_cannot_fit_is_refused_before_any_image_is_resized(
    trained: dict, tmp_path: Path
) -> None:
    """``predict.size=100000``: one line naming the key and the batch (never more images than the
    input has), where the resize to 100000x100000 raised the allocator's trace (found by an audit)."""
    from resflex.predict import predict

    image = trained["data"] / "val" / sorted(p.name for p in (trained["data"] / "val").iterdir())[0]
    one = next(p for p in image.iterdir() if p.is_file())
    out = tmp_path / "preds.csv"
    cfg = predict_cfg(trained, tmp_path, f"input={one}", f"output={out}", "predict.size=100000")
    with pytest.raises(ConfigError) as info:
        predict(cfg)
    assert info.value.message.startswith("predict.size=100000x100000: a batch of 1 image needs at least")
    assert info.value.hint == "a smaller predict.size, or a smaller predict.batch_size"
    assert not out.exists()


def test_predict_out_of_memory_is_one_line_naming_its_own_keys(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a size the device cannot hold: the batch, the allocator's reason, and predict's keys (not the
    training run's); nothing written."""
    from resflex.predict import predict

    run_out_of_memory_from(monkeypatch, 96)
    out = tmp_path / "preds.csv"
    cfg = predict_cfg(
        trained,
        tmp_path,
        f"input={trained['data'] / 'val'}",
        f"output={out}",
        "predict.size=96",
        "predict.batch_size=6",
    )
    with pytest.raises(ConfigError) as info:
        predict(cfg)
    shape = r"(96x\d+|\d+x96)"
    assert re.match(
        rf"out of memory at an evaluation batch of \d+ images at {shape} \(DefaultCPU", info.value.message
    )
    assert (
        info.value.hint
        == "predict.batch_size=3, or a smaller predict.size (predict.max_side for predict.size=native)"
    )
    assert not out.exists()


def test_a_run_config_whose_model_has_other_shapes_is_one_line_not_torchs_page(
    trained: dict, tmp_path: Path
) -> None:
    """A checkpoint with the config of a model of other shapes (another run's, an edited one): torch's
    "size mismatch" page became one line naming the first tensor (found by a transfer audit)."""
    from resflex.run import open_run

    config = OmegaConf.load(trained["run"] / ".hydra" / "config.yaml")
    config.pooling.proj_channels = 64  # the checkpoint's pyramid projects to 128
    other = tmp_path / "config.yaml"
    OmegaConf.save(config, other)
    with pytest.raises(ConfigError) as info:
        open_run(trained["ckpt"], other).build_module()
    line = info.value.one_line()
    assert "does not fit the model built from its run config: size mismatch for model.pooling" in line, line
    assert "\n" not in line and "pass run_config=" in line


def test_class_names_for_another_class_count_are_named_as_such(
    trained: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A run config of another run (3 class names, a 10-class checkpoint) warned "class names of the
    run not found", when they were found and did not fit (found by a transfer audit)."""
    import resflex.run as run_module

    run = run_module.open_run(trained["ckpt"])
    monkeypatch.setattr(run_module, "read_classes", lambda run_dir: ["a", "b", "c"])
    monkeypatch.setattr(run, "classes_from_data", lambda: None)
    with caplog.at_level("WARNING", logger="resflex"):
        names = run.classes(10)
    assert names == [str(i) for i in range(10)]
    assert "the run's files name 3 classes but the checkpoint classifies 10" in caplog.text


def test_native_size_keeps_the_buckets_aspect_for_an_image_larger_than_max_side(tmp_path: Path) -> None:
    """Each side was clamped to predict.max_side on its own: a 2:1 photo of 4000x2000 ran at 360x512
    (aspect 1.42), not the bucket's 256x512."""
    from PIL import Image

    from resflex.predict_plan import plan_batches

    files = []
    for name, (w, h) in {"large.png": (4000, 2000), "small.png": (96, 48)}.items():
        Image.new("RGB", (w, h)).save(tmp_path / name)
        files.append(tmp_path / name)
    plan = plan_batches(files, "native", 4, "keep_aspect", None, [0.5, 1.0, 2.0], 8, 16, 512)
    assert plan.sizes[0] == (256, 512)  # long side at max_side, the bucket's 2:1 kept
    assert plan.sizes[1] == (48, 96)  # below max_side: its own area
