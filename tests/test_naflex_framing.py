"""resflex.naflex_framing on its own: how a NaFlex run's sequence length is parsed and how a decoded image
is framed (its own aspect, at most seq_len patches), without training a run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from resflex.data.naflex import NaFlexResolution
from resflex.errors import ConfigError
from resflex.naflex_framing import frame_pixels, parse_seq_len


def test_null_is_the_runs_max_seq_len_and_a_number_is_itself() -> None:
    """predict.seq_len=null is the length the run's val/acc was measured at, not its shortest training
    length; a number given as text (a CLI or env value) is that number."""
    schedule = SimpleNamespace(max_seq_len=64, seq_lens=[16, 32, 64])
    assert parse_seq_len(None, schedule) == 64
    assert parse_seq_len(24, schedule) == 24
    assert parse_seq_len(" 48 ", None) == 48
    assert parse_seq_len(1, None) == 1


@pytest.mark.parametrize("value", [0, -3, True, 2.5, "abc", None])
def test_a_bad_sequence_length_is_one_line_naming_its_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"check.seq_lens must be a whole number of tokens >= 1") as info:
        parse_seq_len(value, None, "check.seq_lens", "check.seq_lens=[48]")
    assert info.value.hint == "check.seq_lens=[48]" and "\n" not in str(info.value)


def test_a_decoded_image_is_framed_at_its_own_aspect() -> None:
    """A wide image stays wide and a tall one tall (the schedule is asked width first, then height), at
    most seq_len patches."""
    schedule = NaFlexResolution(seq_lens=(16,), max_seq_len=16, patch_size=8)
    seen: list[tuple[int, int]] = []

    def transform(pixels: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        seen.append(shape)
        return torch.zeros(3, *shape, dtype=torch.uint8)

    wide = frame_pixels(torch.zeros(3, 30, 120, dtype=torch.uint8), schedule, transform, 16)
    tall = frame_pixels(torch.zeros(3, 120, 30, dtype=torch.uint8), schedule, transform, 16)
    (h, w), (th, tw) = seen
    assert w > h and th > tw and (h, w) == (tw, th)
    assert (h // 8) * (w // 8) <= 16 and h % 8 == 0 and w % 8 == 0
    assert wide.shape[-2:] == (h, w) and tall.shape[-2:] == (th, tw)


class ConstantTokenClassifier:
    """A stand-in for a run's TokenClassifier: 8-px patches, the same logits for every image (class 2
    first, then 0, then 1), and what it was fed."""

    patch_size = 8

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, patches: torch.Tensor, coord: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        assert patches.shape[:2] == coord.shape[:2] == valid.shape
        self.batches.append(int(patches.shape[0]))
        return torch.tensor([[1.0, 0.0, 2.0]]).expand(patches.shape[0], 3)


def test_token_predictions_rows_are_each_files_framed_size_top_classes_and_correctness(tmp_path) -> None:
    """predict on a NaFlex run: each file's row has its framed height and width (a wide file stays wide),
    its top classes (at most as many as there are classes), whether the top one is its label, and the
    batch it ran in; the count of batches is returned."""
    from PIL import Image

    from resflex.predict_naflex import run_token_predictions
    from resflex.predict_plan import Inputs

    files = [tmp_path / "wide.png", tmp_path / "tall.png"]
    Image.new("RGB", (120, 30), (200, 10, 10)).save(files[0])
    Image.new("RGB", (30, 120), (10, 200, 10)).save(files[1])
    schedule = NaFlexResolution(seq_lens=(16,), max_seq_len=16, patch_size=8)

    def transform(pixels: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        return torch.zeros(3, *shape, dtype=torch.uint8)

    classifier = ConstantTokenClassifier()
    rows, unreadable, batches = run_token_predictions(
        classifier, ["a", "b", "c"], Inputs(tmp_path, files, [2, 0]), schedule, transform,
        16, batch_size=1, topk=5, device=torch.device("cpu"),
    )  # fmt: skip
    assert unreadable == {} and batches == 2 and classifier.batches == [1, 1]
    assert [r["batch"] for r in rows] == [0, 1]
    wide, tall = rows
    assert wide["width"] > wide["height"] and tall["height"] > tall["width"]
    assert (wide["height"], wide["width"]) == (tall["width"], tall["height"])
    assert [t["class"] for t in wide["top"]] == ["c", "a", "b"]
    assert (wide["label"], wide["correct"]) == ("c", True)
    assert (tall["label"], tall["correct"]) == ("a", False)
    assert wide["size"] == "16" and wide["bucket"] is None


def test_seq_len_on_a_run_that_takes_images_is_refused_even_when_it_is_zero() -> None:
    """Any predict.seq_len on an image run is a mistake to name (0 included), not a value to ignore."""
    from resflex.predict_naflex import check_naflex_options

    with pytest.raises(ConfigError, match="predict.seq_len=0 is for NaFlex runs"):
        check_naflex_options(SimpleNamespace(is_naflex=False), None, 0)  # type: ignore[arg-type]


def test_a_file_whose_size_cannot_be_framed_is_reported_and_the_rest_predicted(tmp_path) -> None:
    """A header that does not parse (OSError) or a size the framing rejects (ValueError) makes that file
    unreadable, with the reason; prediction goes on with the other files."""
    from PIL import Image

    from resflex.predict_naflex import run_token_predictions
    from resflex.predict_plan import Inputs

    good, junk, odd = tmp_path / "good.png", tmp_path / "junk.png", tmp_path / "odd.png"
    Image.new("RGB", (40, 40)).save(good)
    Image.new("RGB", (41, 41)).save(odd)
    junk.write_bytes(b"not an image")
    real = NaFlexResolution(seq_lens=(16,), max_seq_len=16, patch_size=8)

    def image_size(width: int, height: int, seq_len: int) -> tuple[int, int]:
        if width == 41:
            raise ValueError("no patch grid for 41 px")
        return real.image_size(width, height, seq_len)

    schedule = SimpleNamespace(image_size=image_size)
    rows, unreadable, batches = run_token_predictions(
        ConstantTokenClassifier(), ["a", "b", "c"], Inputs(tmp_path, [good, junk, odd], [None] * 3), schedule,
        lambda pixels, shape: torch.zeros(3, *shape, dtype=torch.uint8), 16, 4, 1, torch.device("cpu"),
    )  # fmt: skip
    assert [r["path"] for r in rows] == [str(good)] and batches == 1
    assert set(unreadable) == {1, 2} and "no patch grid for 41 px" in unreadable[2]
    assert rows[0]["top"] == [{"class": "c", "prob": pytest.approx(rows[0]["top"][0]["prob"])}]


def test_any_predict_size_on_a_naflex_run_is_refused() -> None:
    """predict.size=0 (or any size) sizes images; a NaFlex run takes token sequences: one line, not
    silently ignored."""
    from resflex.predict_naflex import check_naflex_options

    with pytest.raises(ConfigError, match="predict.size=0 sizes images"):
        check_naflex_options(SimpleNamespace(is_naflex=True), 0, None)  # type: ignore[arg-type]
