"""The interval every figure over seeds carries: mean and the half-width of a 95% Student-t interval."""

from __future__ import annotations

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
