"""Aggregating the S shard models: mean softmax, majority vote, the ensemble's per-sample loss, and metrics.

probs has shape S x n x C: p_s(c | x_i), the softmax of shard s's model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from rayfed.training import autocast


@torch.no_grad()
def softmax_outputs(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """n x C softmax of one model (eval mode), float32 on CPU (copied back once, not once per batch)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with autocast(device):
        for start in range(0, len(x), batch_size):
            out.append(torch.softmax(model(x[start : start + batch_size].to(device)).float(), dim=1))
    return torch.cat(out).cpu()


def shard_probs(models: Sequence[nn.Module], x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """S x n x C: every shard model's softmax on x."""
    return torch.stack([softmax_outputs(m, x, batch_size) for m in models])


def mean_softmax(probs: torch.Tensor) -> torch.Tensor:
    """p(c | x) = (1/S) sum_s p_s(c | x)."""
    return probs.mean(0)


def vote_shares(probs: torch.Tensor) -> torch.Tensor:
    """v(c | x) = (1/S) #{s : argmax_c' p_s(c' | x) = c}: every shard votes once (notebook defect 3 had only
    the last model vote)."""
    votes = probs.argmax(2)  # S x n
    counts = torch.zeros(probs.shape[1:], dtype=torch.float32).scatter_add_(
        1, votes.T, torch.ones(votes.T.shape, dtype=torch.float32)
    )
    return counts / probs.shape[0]


def vote_ties(probs: torch.Tensor) -> torch.Tensor:
    """Boolean n: more than one class has the most votes."""
    shares = vote_shares(probs)
    return (shares == shares.max(1, keepdim=True).values).sum(1) > 1


def majority_vote(probs: torch.Tensor) -> torch.Tensor:
    """The class with most votes; a tie goes to the tied class with the highest mean softmax (not to the lowest
    class index, which would favour class 0, the default backdoor target)."""
    shares = vote_shares(probs)
    tied = shares == shares.max(1, keepdim=True).values
    return torch.where(tied, mean_softmax(probs), -1.0).argmax(1)


def combine_shards(probs: torch.Tensor, aggregation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions, scores) of an aggregation: `mean` -> argmax of the mean softmax and the mean softmax;
    `vote` -> the majority vote and the vote shares (used as class probabilities for AUROC)."""
    if aggregation == "mean":
        scores = mean_softmax(probs)
        return scores.argmax(1), scores
    if aggregation == "vote":
        return majority_vote(probs), vote_shares(probs)
    raise ValueError(f"unknown aggregation {aggregation!r}")


def ensemble_loss(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample loss of the ensemble, l_i = -log( (1/S) sum_s p_s(y_i | x_i) ) (notebook defect 4 applied
    CrossEntropyLoss to the averaged probabilities, a second softmax)."""
    mean = mean_softmax(probs)
    return -torch.log(mean.gather(1, y.view(-1, 1)).squeeze(1).clamp_min(torch.finfo(mean.dtype).tiny))


def classification_metrics(y: torch.Tensor, pred: torch.Tensor, scores: torch.Tensor) -> dict[str, Any]:
    """Accuracy (percent), weighted F1/precision/recall and one-vs-rest AUROC (macro; null when a class is
    missing from y), with scikit-learn."""
    y_np, pred_np = y.numpy(), pred.numpy()
    scores_np = scores.double().numpy()
    scores_np = scores_np / scores_np.sum(1, keepdims=True)
    try:
        if scores_np.shape[1] == 2:  # binary: the positive class's score
            auroc = float(roc_auc_score(y_np, scores_np[:, 1]))
        else:
            auroc = float(roc_auc_score(y_np, scores_np, multi_class="ovr", labels=np.arange(scores_np.shape[1])))
    except ValueError:
        auroc = None
    return {
        "accuracy": 100.0 * float(accuracy_score(y_np, pred_np)),
        "f1": float(f1_score(y_np, pred_np, average="weighted", zero_division=0)),
        "precision": float(precision_score(y_np, pred_np, average="weighted", zero_division=0)),
        "recall": float(recall_score(y_np, pred_np, average="weighted", zero_division=0)),
        "auroc": auroc,
    }
