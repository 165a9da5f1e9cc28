"""FedAvg (McMahan et al. 2017): alpha_i = n_i / sum_j n_j."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fedavg_weights(num_samples: Sequence[int]) -> list[float]:
    """alpha_i = n_i / sum_j n_j, the size weights of the notebook's FedAvg."""
    n = np.asarray(num_samples, dtype=np.float64)
    return (n / n.sum()).tolist()
