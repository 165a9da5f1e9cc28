"""q-FedAvg (Li, Sanjabi, Beirami, Smith, "Fair Resource Allocation in Federated Learning", ICLR 2020, Alg. 2):
clients with a higher loss at the global model get more say, q sets how much (q = 0: the uniform average)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rayfed.fl.state import StateDict, apply_weighted_updates
from rayfed.fl.strategies.base import Aggregation, AuditEvidence, LocalResult, Strategy

if TYPE_CHECKING:
    from rayfed.config import Config

LOSS_FLOOR = 1e-12
"""F_k is floored here so that F_k^(q-1) stays finite for q < 1 (a cross-entropy is never exactly 0)."""


def qffl_step(
    state: StateDict,
    updates: Sequence[StateDict],
    losses: Sequence[float],
    q: float,
    lipschitz: float,
    parameters: Sequence[str],
) -> StateDict:
    """w^(t+1) = w^t - (sum_k Delta_k) / (sum_k h_k) over the keys in `parameters`, where, with
    dW_k = L (w^t - w_k) = -L dw_k:
        Delta_k = F_k^q dW_k,    h_k = q F_k^(q-1) ||dW_k||^2 + L F_k^q.
    Returns only the parameters' new values."""
    F = np.maximum(np.asarray(losses, dtype=np.float64), LOSS_FLOOR)
    dW = [{k: -lipschitz * u[k].double() for k in parameters} for u in updates]  # dW_k = L (w^t - w_k)
    squared_norms = [float(sum(d[k].pow(2).sum() for k in parameters)) for d in dW]  # ||dW_k||^2, one sync each
    h = q * F ** (q - 1) * np.asarray(squared_norms) + lipschitz * F**q  # h_k
    total_h = float(h.sum())
    new = {}
    for k in parameters:
        delta_sum = sum(float(Fk**q) * d[k] for Fk, d in zip(F, dW))  # sum_k Delta_k = sum_k F_k^q dW_k
        new[k] = (state[k].double() - delta_sum / total_h).to(state[k].dtype)
    return new


def loss_shares(losses: Sequence[float], q: float) -> list[float]:
    """F_k^q / sum_j F_j^q: client k's share of sum_k Delta_k (the coefficient of its dw_k, normalised)."""
    weights = np.maximum(np.asarray(losses, dtype=np.float64), LOSS_FLOOR) ** q
    return (weights / weights.sum()).tolist()


@dataclass(frozen=True)
class QFedAvg(Strategy):
    name = "qffl"
    title = "q-FFL"
    adaptive = True
    parameter = "q"
    parameter_key = "qffl.q"
    lipschitz: float = field(default=1.0, compare=False)
    """L in dW_k = L (w^t - w_k): qffl.lipschitz, or 1 / fl.lr."""

    @classmethod
    def runs(cls, config: Config) -> list[Strategy]:
        lipschitz = config.qffl.lipschitz if config.qffl.lipschitz is not None else 1.0 / config.fl.lr
        return [cls(run.value, lipschitz) for run in super().runs(config)]

    def aggregate(
        self,
        state: StateDict,
        updates: Sequence[LocalResult],
        audit: AuditEvidence | None,
        buffers: frozenset[str] = frozenset(),
    ) -> Aggregation:
        losses = [u.loss for u in updates]
        shares = loss_shares(losses, self.value)
        # Buffers are no parameters of the loss: floating ones (BatchNorm statistics) are averaged as FedAvg
        # averages them, a convex combination of the clients', here with the q-FFL shares (uniform at q = 0);
        # integer ones (num_batches_tracked) as in every strategy (rounded weighted sum).
        new = apply_weighted_updates(state, [u.delta for u in updates], shares)
        parameters = [k for k, v in state.items() if k not in buffers and v.is_floating_point()]
        new.update(qffl_step(state, [u.delta for u in updates], losses, self.value, self.lipschitz, parameters))
        return Aggregation(new, shares)
