"""Exports (ONNX through onnxruntime, TorchScript, torch.export) equal the eager model at sizes they never
saw, for every pooling head and for a ViT with dynamic_img_size; failures are one line and leave no file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from resflex.config import CONFIG_DIR
from resflex.errors import ConfigError
from resflex.export import FORMATS, check_sizes, export_classifier, load_runner
from resflex.inference import ResflexClassifier
from resflex.models.backbone import TimmBackbone
from resflex.models.classifier import ImageClassifier
from tests.conftest import pooling_from_config

SIZES = [(32, 32), (48, 80), (96, 64)]
#: the export check's tolerance: configs/export.yaml's, its one home
ATOL = float(OmegaConf.load(CONFIG_DIR / "export.yaml").check.atol)
VIT = ("vit_small_patch16_224", {"dynamic_img_size": True, "dynamic_img_pad": True, "depth": 1})


def tiny_classifier(
    pooling: str, backbone: str = "test_resnet", model_kwargs: dict | None = None
) -> ResflexClassifier:
    """A randomly initialised classifier (nothing downloaded); pyramid level gains set to 1 so that the
    2x2 and 4x4 grids reach the logits (they start at 0)."""
    torch.manual_seed(0)
    bb = TimmBackbone(backbone, model_kwargs=model_kwargs or {})
    model = ImageClassifier(bb, pooling_from_config(pooling), num_classes=5).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "level_scale" in name:
                param.fill_(1.0)
    return ResflexClassifier(
        model,
        bb.mean,
        bb.std,
        [f"c{i}" for i in range(5)],
        [(64, 64)],
        (64, 64),
        {"reduction": bb.reduction, "multiple": 8, "backbone": backbone},
    ).eval()


def assert_export_matches(classifier: ResflexClassifier, fmt: str, tmp_path: Path) -> dict:
    out = tmp_path / f"model{FORMATS[fmt]}"
    record = export_classifier(classifier, fmt, out, sizes=SIZES, atol=ATOL)
    assert out.is_file() and [c["size"] for c in record["checks"]] == ["32x32", "48x80", "96x64"]
    assert record["max_abs_diff"] <= 1e-4, record["checks"]
    assert record["max_abs_diff"] == max(c["max_abs_diff"] for c in record["checks"])  # the worst
    assert [c["batch"] for c in record["checks"]] == [2, 1, 3]  # dynamic in the batch too, 1 included
    assert [c["trained"] for c in record["checks"]] == [s in classifier.train_sizes for s in SIZES]
    assert not list(tmp_path.glob(".*tmp*")), "temporary export left behind"
    return record


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("exported", marks=pytest.mark.slow)])
def test_pyramid_exports_equal_eager(fmt: str, tmp_path: Path) -> None:
    classifier = tiny_classifier("pyramid")
    classifier.train_sizes.append(SIZES[1])  # the check's "seen in training" column
    assert_export_matches(classifier, fmt, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("pooling", ["avg", "max", "avgmax", "gem", "pyramid"])
def test_every_head_exports_in_every_format(pooling: str, fmt: str, tmp_path: Path) -> None:
    assert_export_matches(tiny_classifier(pooling), fmt, tmp_path)


@pytest.mark.parametrize("fmt", ["exported"])
def test_vit_with_dynamic_img_size_exports(fmt: str, tmp_path: Path) -> None:
    assert_export_matches(tiny_classifier("pyramid", VIT[0], VIT[1]), fmt, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_vit_with_dynamic_img_size_exports_slow(fmt: str, tmp_path: Path) -> None:
    assert_export_matches(tiny_classifier("pyramid", VIT[0], VIT[1]), fmt, tmp_path)


def test_check_sizes_cover_non_square_and_unseen() -> None:
    classifier = tiny_classifier("avg")
    sizes = check_sizes(classifier, [[40, 72]])
    assert len(sizes) >= 3 and sizes[0] == (64, 64) and (40, 72) in sizes
    assert any(h != w for h, w in sizes)
    assert any(s not in classifier.train_sizes for s in sizes)
    unseen = check_sizes(classifier)[2]  # the square-ish size between and below the training sizes
    assert unseen not in classifier.train_sizes
    classifier.train_sizes.append(unseen)  # a run that trained there too: the next candidate instead
    assert check_sizes(classifier)[2] not in classifier.train_sizes


def test_check_sizes_take_one_size_alone_and_refuse_text_in_one_line() -> None:
    """``check.sizes=64`` crashed (an int is not iterable); ``check.sizes=64x`` was read a letter at a
    time; the hint of a refused entry is a list, which the key takes."""
    classifier = tiny_classifier("avg")
    assert (56, 56) in check_sizes(classifier, 56)
    with pytest.raises(ConfigError, match=r"check\.sizes must be a list of sizes, got '64x'") as info:
        check_sizes(classifier, "64x")
    assert info.value.hint == "e.g. check.sizes=[32,64]"
    with pytest.raises(ConfigError, match="must be positive integers") as info:
        check_sizes(classifier, [0])
    assert info.value.hint == "e.g. check.sizes=[32,64]"


def test_fixed_size_vit_is_not_checked_at_sizes_it_cannot_take(tmp_path: Path) -> None:
    classifier = tiny_classifier("avg", "vit_small_patch16_224", {"depth": 1})
    with pytest.raises(ConfigError, match="only accepts 224x224") as info:
        export_classifier(classifier, "torchscript", tmp_path / "m.pt", sizes=SIZES, atol=ATOL)
    assert "\n" not in str(info.value) and "check.sizes=224" in str(info.value)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="check.sizes=48x80 but vit_small_patch16_224 only accepts 224x224"):
        export_classifier(
            classifier, "torchscript", tmp_path / "m.pt", check_sizes(classifier, [[48, 80]]), atol=ATOL
        )


#: a ViT that takes one size, non-square so that height and width cannot swap unseen
FIXED_VIT = ("test_vit", {"img_size": (32, 48), "dynamic_img_size": False})


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=pytest.mark.slow), "exported"])
def test_fixed_size_vit_exports_with_a_dynamic_batch_at_its_size(fmt: str, tmp_path: Path) -> None:
    """A ViT built without dynamic_img_size (a hub ViT fine-tuned at its own size) was refused in every
    format: the capture asked for a dynamic height and width. It is exported at its one size."""
    classifier = tiny_classifier("pyramid", *FIXED_VIT)
    assert classifier.fixed_size == (32, 48) and check_sizes(classifier) == [(32, 48)] * 3
    out = tmp_path / f"model{FORMATS[fmt]}"
    record = export_classifier(classifier, fmt, out, atol=ATOL)
    assert [(c["size"], c["batch"]) for c in record["checks"]] == [("32x48", 2), ("32x48", 1), ("32x48", 3)]
    assert record["max_abs_diff"] <= 1e-4, record["checks"]
    x = torch.rand(5, 3, 32, 48)  # a batch the check did not use
    got = load_runner(out, fmt)(x)
    assert torch.allclose(got, classifier(x), atol=1e-4)
    if fmt == "torchscript":
        files = {"input.txt": ""}
        torch.jit.load(str(out), _extra_files=files)
        assert "(B, 3, 32, 48) (the model's one size)" in files["input.txt"].decode()


def test_an_export_that_disagrees_is_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import resflex.export as export

    real = export.load_runner

    def off_by_one(path: Path, fmt: str):
        run = real(path, fmt)
        return lambda x: run(x) + 1.0

    monkeypatch.setattr(export, "load_runner", off_by_one)
    with pytest.raises(ConfigError, match="differs from the eager model by 1 .*not valid at every size"):
        export_classifier(tiny_classifier("avg"), "torchscript", tmp_path / "m.pt", sizes=SIZES, atol=ATOL)
    assert not list(tmp_path.iterdir())

    def off_by_batch(path: Path, fmt: str):  # within check.atol, a different difference at each size
        run = real(path, fmt)
        return lambda x: run(x) + ATOL / 8 * x.shape[0]

    monkeypatch.setattr(export, "load_runner", off_by_batch)
    record = export_classifier(
        tiny_classifier("avg"), "torchscript", tmp_path / "m.pt", sizes=SIZES, atol=ATOL
    )
    assert record["max_abs_diff"] == max(c["max_abs_diff"] for c in record["checks"])
    assert record["max_abs_diff"] == pytest.approx(ATOL / 8 * 3, rel=0.01)  # the batch of 3: the worst


def test_torchscript_carries_the_robust_range(tmp_path: Path) -> None:
    """The run's robust range travels with the file (robustness.json), as the ONNX metadata does."""
    classifier = tiny_classifier("avg")
    curve = {"32": 0.5, "48": 0.8, "64": 0.82, "96": 0.81, "128": 0.6}
    classifier.info["metrics"] = {f"val/acc@{tag}": acc for tag, acc in curve.items()}
    out = tmp_path / "model.pt"
    record = export_classifier(classifier, "torchscript", out, sizes=SIZES, atol=ATOL)
    extra = {"robustness.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    (robust,) = json.loads(extra["robustness.json"])
    assert robust["sizes"] == [[48, 48], [64, 64], [96, 96]] and record["robustness"] == [robust]
    assert (robust["low_scale"], robust["high_scale"], robust["trained_size"]) == (0.75, 1.5, [64, 64])


@pytest.mark.parametrize("where", ["parent_is_a_file", "proc"])
def test_an_unwritable_output_fails_in_one_line_before_any_work(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import resflex.export as export
    from resflex.errors import DataError

    if where == "parent_is_a_file":
        (tmp_path / "file").write_text("x")
        output = tmp_path / "file" / "model.pt"
    else:  # a folder nobody can create files in, root included
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc here")
        output = Path("/proc/model.pt")

    def never(*args, **kwargs):
        raise AssertionError("the model was prepared before the output was checked")

    monkeypatch.setattr(export, "prepare_for_export", never)
    with pytest.raises(DataError, match="cannot write output="):
        export_classifier(tiny_classifier("avg"), "torchscript", output, sizes=SIZES, atol=ATOL)


def test_an_output_named_as_another_format_is_refused() -> None:
    from resflex.export import check_suffix

    with pytest.raises(ConfigError, match="named as a format=torchscript file, but format=onnx") as info:
        check_suffix(Path("model.pt"), "onnx")
    assert "output=model.onnx" in str(info.value)
    check_suffix(Path("model.onnx"), "onnx")
    check_suffix(Path("model.bin"), "onnx")  # a name of no format: the user's choice


def test_an_onnx_file_has_the_opset_asked_for_or_is_refused_with_none_left(tmp_path: Path) -> None:
    """``opset=17``: torch's exporter makes its own opset (18 from torch 2.9) and its version converter
    may give up (a WARNING with a traceback); the file was then written at the exporter's opset and
    reported as exported (found by an audit). Now it has opset 17, or the export is one line naming
    the opset it can write, with no file left."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    out = tmp_path / "model.onnx"
    try:
        export_classifier(tiny_classifier("avg"), "onnx", out, sizes=SIZES, atol=ATOL, opset=17)
    except ConfigError as exc:
        assert re.match(r"opset=17 cannot be written: torch's ONNX exporter made opset \d+", exc.message)
        assert not list(tmp_path.iterdir())
    else:
        assert {o.domain: o.version for o in onnx.load(out).opset_import}[""] == 17


def test_a_vit_check_size_one_patch_high_is_named_as_such_in_torch_export(tmp_path: Path) -> None:
    """torch.export (2.9) specialises a dimension of size 1: a patch-16 ViT's 16x40 check fails its guard.
    The hint said to set dynamic_img_size, already set (found by a ViT audit). Where torch exports it
    (2.7), the file is written and checked like any other."""
    name, kwargs = VIT
    classifier = tiny_classifier("avg", name, kwargs)
    out = tmp_path / "m.pt2"
    try:
        export_classifier(classifier, "exported", out, sizes=[(16, 40)], atol=ATOL)
    except ConfigError as exc:
        assert exc.message.startswith("cannot export format=exported at a check size one patch high")
        assert "dynamic_img_size" not in str(exc.hint) and not list(tmp_path.iterdir())
    else:
        assert out.is_file()


def test_a_second_runs_export_into_one_folder_keeps_the_first_runs_card(tmp_path: Path) -> None:
    """The card beside an export was always model_card.md: a second run exported into the folder
    replaced the first's, and model.onnx was then described by the other run's card."""
    from resflex.export import card_beside

    first, second = tmp_path / "a" / "model_card.md", tmp_path / "b" / "model_card.md"
    for card, name in ((first, "run_a"), (second, "run_b")):
        card.parent.mkdir()
        card.write_text(f"# Model card: {name}\n\nbody\n")
    out = tmp_path / "export"
    out.mkdir()
    assert card_beside(out / "model.onnx", first) == out / "model_card.md"  # nothing there yet
    (out / "model_card.md").write_text(first.read_text())
    assert card_beside(out / "model.pt", first) == out / "model_card.md"  # the same run's: rewritten
    assert card_beside(out / "vit.onnx", second) == out / "vit.model_card.md"
