"""Client-level TERM (Li, Beirami, Sanjabi, Smith, "Tilted Empirical Risk Minimization", ICLR 2021, fair federated
learning): minimise the tilted risk (1/t) log(1/N sum_k exp(t F_k)), whose gradient weighs client k by
exp(t F_k) / sum_j exp(t F_j). Each round: alpha_k = softmax(t F_k) over the round's accepted clients, F_k their
loss at the global model before local training (as q-FFL's), Theta_new = Theta_old + sum_k alpha_k dw_k.
t = 0 is the uniform average; t -> infinity gives the worst client all the weight (the minimax of AFL).

It is Fed-AuditGAN's aggregation with the client's loss in place of its audit score S_k: beside Fed-AuditGAN it
asks whether the GAN audit weighs clients better than their losses do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rayfed.fl.strategies.base import LocalResult
from rayfed.fl.strategies.fedauditgan import softmax_weights
from rayfed.fl.strategies.weighted import WeightedAverage


@dataclass(frozen=True)
class TiltedAverage(WeightedAverage):
    name = "term"
    title = "TERM"
    parameter = "tilt"
    parameter_key = "term.tilt"
    unfair_hint = (
        "its tilt may hand each round to the clients with the highest loss, so that the global model swings from "
        "one to the next (rounds.parquet's `max_weight`): try a smaller `term.tilt`"
    )

    def weights(self, updates: Sequence[LocalResult]) -> list[float]:
        return softmax_weights([u.loss for u in updates], self.value)  # alpha_k = exp(t F_k) / sum_j exp(t F_j)
