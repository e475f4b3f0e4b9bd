"""scripts/benchmark.py --sections loader: the figure is measured and reported (no wall-clock assertion).

A tiny run (32 files, one size) goes through every pipeline: resflex with each decoder, timm's
create_loader and torchvision's decode_jpeg + v2, and the record has a per-core rate for each,
the ratios to timm and the targets of the issue.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from benchmarks import cli, loader


def test_photo_like_files_are_photo_sized_jpegs_of_photo_weight(tmp_path: Path) -> None:
    info = loader.write_photo_folder(tmp_path / "photos", 8)
    files = sorted((tmp_path / "photos" / "train").rglob("*.jpg"))
    assert len(files) == 8 and {p.parent.name for p in files} == {f"c{k}" for k in range(loader.CLASSES)}
    with Image.open(files[0]) as image:
        assert image.size == loader.PHOTO_SIZE and image.format == "JPEG"
    assert 40 < info["mean_file_kb"] < 120  # real 500x375 photos at q90: ~35-70 KB; ImageNet ~110 KB
    assert sorted((tmp_path / "photos" / "val").rglob("*.jpg"))  # the val split reads the same files
    buffer = io.BytesIO()
    loader.photo_like(*loader.PHOTO_SIZE, seed=0).save(buffer, "JPEG", quality=90)
    assert buffer.getvalue() != b""


def test_every_pipeline_is_measured_with_its_ratio_to_timm() -> None:
    threads = torch.get_num_threads()
    record = loader.loader(sizes=[64], images=32, repeats=1, splits=("train", "eval"))
    assert torch.get_num_threads() == threads  # restored after the one-thread measurement
    assert record["images"] == 32 and record["threads"] == 1 and record["workers"] == 0
    pipelines = {f"resflex_{d}" for d in loader.DECODERS} | set(loader.BASELINES)
    assert {(c["split"], c["geometry"]) for c in record["cases"]} == {
        (s, g) for s in ("train", "eval") for g in ("square", "keep_aspect")
    }
    for case in record["cases"]:
        assert set(case["per_core"]) == pipelines, case["per_core"]
        assert all(v > 0 for v in case["per_core"].values()), case
        timm = case["per_core"]["timm"]
        for name, ratio in case["ratio_vs_timm"].items():
            assert ratio == pytest.approx(case["per_core"][name] / timm, rel=1e-2), name
        if case["geometry"] == "square":
            assert case["out_hw"] == [64, 64]
        else:  # 4:3 photos: the 1.333 bucket, short side 64
            assert case["out_hw"][0] == 64 and case["out_hw"][1] > 64
            assert "baseline" in case
    for name in ("pil_full", "pil_1/2", "pil_1/4", "pil_1/8", "decode_jpeg", "resample_torch_224"):
        assert record["steps_per_core"][name] > 0, name
    assert record["default_decoder"] == "auto"
    assert record["targets"] == {}  # no 128 or 224 px case in this run
    on_device = record["device_decode"]  # data.source.decoder=device: on the CPU here, and labelled so
    assert on_device["device"] == "cpu" and "not a GPU figure" in on_device["unit"]
    assert [(c["split"], c["size"]) for c in on_device["cases"]] == [("train", 64), ("eval", 64)]
    assert all(c["workers_per_core"] > 0 and c["device"] > 0 for c in on_device["cases"])
    table = "\n".join(loader.render(record))
    assert "6 loader" in table and "auto/timm" in table and "steps alone" in table
    assert "decoder=device, square" in table and "not a GPU figure" in table


def test_targets_name_the_train_square_cases() -> None:
    case = {"split": "train", "geometry": "square", "size": 128, "out_hw": [128, 128],
            "per_core": {"resflex_pil": 1.0, "resflex_torchvision": 1.0, "resflex_auto": 1.6,
                         "timm": 1.0, "torchvision": 1.0},
            "ratio_vs_timm": {"resflex_pil": 1.0, "resflex_torchvision": 1.0, "resflex_auto": 1.6,
                              "torchvision": 1.0}}  # fmt: skip
    record = {"images": 32, "image_size": [500, 375], "quality": 90, "mean_file_kb": 70.0,
              "batch_size": 32, "repeats": 1, "load_average": {"start": [0.5], "end": [0.6]},
              "default_decoder": "auto", "cases": [case],
              "targets": {"128": {"ratio": 1.6, "target": 1.5, "by_decoder": {}}}}  # fmt: skip
    table = "\n".join(loader.render(record))
    assert "target train square @128: resflex (auto) / timm 1.600 >= 1.5: met" in table


def test_loader_is_a_section_the_cli_runs_only_when_named() -> None:
    args = cli.parse_args([])
    assert "loader" not in args.sections.split(",")
    args = cli.fill_defaults(cli.parse_args(["--quick", "--sections", "loader"]), torch.device("cpu"))
    assert args.sections == "loader" and args.loader_images == 64 and args.loader_sizes == [128, 224]
    args = cli.fill_defaults(cli.parse_args(["--sections", "loader", "--loader-sizes", "96,128"]),
                             torch.device("cpu"))  # fmt: skip
    assert args.loader_sizes == [96, 128] and args.loader_images == 320
    assert "loader" in cli.REQUIRED_KEYS
