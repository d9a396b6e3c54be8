"""The regressor: a Wav2Vec2 backbone, masked mean pooling and a small head for A/V/D."""

from __future__ import annotations

import torch
from torch import nn
from transformers import Wav2Vec2Model

from .data import DIMENSIONS


def masked_mean(hidden: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid frames of each sequence: (batch, frames, dim) -> (batch, dim)."""
    weights = frame_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


class EmotionRegressor(nn.Module):
    """Backbone -> mean over valid frames -> dense/tanh head -> arousal, valence, dominance.

    Padding is excluded from the mean even for group-norm backbones, which get no attention
    mask: the true lengths travel with every batch (see ``helpers.data.collate``).
    """

    def __init__(self, backbone: Wav2Vec2Model, head_dim: int = 256, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        width = backbone.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, head_dim), nn.Tanh(),
                                  nn.Dropout(dropout), nn.Linear(head_dim, len(DIMENSIONS)))

    def frame_mask(self, lengths: torch.Tensor | None, num_frames: int,
                   batch_size: int) -> torch.Tensor:
        """Which CNN frames hold audio rather than padding."""
        if lengths is None:
            return torch.ones(batch_size, num_frames, dtype=torch.bool)
        frames = self.backbone._get_feat_extract_output_lengths(lengths)
        return torch.arange(num_frames, device=frames.device) < frames[:, None]

    def forward(self, input_values: torch.Tensor, lengths: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.backbone(input_values, attention_mask=attention_mask).last_hidden_state
        mask = self.frame_mask(lengths, hidden.shape[1], hidden.shape[0]).to(hidden.device)
        return self.head(masked_mean(hidden, mask))
