"""Strategies that aggregate by a weighted average of the updates: Theta_new = Theta_old + sum_i alpha_i dw_i."""

from __future__ import annotations

from collections.abc import Sequence

from rayfed.fl.state import StateDict, apply_weighted_updates
from rayfed.fl.strategies.base import Aggregation, AuditEvidence, LocalResult, Strategy


class WeightedAverage(Strategy):
    """A strategy whose only decision is alpha; subclasses implement `weights`."""

    def weights(self, updates: Sequence[LocalResult]) -> list[float]:
        """alpha_i for each update (summing to 1)."""
        raise NotImplementedError

    def aggregate(
        self,
        state: StateDict,
        updates: Sequence[LocalResult],
        audit: AuditEvidence | None,
        buffers: frozenset[str] = frozenset(),
        carried: list[float] | None = None,
    ) -> Aggregation:
        alphas = self.weights(updates)
        return Aggregation(apply_weighted_updates(state, [u.delta for u in updates], alphas), alphas)
