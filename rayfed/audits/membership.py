"""Loss-based membership inference against an ensemble.

The attacker sees the ensemble's per-sample loss l = -log(mean_softmax[y]) (rayfed.sisa.ensemble.ensemble_loss)
of members (forgotten or training points) and non-members (test points), equally many of each, and
- fits a logistic regression on l, scored by stratified 5-fold cross-validated accuracy (the notebook's test;
  0.5 = cannot tell members from non-members);
- thresholds l directly (members have lower loss): ROC AUC and the TPR at 1% FPR (Carlini et al. 2022).
A score means little alone (notebook defect 7): compare the unlearned ensemble with one retrained from scratch
without the forget set, which is the score to match.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold, cross_val_score


def balanced(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of equally many members (label 1) and non-members (label 0): the first
    min(len) of each."""
    n = min(len(members), len(nonmembers))
    return np.concatenate([members[:n], nonmembers[:n]]), np.concatenate([np.ones(n), np.zeros(n)])


def lr_cv_accuracy(members: np.ndarray, nonmembers: np.ndarray, seed: int = 0, folds: int = 5) -> float | None:
    """Mean accuracy of a logistic regression on the losses, stratified `folds`-fold CV on balanced sets
    (fewer folds when a side has fewer points; null below 2 points a side)."""
    losses, labels = balanced(members, nonmembers)
    folds = min(folds, len(losses) // 2)
    if folds < 2:
        return None
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(LogisticRegression(), losses.reshape(-1, 1), labels, cv=cv, scoring="accuracy").mean())


def threshold_attack(members: np.ndarray, nonmembers: np.ndarray,
                     max_fpr: float = 0.01) -> tuple[float | None, float | None]:
    """(AUC, TPR at FPR <= max_fpr) of the attack "member when l < t", over all thresholds t, balanced sets."""
    losses, labels = balanced(members, nonmembers)
    if len(losses) < 2:
        return None, None
    fpr, tpr, _ = roc_curve(labels, -losses)
    return float(roc_auc_score(labels, -losses)), float(tpr[fpr <= max_fpr].max())


def membership_row(stage: str, comparison: str, members: np.ndarray, nonmembers: np.ndarray, seed: int = 0) -> dict:
    """One membership.parquet row: stage, comparison, lr_cv_accuracy, auc, tpr_at_1pct_fpr."""
    auc, tpr = threshold_attack(members, nonmembers)
    return {"stage": stage, "comparison": comparison, "lr_cv_accuracy": lr_cv_accuracy(members, nonmembers, seed),
            "auc": auc, "tpr_at_1pct_fpr": tpr}
