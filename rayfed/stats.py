"""The interval every figure over seeds carries (mean and the half-width of a 95% Student-t interval), the
p-value that interval implies (the sign test's where it has no width), and Holm's correction for testing several
figures at once."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """(mean, half-width of the Student-t confidence interval); the half-width is None for fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return float(x.mean()), None
    sem = x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(stats.t.ppf((1 + confidence) / 2, len(x) - 1) * sem)


def signed_interval(mean: float, half: float) -> str:
    """`+m ± h` (4 decimals for small figures, else 2)."""
    digits = 4 if abs(mean) < 1 and half < 1 else 2
    return f"{mean:+.{digits}f} ± {half:.{digits}f}"


def interval_p_value(mean: float, half: float, n: int, confidence: float = 0.95) -> float:
    """Two-sided p-value of the one-sample t-test of "the true mean is 0" behind `mean_interval`'s interval:
    sem = half / t_{(1+c)/2, n-1}, t = mean / sem, p = 2 P(T_{n-1} > |t|); p < 1 - confidence exactly when the
    interval excludes 0. A zero-width interval (n >= 2 values, all equal: s = 0) leaves t undefined, and taking
    it as infinite would find an effect in two seeds that happen to agree; it gets the exact two-sided sign test
    instead: n equal nonzero values give p = min(1, 2 * 0.5^n) (6 of them to get below 0.05), n zeros give 1."""
    if half == 0:  # s = 0: the sign test
        return min(1.0, 2 * 0.5**n) if mean != 0 else 1.0
    sem = half / stats.t.ppf((1 + confidence) / 2, n - 1)
    return float(2 * stats.t.sf(abs(mean) / sem, n - 1))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input's order: the i-th smallest of m is multiplied by
    m - i + 1, kept at least the adjusted value before it, capped at 1. Rejecting where adjusted p < alpha
    holds the chance of any false effect among the m at most alpha (Holm 1979). A NaN (a test that could not be
    done) stays NaN and still counts in m, so the others are adjusted as if it were 1."""
    m = len(p_values)
    adjusted = [math.nan] * m
    running = 0.0
    tested = sorted((i for i in range(m) if not math.isnan(p_values[i])), key=lambda i: p_values[i])
    for rank, index in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def p_text(p: float) -> str:
    """`p 0.028`, `p < 0.001`."""
    return "p < 0.001" if p < 0.001 else f"p {p:.2g}"
