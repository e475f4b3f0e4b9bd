"""Issue 30 end to end: a NaFlex run (token batches, a sequence length per step) is the same on every
rank and exact after a resume.

The sampler's (seed, epoch, step) contract is tested at the sampler level (``tests/data/test_naflex.py``);
these runs check that nothing between the sampler and the optimiser (the loader, Lightning's loops,
the epoch length that varies with the steps' sequence lengths, the checkpoint) breaks it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resflex.training.distributed import check_rank_logs, read_rank_logs
from tests.conftest import TINY_NAFLEX_MODEL, make_image_folder, run_cli, scalar_tags
from tests.faults import sigterm_at

#: a tiny NaFlex run on an image folder of varied aspects: 18 training images, two sequence lengths
#: (a step takes 4 images at 32 tokens or 8 at 16), 2 epochs of 4 to 5 steps
TINY_NAFLEX = (
    *TINY_NAFLEX_MODEL,
    "trainer.accelerator=cpu",
    "trainer.max_epochs=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
    "test_after_fit=false",
    "logger=tensorboard",
)


def seq_lens_by_step(run_dir: Path) -> dict[int, float]:
    """The sequence length of every logged training step (``train/resolution``: tokens per image)."""
    return {step: value for step, value in scalar_tags(run_dir)["train/resolution"]}


@pytest.mark.slow
def test_sigterm_and_resume_of_a_naflex_run_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    """Killed mid-epoch 2 and resumed from ``last``: every step's sequence length, the final metrics and
    the weights are the uninterrupted run's."""
    folder = make_image_folder(tmp_path / "images", per_class=6, splits=("train", "val"))
    run = [*TINY_NAFLEX, f"data.root={folder}"]
    whole = run_cli([*run, f"hydra.run.dir={tmp_path / 'whole'}"], cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected_lens = seq_lens_by_step(tmp_path / "whole")
    assert len(expected_lens) == 9 and set(expected_lens.values()) == {16.0, 32.0}  # 5 + 4 steps

    run_dir = tmp_path / "killed"
    killed = run_cli(
        [
            *run,
            *sigterm_at(7),
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert killed.returncode == 143, killed.stderr[-3000:]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert saved["global_step"] == 7 and saved["epoch"] == 1  # 2 of epoch 2's 4 steps done
    before = seq_lens_by_step(run_dir)

    resumed = run_cli([*run, "ckpt_path=last", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got_lens = seq_lens_by_step(run_dir)  # the killed run's event file and the resumed run's
    assert max(before) == 7 and got_lens == expected_lens
    expected = json.loads((tmp_path / "whole" / "metrics.json").read_text())["metrics"]
    got = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for key in ("val/loss", "val/acc", "train/loss", "train/acc", "train/padding_share"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    final = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
        for d in (tmp_path / "whole", run_dir)
    ]
    assert final[0]["global_step"] == final[1]["global_step"] == 9
    assert final[0]["state_dict"].keys() == final[1]["state_dict"].keys()
    for name, tensor in final[0]["state_dict"].items():
        torch.testing.assert_close(final[1]["state_dict"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_ddp_sim_naflex_run_uses_the_same_sequence_length_on_both_ranks(tmp_path: Path) -> None:
    """Two gloo processes: the per-rank batch logs (:class:`resflex.training.distributed.RankBatchLog`,
    a token batch's 'size' is (s, s)) say both ranks took the same sequence length at every step,
    disjoint shards covering the data, and identical weights at each epoch's end."""
    folder = make_image_folder(tmp_path / "images", per_class=9, splits=("train", "val"), seed=3)
    run = tmp_path / "run"
    args = [*TINY_NAFLEX, "trainer=ddp_sim", f"data.root={folder}", f"hydra.run.dir={run}"]
    result = run_cli(args, cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    report = check_rank_logs(run, num_samples=27)
    assert report["ranks"] == [0, 1]
    for epoch in (0, 1):
        e = report["epochs"][epoch]
        assert e["sizes_agree"] and e["rank_repeats"] == 0 and e["weights_agree"], e
        assert e["missing"] == 0 and e["steps"][0] == e["steps"][1] > 0, e
    lens = {s for e in report["epochs"].values() for s in e["sizes"]}
    assert lens == {(16, 16), (32, 32)}  # both sequence lengths were drawn
    logged = seq_lens_by_step(run)  # rank 0's train/resolution: the logs' lengths, step for step
    ranks = read_rank_logs(run)
    assert [float(r["size"][0]) for r in ranks[0] if "step" in r] == [logged[k] for k in sorted(logged)]
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "completed" and 0 <= record["metrics"]["train/padding_share"] < 0.5
