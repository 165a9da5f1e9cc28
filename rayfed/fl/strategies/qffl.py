"""q-FedAvg (Li, Sanjabi, Beirami, Smith, "Fair Resource Allocation in Federated Learning", ICLR 2020, Alg. 2):
clients with a higher loss at the global model get more say, q sets how much (q = 0: the uniform average)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rayfed.fl.state import StateDict, apply_weighted_updates
from rayfed.fl.strategies.base import Aggregation, AuditEvidence, LocalResult, Strategy
from rayfed.training import steps_per_epoch

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


def heavy_ball_displacement(steps: int, momentum: float) -> float:
    """m(tau) = sum_{t=1..tau} v_t with v_1 = 1, v_t = beta v_(t-1) + 1: how far tau steps of torch's SGD with
    momentum beta (a fresh optimizer, learning rate 1) move the weights against a gradient g that stays the
    same, in units of g (tau at beta = 0)."""
    velocity = displacement = 0.0
    for _ in range(steps):
        velocity = momentum * velocity + 1.0  # v_t
        displacement += velocity
    return displacement


@dataclass(frozen=True)
class GradientMatchingLipschitz:
    """`qffl.lipschitz: auto`: L = 1 / (lr * mean_k m(tau_k)) over a round's clients, tau_k = epochs x client k's
    steps per epoch. It is the L at which dW_k = L (w^t - w_k) equals client k's gradient when that gradient
    holds through its local steps (on average over the round's clients): q-FedSGD's exact L = 1/lr, which the
    paper keeps for q-FedAvg, extended to tau local steps of momentum SGD (tau = 1 gives 1/lr back)."""

    lr: float
    momentum: float
    epochs: int
    batch_size: int

    @classmethod
    def of(cls, config: Config) -> GradientMatchingLipschitz:
        """The rule for the local training `config` sets (fl.lr, fl.momentum, fl.local_epochs, data.batch_size)."""
        return cls(config.fl.lr, config.fl.momentum, config.fl.local_epochs, config.data.batch_size)

    def __call__(self, num_samples: Sequence[int]) -> float:
        """L for a round whose clients hold `num_samples` training samples each."""
        displacements = [
            heavy_ball_displacement(self.epochs * steps_per_epoch(n, self.batch_size), self.momentum)
            for n in num_samples
        ]
        return 1.0 / (self.lr * float(np.mean(displacements)))


def lipschitz_setting(config: Config) -> float | GradientMatchingLipschitz:
    """q-FedAvg's L as `qffl.lipschitz` sets it: a number, null = 1 / fl.lr (the paper's), or `auto`."""
    if config.qffl.lipschitz == "auto":
        return GradientMatchingLipschitz.of(config)
    return config.qffl.lipschitz if config.qffl.lipschitz is not None else 1.0 / config.fl.lr


def lipschitz_sentence(config: Config, num_samples: Sequence[int]) -> str | None:
    """The L q-FFL runs with, for summary.md's notes (None without a q-FFL run), beside what `auto` gives over
    all of the federation's clients (`num_samples`: their training samples) and the paper's 1/fl.lr."""
    if "qffl" not in config.fl.methods:
        return None
    fl = config.fl
    auto = GradientMatchingLipschitz.of(config)
    steps = sorted({fl.local_epochs * steps_per_epoch(n, config.data.batch_size) for n in num_samples})
    step_range = f"{steps[0]}" if steps[0] == steps[-1] else f"{steps[0]}-{steps[-1]}"
    meaning = (
        f"the L at which L (w^t - w_k) is client k's gradient when it holds through its local steps "
        f"({step_range} steps of SGD at momentum {fl.momentum:g} here; the paper's 1/fl.lr = "
        f"{1 / fl.lr:.4g} is that L for one step of plain SGD)"
    )
    setting = lipschitz_setting(config)
    if setting == auto:
        sampled = fl.clients_per_round is not None or fl.client_fraction is not None
        where = ", over each round's sampled clients; this is its value over all of them" if sampled else ""
        return f"q-FFL's L = {auto(num_samples):.4g} (`qffl.lipschitz: auto`{where}: {meaning})."
    return f"q-FFL's L = {setting:.4g} (`qffl.lipschitz`); `auto` would take {auto(num_samples):.4g}, {meaning}."


def loss_shares(losses: Sequence[float], q: float) -> list[float]:
    """F_k^q / sum_j F_j^q: client k's share of sum_k Delta_k (the coefficient of its dw_k, normalised)."""
    weights = np.maximum(np.asarray(losses, dtype=np.float64), LOSS_FLOOR) ** q
    return (weights / weights.sum()).tolist()


@dataclass(frozen=True)
class QFedAvg(Strategy):
    name = "qffl"
    title = "q-FFL"
    parameter = "q"
    parameter_key = "qffl.q"
    unfair_hint = (
        "its step may be too short for these rounds (too large an L): try a smaller `qffl.lipschitz` (README, "
        '"q-FFL\'s step")'
    )
    lipschitz: float | GradientMatchingLipschitz = field(default=1.0, compare=False)
    """L in dW_k = L (w^t - w_k), or the rule that sets it each round (`lipschitz_setting`)."""

    @classmethod
    def runs(cls, config: Config) -> list[Strategy]:
        return [cls(run.value, lipschitz_setting(config)) for run in super().runs(config)]

    def aggregate(
        self,
        state: StateDict,
        updates: Sequence[LocalResult],
        audit: AuditEvidence | None,
        buffers: frozenset[str] = frozenset(),
        carried: list[float] | None = None,
    ) -> Aggregation:
        losses = [u.loss for u in updates]
        shares = loss_shares(losses, self.value)
        lipschitz = self.lipschitz
        if callable(lipschitz):  # qffl.lipschitz: auto, over this round's clients
            lipschitz = lipschitz([u.num_samples for u in updates])
        # Buffers are no parameters of the loss: floating ones (BatchNorm statistics) are averaged as FedAvg
        # averages them, a convex combination of the clients', here with the q-FFL shares (uniform at q = 0);
        # integer ones (num_batches_tracked) as in every strategy (rounded weighted sum).
        new = apply_weighted_updates(state, [u.delta for u in updates], shares)
        parameters = [k for k, v in state.items() if k not in buffers and v.is_floating_point()]
        new.update(qffl_step(state, [u.delta for u in updates], losses, self.value, lipschitz, parameters))
        return Aggregation(new, shares)
