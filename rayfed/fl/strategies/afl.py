"""Agnostic Federated Learning (Mohri, Sivek, Suresh, ICML 2019): min_w max_{lambda in the simplex}
sum_k lambda_k F_k(w), the model for the worst mixture of the clients, by gradient descent in w and projected
gradient ascent in lambda. The server keeps lambda over all N clients from round to round (uniform at the start);
each round, over the m clients whose updates it accepted:

    Theta_new = Theta_old + sum_k alpha_k dw_k,    alpha_k = lambda_k / sum_j lambda_j        (descent in w)
    lambda    <- Proj_simplex(lambda + eta v),     v_k = (N / m) F_k, 0 for the clients not in the round

F_k is client k's loss at Theta_old, before local training (as q-FFL's and TERM's); v is the gradient in lambda,
F(Theta_old), estimated without bias when a round samples its clients uniformly (v = F with everyone in it).
The local training of the round stands in for AFL's one gradient step, as q-FedAvg's does for q-FedSGD's. rayfed
reports the last iterate, as for every method here (the paper's bound is for the average of the iterates).
eta = 0 is the uniform average; a large eta hands each round to the clients with the highest losses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rayfed.fl.state import StateDict, apply_weighted_updates
from rayfed.fl.strategies.base import Aggregation, AuditEvidence, LocalResult, Strategy

if TYPE_CHECKING:
    from rayfed.config import Config


def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """The point of the probability simplex nearest to v in Euclidean distance: max(v - theta, 0), theta chosen
    so that it sums to 1 (Duchi, Shalev-Shwartz, Singer, Chandra, ICML 2008, Fig. 1)."""
    u = np.sort(v)[::-1]
    partial_sums = np.cumsum(u)
    ranks = np.arange(1, len(u) + 1)
    rho = int(np.nonzero(u * ranks > partial_sums - 1.0)[0][-1])  # the last rank whose entry stays positive
    theta = (partial_sums[rho] - 1.0) / (rho + 1)
    return np.maximum(v - theta, 0.0)


def ascend_mixture(mixture: np.ndarray, client_ids: Sequence[int], losses: Sequence[float], step: float) -> np.ndarray:
    """lambda <- Proj_simplex(lambda + eta v), v_k = (N / m) F_k for the m clients in `client_ids`, 0 elsewhere."""
    gradient = np.zeros_like(mixture)
    gradient[list(client_ids)] = len(mixture) / len(client_ids) * np.asarray(losses, dtype=np.float64)
    return project_to_simplex(mixture + step * gradient)


@dataclass(frozen=True)
class AgnosticAverage(Strategy):
    name = "afl"
    title = "AFL"
    parameter = "lambda_lr"
    parameter_key = "afl.lambda_lr"
    unfair_hint = (
        "its lambda may move to the clients with the highest loss of the moment and leave the others, so that the "
        "global model swings from one to the next (rounds.parquet's `max_weight`): try a smaller `afl.lambda_lr`"
    )
    num_clients: int = field(default=0, compare=False)
    """N, the clients lambda spans."""

    @classmethod
    def runs(cls, config: Config) -> list[Strategy]:
        return [cls(value, config.data.num_clients) for value in cls.parameter_values(config)]

    def aggregate(
        self,
        state: StateDict,
        updates: Sequence[LocalResult],
        audit: AuditEvidence | None,
        buffers: frozenset[str] = frozenset(),
        carried: list[float] | None = None,
    ) -> Aggregation:
        mixture = np.asarray(self.mixture(carried))
        ids = [u.client_id for u in updates]
        in_round = mixture[ids]
        total = float(in_round.sum())
        # alpha_k = lambda_k / sum_j lambda_j over the round (no move when lambda is 0 on all of its clients)
        alphas = (in_round / total).tolist() if total > 0 else [0.0] * len(ids)
        new = apply_weighted_updates(state, [u.delta for u in updates], alphas)
        mixture = ascend_mixture(mixture, ids, [u.loss for u in updates], self.value)
        return Aggregation(new, alphas, carried=mixture.tolist())

    def mixture(self, carried: list[float] | None) -> list[float]:
        """lambda: what the last round carried, or the uniform start (1/N each) before any round accepted one."""
        return [1.0 / self.num_clients] * self.num_clients if carried is None else list(carried)
