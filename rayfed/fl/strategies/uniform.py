"""Uniform averaging: alpha_i = 1/K over the round's K accepted updates.

The control that separates Fed-AuditGAN's audit from its other change to FedAvg: with small scores
softmax(gamma * S) is nearly 1/K, i.e. it drops FedAvg's size weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rayfed.fl.strategies.base import LocalResult
from rayfed.fl.strategies.weighted import WeightedAverage


@dataclass(frozen=True)
class Uniform(WeightedAverage):
    name = "uniform"
    title = "Uniform"

    def weights(self, updates: Sequence[LocalResult]) -> list[float]:
        return [1.0 / len(updates)] * len(updates)  # alpha_i = 1/K
