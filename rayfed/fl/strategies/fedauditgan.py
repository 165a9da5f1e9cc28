"""Fed-AuditGAN's Phase 3 scores and Phase 4 weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fairness_scores(bias_base: float, client_biases: Sequence[float]) -> list[float]:
    """S_i = B_base - B_i: positive when applying client i's update alone reduces the bias."""
    return [bias_base - b for b in client_biases]


def softmax_weights(scores: Sequence[float], gamma: float) -> list[float]:
    """alpha_i = exp(gamma * S_i) / sum_j exp(gamma * S_j), computed stably (max subtracted, float64),
    so the weights stay finite for any finite gamma * S."""
    scaled = gamma * np.asarray(scores, dtype=np.float64)
    exp = np.exp(scaled - scaled.max())
    return (exp / exp.sum()).tolist()
