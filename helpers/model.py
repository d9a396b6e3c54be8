"""The regressor: a backbone (Wav2Vec2, HuBERT or WavLM), pooling over frames (a masked mean, or
attentive statistics) and a small head for arousal, valence and dominance."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from .constants import DIMENSIONS

HEAD_MODULES = ["head", "pooling"]  # what trains in every method, above the backbone


def frame_mask(frame_lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(batch, frames) booleans: True where a frame holds audio."""
    return torch.arange(num_frames, device=frame_lengths.device) < frame_lengths[:, None]


def masked_mean(hidden: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid frames of each sequence: (batch, frames, dim) -> (batch, dim)."""
    weights = frame_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


class MeanPooling(nn.Module):
    """The mean over the valid frames (no parameters): the series' default."""

    widening = 1  # output width / hidden width

    def forward(self, hidden: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        return masked_mean(hidden, frames)


class AttentiveStatisticsPooling(nn.Module):
    """Attentive statistics pooling (Okabe et al. 2018; the MSP-Podcast challenge baseline's
    head): a small network scores every frame, the scores are a softmax over the valid frames,
    and the weighted mean and weighted standard deviation are concatenated."""

    widening = 2

    def __init__(self, width: int, attention_dim: int = 128):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(width, attention_dim), nn.Tanh(),
                                   nn.Linear(attention_dim, 1))

    def forward(self, hidden: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        logits = self.score(hidden).squeeze(-1).masked_fill(~frames, float("-inf"))
        weights = logits.softmax(-1).unsqueeze(-1)
        mean = (weights * hidden).sum(1)
        variance = (weights * (hidden - mean.unsqueeze(1)) ** 2).sum(1)
        return torch.cat([mean, variance.clamp(min=1e-6).sqrt()], -1)


POOLINGS = {"mean": lambda width: MeanPooling(),
            "attentive": lambda width: AttentiveStatisticsPooling(width)}


class EmotionRegressor(nn.Module):
    """Backbone -> pooling over valid frames -> dense/tanh head -> arousal, valence, dominance.

    Padding is excluded from the pooling even for group-norm backbones, which get no attention
    mask: the true lengths travel with every batch (see ``helpers.dataset.collate``). The
    pooling trains with the head in every method (``HEAD_MODULES``).
    """

    def __init__(self, backbone: PreTrainedModel, head_dim: int = 256, dropout: float = 0.1,
                 pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}: choose one of {sorted(POOLINGS)}")
        self.backbone = backbone
        width = backbone.config.hidden_size
        self.pooling = POOLINGS[pooling](width)
        width *= self.pooling.widening
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, head_dim), nn.Tanh(),
                                  nn.Dropout(dropout), nn.Linear(head_dim, len(DIMENSIONS)))

    def frame_lengths(self, lengths: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor:
        """How many CNN frames of each sequence hold audio rather than padding."""
        if lengths is None:
            return torch.full(hidden.shape[:1], hidden.shape[1], device=hidden.device)
        return self.backbone._get_feat_extract_output_lengths(lengths).to(hidden.device)

    def pool_and_predict(self, hidden: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """Pooling over the valid frames, then the head: (batch, frames, dim) -> (batch, 3)."""
        return self.head(self.pooling(hidden, frame_mask(frame_lengths, hidden.shape[1])))

    def forward(self, input_values: torch.Tensor, lengths: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.backbone(input_values, attention_mask=attention_mask).last_hidden_state
        return self.pool_and_predict(hidden, self.frame_lengths(lengths, hidden))
