"""A finished NaFlex run through every tool a CNN run goes through: scripts/eval.py at each of
eval.seq_lens with the robustness summary in tokens, scripts/predict.py at each image's own aspect
(equal to the module's own evaluation path), scripts/export.py (ONNX with a dynamic sequence length
where timm's model can be captured, a one-line refusal where it cannot) and the model card; options of
the other kind of run refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resflex.errors import ConfigError
from tests.conftest import TINY_NAFLEX_MODEL, make_image_folder, train_run
from tests.test_eval_script import compose_config

NAFLEX_RUN = (
    *TINY_NAFLEX_MODEL,
    "eval.seq_lens=[16,24]",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "test_after_fit=false",
)


def naflex_run(base: Path, *extra: str) -> dict:
    """A tiny NaFlex run folder (.hydra/, checkpoints/last.ckpt, metrics.json) on a folder of images of
    every aspect (val/ labelled)."""
    folder = make_image_folder(base / "images", per_class=6, splits=("train", "val"))
    run_dir = base / "run"
    record = train_run([*NAFLEX_RUN, f"data.root={folder}", *extra], run_dir, hydra_files=True)
    assert record["status"] == "completed"
    return {"run": run_dir, "ckpt": run_dir / "checkpoints" / "last.ckpt", "data": folder, "record": record}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return naflex_run(tmp_path_factory.mktemp("naflex"))


# ---- predict ----------------------------------------------------------------------------------------


def reference_probabilities(ckpt: Path, seq_len: int) -> dict[str, torch.Tensor]:
    """{file: probabilities} from the module's own evaluation path: the run's data module's val loader at
    ``seq_len`` (as scripts/eval.py builds it and selects the length's BatchNorm statistics),
    ``on_after_batch_transfer`` and ``forward``."""
    from resflex.build import build_datamodule
    from resflex.models.bn_calibration import side_of
    from resflex.run import open_run

    run = open_run(ckpt)
    cfg = run.config.copy()
    cfg.resolution.max_seq_len = seq_len
    cfg.resolution.eval_seq_lens = []
    datamodule = build_datamodule(cfg)
    module = run.build_module(cfg).eval()
    assert module.size_stats is not None and len(module.size_stats.table) == 3  # one set per length
    module.size_stats.use(side_of((seq_len, seq_len)))
    loader = datamodule.val_dataloader()
    files = [path for path, _ in datamodule.source.splits["val"].samples]
    out = {}
    with torch.inference_mode():
        for requests, (x, y) in zip(loader.batch_sampler, loader, strict=True):
            x, _ = module.on_after_batch_transfer((x, y), 0)
            probs = module(x).float().softmax(dim=1)
            for request, p in zip(requests, probs, strict=True):
                out[str(files[request.sample_index])] = p
    return out


@pytest.mark.parametrize("seq_len", [None, 16])
def test_predict_equals_the_modules_evaluation_at_each_images_own_aspect(
    trained: dict, tmp_path: Path, seq_len: int | None
) -> None:
    from resflex.predict import predict

    out = tmp_path / "preds.json"
    chosen = [] if seq_len is None else [f"predict.seq_len={seq_len}"]
    cfg = compose_config(
        "predict",
        [f"ckpt_path={trained['ckpt']}", f"input={trained['data'] / 'val'}", f"output={out}",
         "predict.topk=3", "predict.batch_size=4", "predict.device=cpu", *chosen],
        tmp_path / "predict",
    )  # fmt: skip
    record = predict(cfg)
    expected_len = seq_len or 32  # null: the run's max_seq_len
    assert record["seq_len"] == expected_len and record["images"] == 18
    reference = reference_probabilities(trained["ckpt"], expected_len)
    rows = json.loads(out.read_text())["predictions"]
    assert {r["path"] for r in rows} == set(reference)
    classes = json.loads((trained["run"] / "classes.json").read_text())
    for row in rows:
        h, w = row["height"], row["width"]
        assert h % 8 == 0 and w % 8 == 0 and (h // 8) * (w // 8) <= expected_len  # its own grid
        got = torch.zeros(len(classes))
        for top in row["top"]:
            got[classes.index(top["class"])] = top["prob"]
        torch.testing.assert_close(got, reference[row["path"]], rtol=0, atol=1e-6)
    accuracy = sum(r["correct"] for r in rows) / len(rows)
    assert record["accuracy"] == pytest.approx(accuracy)


def test_load_classifier_of_a_naflex_run_equals_predict_on_each_image(trained: dict, tmp_path: Path) -> None:
    """``load_classifier`` of a NaFlex run: images in [0, 1] of any size -> logits, each image framed at
    its own aspect at the run's max_seq_len, as scripts/predict.py frames its file (PNGs: decoded at full
    scale, as a caller decodes them; a JPEG may be decoded reduced by predict)."""
    from resflex import load_classifier
    from resflex.data.images import DEFAULT_DECODER, open_image
    from resflex.inference import NaFlexImageClassifier
    from resflex.predict import predict

    model = load_classifier(trained["run"])
    assert isinstance(model, NaFlexImageClassifier) and not model.training
    assert model.classes == json.loads((trained["run"] / "classes.json").read_text())
    assert model.eval_size == (32, 32) and model.train_sizes == [(16, 16), (32, 32)]
    out = tmp_path / "preds.json"
    cfg = compose_config(
        "predict",
        [f"ckpt_path={trained['ckpt']}", f"input={trained['data'] / 'val'}", f"output={out}",
         "predict.topk=3", "predict.device=cpu"],
        tmp_path / "predict",
    )  # fmt: skip
    predict(cfg)
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())["predictions"]}
    pngs = sorted((trained["data"] / "val").rglob("*.png"))
    assert len(pngs) >= 6
    with torch.no_grad():
        for path in pngs:
            pixels, _ = open_image(path, DEFAULT_DECODER).decode_pixels()  # uint8 (3, H, W), as predict's
            logits = model(pixels[None].float() / 255)
            assert torch.equal(logits, model(pixels[None]))  # k/255 in [0, 1] gives the uint8 pixels back
            expected = torch.zeros(len(model.classes))
            for top in rows[path.name]["top"]:
                expected[model.classes.index(top["class"])] = top["prob"]
            torch.testing.assert_close(logits[0].softmax(0), expected, rtol=0, atol=1e-5, msg=str(path))
        x = torch.rand(2, 3, 7, 53)  # any size and aspect; a batch is two images of one size
        together = model(x)
        alone = torch.cat([model(x[:1]), model(x[1:])])
    assert together.shape == (2, 3) and torch.isfinite(together).all()
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["predict.size=64"], "predict.size=64 sizes images, and this NaFlex run takes token sequences"),
        (["predict.seq_len=0"], "predict.seq_len must be a whole number of tokens >= 1, got 0"),
        (["predict.seq_len=abc"], "predict.seq_len must be a whole number of tokens >= 1"),
    ],
)
def test_predict_bad_options_on_a_naflex_run_are_one_line(
    trained: dict, tmp_path: Path, args: list[str], fragment: str
) -> None:
    from resflex.predict import predict

    cfg = compose_config(
        "predict", [f"ckpt_path={trained['ckpt']}", f"input={trained['data'] / 'val'}", *args], tmp_path / "p"
    )
    with pytest.raises(ConfigError) as info:
        predict(cfg)
    message = str(info.value)
    assert fragment in message and "hint:" in message and "\n" not in message


def test_naflex_options_on_a_run_that_takes_images_are_one_line() -> None:
    from types import SimpleNamespace

    from resflex.predict_naflex import check_naflex_options

    with pytest.raises(ConfigError) as info:
        check_naflex_options(SimpleNamespace(is_naflex=False), None, 64)  # type: ignore[arg-type]
    assert "predict.seq_len=64 is for NaFlex runs" in str(info.value) and "hint:" in str(info.value)
    check_naflex_options(SimpleNamespace(is_naflex=False), 64, None)  # type: ignore[arg-type]


# ---- eval -------------------------------------------------------------------------------------------


def test_eval_matches_the_trainers_validation_at_each_sequence_length(trained: dict, tmp_path: Path) -> None:
    from resflex.evaluate import evaluate

    out = tmp_path / "eval"
    cfg = compose_config(
        "eval", [f"ckpt_path={trained['ckpt']}", "eval.seq_lens=[32,16,24]", "eval.device=cpu"], out
    )
    result = evaluate(cfg)
    metrics = trained["record"]["metrics"]
    by_len = {r["seq_len"]: r for r in result["results"]}
    assert list(by_len) == [32, 16, 24] and result["results"][0]["resolution"] == "32 tokens"
    for seq_len, row in by_len.items():
        assert row["images"] == 18
        assert row["acc"] == pytest.approx(metrics[f"val/acc@{seq_len}"], abs=1e-6)
        assert row["loss"] == pytest.approx(metrics[f"val/loss@{seq_len}"], rel=1e-4)
    robustness = result["robustness"]
    assert robustness["unit"] == "tokens" and robustness["over"] == 3
    assert robustness["worst"] == pytest.approx(min(r["acc"] for r in by_len.values()))
    assert robustness["mean"] == pytest.approx(sum(r["acc"] for r in by_len.values()) / 3)
    assert robustness["worst"] == pytest.approx(metrics["val/acc_worst"], abs=1e-6)
    assert robustness["mean"] == pytest.approx(metrics["val/acc_mean_sizes"], abs=1e-6)
    assert json.loads((out / "eval.json").read_text())["robustness"] == robustness
    assert (out / "eval.csv").read_text().splitlines()[1].startswith("32 tokens,,,32,")
    # no seq lens given: the run's own (max_seq_len first, then its eval.seq_lens)
    own = evaluate(
        compose_config("eval", [f"ckpt_path={trained['run']}", "eval.device=cpu"], tmp_path / "own")
    )
    assert [r["seq_len"] for r in own["results"]] == [32, 16, 24]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["eval.resolutions=[32]"], "eval.resolutions=[32] sizes images, and this NaFlex run"),
        (["eval.seq_lens=[32,0]"], "eval.seq_lens must be a whole number of tokens >= 1, got 0"),
    ],
)
def test_eval_bad_options_on_a_naflex_run_are_one_line(
    trained: dict, tmp_path: Path, args: list[str], fragment: str
) -> None:
    from resflex.evaluate import evaluate

    cfg = compose_config("eval", [f"ckpt_path={trained['ckpt']}", *args], tmp_path / "eval")
    with pytest.raises(ConfigError) as info:
        evaluate(cfg)
    message = str(info.value)
    assert fragment in message and "hint:" in message and "\n" not in message


def test_eval_seq_lens_on_a_run_that_takes_images_is_one_line() -> None:
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from resflex.evaluate import eval_seq_lens

    cfg = OmegaConf.create({"eval": {"resolutions": [], "seq_lens": [32]}})
    with pytest.raises(ConfigError) as info:
        eval_seq_lens(cfg, SimpleNamespace(is_naflex=False, main_size=lambda: (64, 64)))  # type: ignore[arg-type]
    message = str(info.value)
    assert "eval.seq_lens=[32] is for NaFlex runs" in message
    assert "hint: eval.resolutions=[32,64,128]" in message


# ---- export -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment", "hint"),
    [
        (["format=onnx"], "cannot export format=onnx: timm's NaFlexVit "
         "interpolates its learned position embeddings per image", "pos_embed_use_grid_sample=true"),
        (["format=exported"], "cannot export format=exported: timm's NaFlexVit interpolates",
         "scripts/predict.py"),
        (["format=torchscript"], "format=torchscript cannot carry a NaFlex run",
         "format=onnx or format=exported"),
        (["check.sizes=[64]"], "check.sizes=[64] sizes images, and this NaFlex run", "check.seq_lens"),
        (["check.seq_lens=[0]"], "check.seq_lens must be a whole number of tokens >= 1", "check.seq_lens="),
    ],
)  # fmt: skip
def test_export_refusals_are_one_line_and_write_nothing(
    trained: dict, tmp_path: Path, args: list[str], fragment: str, hint: str
) -> None:
    """The default NaFlexVit (timm's per-image interpolated position embedding) cannot be captured with a
    dynamic sequence length: refused before any capture, with the cause and the way out."""
    from resflex.export import FORMATS, run_export

    fmt = next((a.split("=", 1)[1] for a in args if a.startswith("format=")), "onnx")
    out = tmp_path / "out" / f"model{FORMATS[fmt]}"  # named as its format's file (else that is the error)
    cfg = compose_config("export", [f"ckpt_path={trained['ckpt']}", f"output={out}", *args], tmp_path / "x")
    with pytest.raises(ConfigError) as info:
        run_export(cfg)
    message = str(info.value)
    assert fragment in message and "hint: " in message and hint in message and "\n" not in message
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_check_seq_lens_on_a_run_that_takes_images_is_one_line() -> None:
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from resflex.export import check_options

    check = OmegaConf.create({"sizes": [], "seq_lens": [64]})
    with pytest.raises(ConfigError, match=r"check.seq_lens=\[64\] is for NaFlex runs.*hint: check.sizes"):
        check_options(SimpleNamespace(is_naflex=False), check)  # type: ignore[arg-type]


@pytest.mark.slow
def test_onnx_export_of_an_exportable_naflex_run_equals_eager_at_two_sequence_lengths(tmp_path: Path) -> None:
    """A run trained with timm's tensor-only position embedding (pos_embed_use_grid_sample) exports with a
    dynamic batch and sequence length; onnxruntime gives eager's logits at lengths it was not captured at
    (~45 s: a training run and two captures)."""
    ort = pytest.importorskip("onnxruntime")
    from resflex.export import run_export
    from resflex.export_naflex import token_inputs
    from resflex.run import open_run

    run = naflex_run(tmp_path, "+backbone.model_kwargs.pos_embed_use_grid_sample=true")
    out = tmp_path / "export" / "model.onnx"
    record = run_export(
        compose_config("export", [f"ckpt_path={run['ckpt']}", f"output={out}"], tmp_path / "x")
    )
    assert out.is_file() and (out.parent / "model_card.md").is_file()
    assert len({c["seq_len"] for c in record["checks"]}) >= 2 and record["max_abs_diff"] <= 1e-3
    assert any(not c["trained"] for c in record["checks"])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == ["cats", "dogs", "owls"] and meta["max_seq_len"] == "32"
    assert json.loads(meta["robustness"])[0]["unit"] == "tokens"
    eager = open_run(run["ckpt"]).token_classifier()
    generator = torch.Generator().manual_seed(7)
    names = [i.name for i in session.get_inputs()]
    assert names == ["patches", "patch_coord", "patch_valid"]
    for seq_len, batch in ((20, 3), (48, 2)):
        inputs = token_inputs(eager.patch_size, seq_len, batch, generator)
        got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})[0]
        with torch.inference_mode():
            expected = eager(*inputs)
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=1e-4)
    # torch.export's .pt2 takes the same route
    pt2 = tmp_path / "export" / "model.pt2"
    record = run_export(
        compose_config(
            "export", [f"ckpt_path={run['ckpt']}", f"output={pt2}", "format=exported"], tmp_path / "y"
        )
    )
    assert pt2.is_file() and record["max_abs_diff"] <= 1e-3


# ---- model card -------------------------------------------------------------------------------------


def test_the_model_card_of_a_naflex_run_is_in_tokens(trained: dict, tmp_path: Path, capsys) -> None:
    from resflex.model_card import CARD_FILE, main

    assert main([str(trained["run"])]) == 0  # scripts/model_card.py
    card = (trained["run"] / CARD_FILE).read_text()
    assert "## Accuracy across evaluated sequence lengths" in card
    assert "| split | sequence length (tokens per image) | acc | loss |" in card
    metrics = trained["record"]["metrics"]
    for seq_len in (16, 24, 32):
        assert f"| val | {seq_len} | {metrics[f'val/acc@{seq_len}']:.4f} |" in card
    assert "## Robustness across sequence lengths" in card
    assert "the run's max_seq_len, 32 tokens per image" in card
    robustness = card.split("## Robustness across sequence lengths")[1].split("## Input convention")[0]
    assert "mean over 3 sequence lengths" in robustness and " px" not in robustness
    assert "predict.seq_len" in card and "token_classifier()" in card
    assert main([str(tmp_path)]) == 2  # not a run folder: one line
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_a_naflex_run_records_no_pixel_count(trained: dict) -> None:
    """Token batches are no pixels: the record said ``train/megapixels: 0.0`` (found by a ViT audit)."""
    metrics = trained["record"]["metrics"]
    assert "train/megapixels" not in metrics and metrics["train/padding_share"] >= 0
