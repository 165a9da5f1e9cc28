"""The Euclidean projection onto the probability simplex found another way than rayfed's sort (AFL's lambda step),
for tests to hold it against."""

import numpy as np


def simplex_projection_by_bisection(v: np.ndarray) -> np.ndarray:
    """max(v - theta, 0) with theta bisected until the entries sum to 1."""
    low, high = v.min() - 1.0, v.max()
    for _ in range(200):
        theta = (low + high) / 2
        low, high = (theta, high) if np.maximum(v - theta, 0).sum() > 1 else (low, theta)
    return np.maximum(v - (low + high) / 2, 0)
