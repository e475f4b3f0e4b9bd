"""ImageClassifier: model.net.dropout is checked and applied between the pooled features and the head in
training only."""

from __future__ import annotations

import pytest
import torch

from resflex.errors import ConfigError
from resflex.models.backbone import TimmBackbone
from resflex.models.classifier import ImageClassifier
from tests.conftest import pooling_from_config


def classifier(dropout: float) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(TimmBackbone("test_resnet"), pooling_from_config("avg"), 3, dropout=dropout)


@pytest.mark.parametrize("dropout", [1.0, -0.1, 1.5])
def test_a_dropout_outside_zero_to_one_is_refused(dropout: float) -> None:
    """dropout=1 zeroes every feature: the head would learn from its bias only."""
    with pytest.raises(ConfigError, match="model.net.dropout"):
        classifier(dropout)


def test_dropout_acts_on_the_pooled_features_in_training_only() -> None:
    model = classifier(0.5)
    assert model.head.out_features == 3 and model.num_classes == 3
    x = torch.rand(4, 3, 32, 32)
    model.train()
    torch.manual_seed(1)
    features = model.forward_features(x)
    logits = model(x)
    assert not torch.allclose(logits, model.head(features))  # features dropped before the head
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model.head(model.forward_features(x)))
