"""Concordance correlation coefficient (CCC): the standard score for dimensional emotion.

CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2). Unlike Pearson's r it also
penalises predictions that are shifted or scaled, so a model must get the level right too.
"""

from __future__ import annotations

import numpy as np
import torch

from .constants import DIMENSIONS


def ccc_per_dimension(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CCC of each column of (N, D) predictions against targets, over the N rows; differentiable.
    A leading batch axis, (K, N, D) -> (K, D), scores K resamples at once (the bootstrap)."""
    pred, target = pred.float(), target.float()
    pred_mean, target_mean = pred.mean(-2, keepdim=True), target.mean(-2, keepdim=True)
    covariance = ((pred - pred_mean) * (target - target_mean)).mean(-2)
    denominator = pred.var(-2, unbiased=False) + target.var(-2, unbiased=False) \
        + ((pred_mean - target_mean) ** 2).squeeze(-2)
    return 2 * covariance / denominator.clamp(min=1e-12)


def ccc(pred, target) -> float:
    """CCC of two 1-D sequences (tensors, arrays or lists, read-only ones included: they are
    copied)."""
    as_column = lambda x: torch.tensor(np.asarray(x, dtype=np.float64)).reshape(-1, 1)
    return float(ccc_per_dimension(as_column(pred), as_column(target))[0])


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean CCC over the dimensions: the training loss (computed in fp32)."""
    return 1 - ccc_per_dimension(pred, target).mean()


def ccc_report(pred: torch.Tensor, target: torch.Tensor,
               names: tuple[str, ...] = DIMENSIONS) -> dict[str, float]:
    """CCC per dimension and their mean, as a plain dict (easy to log or tabulate)."""
    scores = ccc_per_dimension(pred, target).tolist()
    return {**dict(zip(names, scores)), "mean": float(np.mean(scores))}

