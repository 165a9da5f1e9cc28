"""FedAvg (McMahan et al. 2017): alpha_i = n_i / sum_j n_j."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rayfed.fl.strategies.base import LocalResult
from rayfed.fl.strategies.weighted import WeightedAverage


def fedavg_weights(num_samples: Sequence[int]) -> list[float]:
    """alpha_i = n_i / sum_j n_j, the size weights of the notebook's FedAvg."""
    n = np.asarray(num_samples, dtype=np.float64)
    return (n / n.sum()).tolist()


@dataclass(frozen=True)
class FedAvg(WeightedAverage):
    name = "fedavg"
    title = "FedAvg"
    reference = True

    def weights(self, updates: Sequence[LocalResult]) -> list[float]:
        return fedavg_weights([u.num_samples for u in updates])
