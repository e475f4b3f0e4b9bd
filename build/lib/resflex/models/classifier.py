"""Backbone → pooling head → dropout → linear: the model every resflex run trains."""

from __future__ import annotations

import torch
from torch import nn

from resflex.models.backbone import TimmBackbone
from resflex.models.pooling import PoolingHead
from resflex.validation import check_value


class ImageClassifier(nn.Module):
    """Classifies images of any size: the pooling head fixes the feature length."""

    def __init__(self, backbone: TimmBackbone, pooling: PoolingHead, num_classes: int, dropout: float = 0.0):
        super().__init__()
        dropout = check_value("model.net.dropout", dropout, float, lambda v: 0 <= v < 1, "a number in [0, 1)")
        self.backbone = backbone
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.num_features = pooling.setup(backbone.num_features)
        self.head = nn.Linear(self.num_features, num_classes)
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> pooled (B, D); a token batch (resolution=naflex): pooled per image's own grid."""
        features = self.backbone(x)
        if not isinstance(features, torch.Tensor):  # a NaFlex backbone's TokenGrid: resflex.models.naflex
            from resflex.models.naflex import pool_tokens

            return pool_tokens(self.pooling, features)
        return self.pooling(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))
