"""Loss-based membership inference against a model or an ensemble.

The attacker sees the per-sample loss l = -log(p(y | x)) (for an ensemble, of the mean softmax:
rayfed.sisa.ensemble.ensemble_loss) of members (forgotten or training points) and non-members (test points),
n of each (the first n of the larger side), and
- fits a logistic regression on l, scored by stratified 5-fold cross-validated accuracy (the notebook's test;
  0.5 = cannot tell members from non-members);
- thresholds l directly (members have lower loss): ROC AUC with a 95% percentile bootstrap interval (members
  and non-members resampled separately), and the TPR at 1% FPR (Carlini et al. 2022), null with fewer than
  100 non-members (below that the lowest FPR above 0 is more than 1%).
A score means little alone (notebook defect 7): compare the unlearned model with one retrained from scratch
without the forget set, which is the score to match; the interval says whether n is enough to tell them apart.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold, cross_val_score

MIN_NEGATIVES_FOR_TPR = 100
"""Non-members needed before a TPR at 1% FPR is reported: FPR 1% must be reachable above FPR 0."""
BOOTSTRAP_RESAMPLES = 1000


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


def threshold_attack(
    members: np.ndarray, nonmembers: np.ndarray, max_fpr: float = 0.01
) -> tuple[float | None, float | None]:
    """(AUC, TPR at FPR <= max_fpr) of the attack "member when l < t", over all thresholds t, balanced sets;
    the TPR is null with fewer than MIN_NEGATIVES_FOR_TPR non-members."""
    losses, labels = balanced(members, nonmembers)
    if len(losses) < 2:
        return None, None
    fpr, tpr, _ = roc_curve(labels, -losses)
    low_fpr = float(tpr[fpr <= max_fpr].max()) if len(losses) // 2 >= MIN_NEGATIVES_FOR_TPR else None
    return float(roc_auc_score(labels, -losses)), low_fpr


def auc_interval(
    members: np.ndarray,
    nonmembers: np.ndarray,
    seed: int = 0,
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the threshold attack's AUC on the balanced sets: each side resampled with
    replacement; AUC = (sum of member ranks - n(n+1)/2) / n^2 (Mann-Whitney) on the scores -l."""
    n = min(len(members), len(nonmembers))
    if n < 2:
        return None, None
    rng = np.random.default_rng(seed)
    m = members[:n][rng.integers(0, n, (resamples, n))]
    nm = nonmembers[:n][rng.integers(0, n, (resamples, n))]
    ranks = rankdata(-np.concatenate([m, nm], axis=1), axis=1)
    aucs = (ranks[:, :n].sum(1) - n * (n + 1) / 2) / (n * n)
    tail = (1 - level) / 2
    return float(np.quantile(aucs, tail)), float(np.quantile(aucs, 1 - tail))


def membership_row(stage: str, comparison: str, members: np.ndarray, nonmembers: np.ndarray, seed: int = 0) -> dict:
    """One membership.parquet row: stage, comparison, n (points per side), lr_cv_accuracy, auc, auc_low,
    auc_high, tpr_at_1pct_fpr."""
    auc, tpr = threshold_attack(members, nonmembers)
    low, high = auc_interval(members, nonmembers, seed)
    return {
        "stage": stage,
        "comparison": comparison,
        "n": min(len(members), len(nonmembers)),
        "lr_cv_accuracy": lr_cv_accuracy(members, nonmembers, seed),
        "auc": auc,
        "auc_low": low,
        "auc_high": high,
        "tpr_at_1pct_fpr": tpr,
    }
