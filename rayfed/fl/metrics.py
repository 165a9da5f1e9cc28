"""Accuracy and the fairness metrics over per-client accuracies p_1..p_n."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from rayfed.data.datasets import augment_batch
from rayfed.training import autocast


def jain_index(p: Sequence[float]) -> float:
    """JFI = (sum p)^2 / (n * sum p^2); 1.0 when every p is 0."""
    p = np.asarray(p, dtype=np.float64)
    squares = float(np.sum(p**2))
    return 1.0 if squares == 0 else float(np.sum(p) ** 2 / (len(p) * squares))


def max_min_fairness(p: Sequence[float]) -> float:
    """min p / max p; 0.0 when max p is 0."""
    p = np.asarray(p, dtype=np.float64)
    return 0.0 if np.max(p) == 0 else float(np.min(p) / np.max(p))


FAIRNESS_FIGURES = ("jfi", "max_min", "variance", "min_accuracy", "max_accuracy", "mean_accuracy", "gap")
"""The names `fairness_summary` gives its figures, in its order."""


def fairness_summary(p: Sequence[float]) -> dict[str, float]:
    """The notebook's fairness figures over per-client accuracies (percent)."""
    arr = np.asarray(p, dtype=np.float64)
    return {
        "jfi": jain_index(arr),
        "max_min": max_min_fairness(arr),
        "variance": float(np.var(arr)),
        "min_accuracy": float(np.min(arr)),
        "max_accuracy": float(np.max(arr)),
        "mean_accuracy": float(np.mean(arr)),
        "gap": float(np.max(arr) - np.min(arr)),
    }


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """argmax of the model's outputs on x, in eval mode and batches."""
    model.eval()
    with autocast(x.device):
        return torch.cat([model(x[start : start + batch_size]).argmax(1) for start in range(0, len(x), batch_size)])


@torch.no_grad()
def accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 1024,
    augment_pad: torch.Tensor | None = None,
    seed: int = 0,
) -> float:
    """Percent of x classified as y (eval mode). With `augment_pad`, each image is randomly cropped and flipped
    first, as the notebook's per-client figure is measured through its training transform."""
    if len(y) == 0:
        return 0.0
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)  # counted on the device: one sync at the end
    with autocast(x.device):
        for start in range(0, len(y), batch_size):
            inputs = x[start : start + batch_size]
            if augment_pad is not None:
                inputs = augment_batch(inputs, augment_pad.to(x.device), generator)
            correct += (model(inputs).argmax(1) == y[start : start + batch_size]).sum()
    return 100.0 * int(correct) / len(y)
