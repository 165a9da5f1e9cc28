"""Epoch schedules of slice training, their cost in samples, and the analytic speedup of unlearning.

Stage r (0-based) of a shard trains e_r epochs on the union of slices 0..r (|D_{<=r}| = (r+1) N/R points for
a shard of N points cut into R equal slices).

- `union` (the notebook): e_r = e on every union. Cost sum_r e (r+1) N/R = e N (R+1)/2 samples.
- `distributed` (Bourtoule et al.): e_r = floor((r+1) a) - floor(r a) with a = 2e/(R+1). Without the floors
  the cost is sum_r a (r+1) N/R = a N (R+1)/2 = e N samples: the whole shard costs e passes over its data.
  With them it is e N up to rounding (less than one pass over the shard either way). When a < 1 some stages
  train 0 epochs; if the last stages do, their slices are never trained on (`rayfed sisa` refuses that config).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def epochs_per_stage(schedule: str, epochs: int, slices: int) -> list[int]:
    """[e_0, ..., e_{R-1}] for `union` or `distributed` (see the module docstring)."""
    if schedule == "union":
        return [epochs] * slices
    if schedule == "distributed":
        # floor((r+1) a) with a = 2e/(R+1), in integers: floor(2e(r+1) / (R+1)), exact (no float rounding).
        cumulative = [2 * epochs * r // (slices + 1) for r in range(slices + 1)]
        return [cumulative[r + 1] - cumulative[r] for r in range(slices)]
    raise ValueError(f"unknown schedule {schedule!r}")


def stage_samples(slice_sizes: Sequence[int], epochs: Sequence[int], start: int = 0) -> int:
    """Samples processed by stages start..R-1: sum_{r>=start} e_r |D_{<=r}|."""
    total, union = 0, sum(slice_sizes[:start])
    for r in range(start, len(slice_sizes)):
        union += slice_sizes[r]
        total += epochs[r] * union
    return total


def expected_request_samples(epochs: Sequence[int], shards: int, points: int, num_points: int) -> float:
    """Expected samples processed by a request forgetting `points` uniformly random points, `num_points` (N)
    being the training points left once they are gone: S E[cost of a shard] in samples, i.e.
    S (N / (S R)) sum_r (p(r) - p(r+1)) C(r) with p and C as in `expected_speedup` (equal slices of N/(S R)
    points)."""
    slices = len(epochs)
    cost = [sum(epochs[k] * (k + 1) for k in range(r, slices)) for r in range(slices)]
    p = [(1 - r / (shards * slices)) ** points for r in range(slices + 1)]
    return num_points / slices * sum((p[r] - p[r + 1]) * cost[r] for r in range(slices))


def untrained_slices(epochs: Sequence[int]) -> range:
    """The last slices that no stage trains on: stages after the last one with e_r > 0 (empty when none)."""
    last = max((r for r, e in enumerate(epochs) if e > 0), default=-1)
    return range(last + 1, len(epochs))


def expected_speedup(epochs: Sequence[int], shards: int, points: int) -> float:
    """Analytic speedup of unlearning a batch of K = `points` uniformly random points over retraining all S shards.

    With equal slices, retraining a shard from checkpoint r costs C(r) = sum_{k>=r} e_k (k+1) (in units of
    N/R). Each point falls in one of the S R (shard, slice) cells uniformly (drawn with replacement, which
    the batch's distinct points approach when K << N). A shard's first affected slice is >= r when none of
    the K points falls in its slices < r: p(r) = (1 - r/(SR))^K, and p(R) is the chance it is untouched.
    E[cost of a shard] = sum_r (p(r) - p(r+1)) C(r); speedup = C(0) / E[cost of a shard].
    """
    slices = len(epochs)
    cost = [sum(epochs[k] * (k + 1) for k in range(r, slices)) for r in range(slices)]
    p = [(1 - r / (shards * slices)) ** points for r in range(slices + 1)]
    expected = sum((p[r] - p[r + 1]) * cost[r] for r in range(slices))
    return math.inf if expected == 0 else cost[0] / expected
