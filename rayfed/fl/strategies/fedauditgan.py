"""Fed-AuditGAN's Phase 3 scores and Phase 4 weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rayfed.fl.gan_audit import hypothetical_biases
from rayfed.fl.state import StateDict, apply_weighted_updates
from rayfed.fl.strategies.base import Aggregation, AuditEvidence, LocalResult, Strategy

if TYPE_CHECKING:
    from rayfed.config import Config


def fairness_scores(bias_base: float, client_biases: Sequence[float]) -> list[float]:
    """S_i = B_base - B_i: positive when applying client i's update alone reduces the bias."""
    return [bias_base - b for b in client_biases]


def softmax_weights(scores: Sequence[float], gamma: float) -> list[float]:
    """alpha_i = exp(gamma * S_i) / sum_j exp(gamma * S_j), computed stably (max subtracted, float64),
    so the weights stay finite for any finite gamma * S."""
    scaled = gamma * np.asarray(scores, dtype=np.float64)
    exp = np.exp(scaled - scaled.max())
    return (exp / exp.sum()).tolist()


def standardised(scores: Sequence[float]) -> list[float]:
    """S_i / std_j(S_j) (population std over the round's clients); unchanged when every S_i is equal."""
    s = np.asarray(scores, dtype=np.float64)
    spread = s.std()
    return (s / spread).tolist() if spread > 0 else s.tolist()


@dataclass(frozen=True)
class FedAuditGan(Strategy):
    name = "fedauditgan"
    title = "Fed-AuditGAN"
    needs_audit = True
    parameter = "gamma"
    parameter_key = "audit.gamma"
    normalize: bool = field(default=False, compare=False)
    """audit.normalize_scores: softmax(gamma * S / std(S)) instead of softmax(gamma * S)."""
    score: str = field(default="logits", compare=False)
    """audit.score: what B counts over the probe pairs, logit distances or changed decisions (`pair_bias`)."""

    @classmethod
    def runs(cls, config: Config) -> list[Strategy]:
        audit = config.audit
        return [cls(run.value, audit.normalize_scores, audit.score) for run in super().runs(config)]

    def aggregate(
        self,
        state: StateDict,
        updates: Sequence[LocalResult],
        audit: AuditEvidence | None,
        buffers: frozenset[str] = frozenset(),
        carried: list[float] | None = None,
    ) -> Aggregation:
        if audit is None:
            raise ValueError("fedauditgan needs this round's audit (probes and scoring template)")
        deltas = [u.delta for u in updates]
        # Phase 3: B_base for Theta_old, B_i for each Theta_old + dw_i.
        base, biases = hypothetical_biases(
            audit.evaluator, state, deltas, audit.x, audit.x_prime, audit.chunk, self.score
        )
        scores = fairness_scores(base, biases)  # S_i = B_base - B_i
        alphas = softmax_weights(standardised(scores) if self.normalize else scores, self.value)  # softmax(gamma S)
        # Phase 4: Theta_new = Theta_old + sum alpha_i dw_i
        return Aggregation(apply_weighted_updates(state, deltas, alphas), alphas, base, biases, scores)
