"""The training side of NaFlex token batches in process: the step loss's scale and the epoch's padding
share (its mean, and how a resume takes it back), each checked by hand (mutation audit, round 5)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from resflex.training import naflex
from resflex.training.naflex import PADDING_SHARE_KEY, EpochPaddingShare


# read right after loading, before any update of its own
@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric EpochPaddingShare")
def test_a_resumed_epochs_padding_share_mean_is_taken_back_only_in_that_epoch() -> None:
    """A resume inside the checkpoint's epoch continues its mean; the next epoch starts from nothing."""
    share = EpochPaddingShare()
    share.update(torch.tensor(0.2), 4)
    share.update(torch.tensor(0.6), 4)
    checkpoint: dict[str, object] = {}
    share.save(checkpoint, epoch=3)
    assert checkpoint[PADDING_SHARE_KEY]["epoch"] == 3
    same = EpochPaddingShare()
    same.load(checkpoint)
    same.resume(3)
    assert abs(float(same.compute()) - 0.4) < 1e-6
    later = EpochPaddingShare()
    later.load(checkpoint)
    later.resume(4)  # the checkpoint's epoch ended: epoch 4 starts from nothing
    assert float(later.weight) == 0.0


def test_the_step_loss_is_multiplied_by_the_data_modules_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-step loss scale (steps of fewer images weigh less) multiplies the loss that is returned."""
    monkeypatch.setattr(naflex, "step_loss_scale", lambda datamodule, n: 0.5)
    monkeypatch.setattr(naflex, "attached_trainer", lambda module: SimpleNamespace(datamodule=None))
    module = SimpleNamespace(train_padding_share=EpochPaddingShare(), log=lambda *a, **k: None)

    class Batch:
        padding_share = torch.tensor(0.25)

        def __len__(self) -> int:
            return 4

    loss = naflex.token_training_loss(module, Batch(), torch.tensor(2.0))  # type: ignore[arg-type]
    assert float(loss) == 1.0


def test_the_epoch_mean_weights_each_step_by_its_images_and_only_token_runs_checkpoint_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``train/padding_share`` is the share of padding over the epoch's images, not a mean of step means;
    a run that never saw a token batch writes no padding key into its checkpoints."""
    share = EpochPaddingShare()
    checkpoint: dict[str, object] = {}
    share.save(checkpoint, epoch=0)  # nothing trained on tokens: no key in the checkpoint
    assert PADDING_SHARE_KEY not in checkpoint

    class Batch:
        def __init__(self, padding: float, n: int) -> None:
            self.padding_share, self.n = torch.tensor(padding), n

        def __len__(self) -> int:
            return self.n

    module = SimpleNamespace(train_padding_share=share, log=lambda *a, **k: None)
    monkeypatch.setattr(naflex, "attached_trainer", lambda m: SimpleNamespace(datamodule=None))
    naflex.token_training_loss(module, Batch(0.5, 6), torch.tensor(1.0))  # type: ignore[arg-type]
    naflex.token_training_loss(module, Batch(0.1, 2), torch.tensor(1.0))  # type: ignore[arg-type]
    assert abs(float(share.compute()) - (0.5 * 6 + 0.1 * 2) / 8) < 1e-6
