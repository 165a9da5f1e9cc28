"""One federated round as plain functions. The actors in `rayfed.engine` wrap them thinly (moving state through
the object store); the round benchmark and its equality test call them directly.

    Phase 1  client_update        dw_i = w_after - w_before, and F_i(Theta_old)
    Phase 2  train_audit + draw_probes   G, D against the frozen Theta_old; the probe set P
    Phase 3-4 score_and_aggregate  the strategy's weights (S_i = B_base - B_i, alpha = softmax(gamma S), ...)
    then     evaluate_clients      each client's accuracy on its training images, its held-out test subset (and
                                   its validation subset)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rayfed.config import AuditConfig
from rayfed.fl.gan_audit import AuditGan, FoldedEvaluator, PixelSpace, generate_probes, train_fairness_gan
from rayfed.fl.local import local_update
from rayfed.fl.metrics import accuracy, predictions
from rayfed.fl.setup import ClientData
from rayfed.fl.state import StateDict, update_problem
from rayfed.fl.strategies import AuditEvidence, LocalResult, Strategy
from rayfed.seeds import Stream, stream_seed


@dataclass
class LocalTraining:
    """Phase 1's hyperparameters."""

    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    eval_batch_size: int


@torch.no_grad()
def training_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """F(Theta): mean cross-entropy of the model (eval mode, no augmentation) on (x, y), summed in fp64 on x's
    device (one sync at the end, not one per batch)."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for s in range(0, len(y), batch_size):
        total += F.cross_entropy(model(x[s : s + batch_size]), y[s : s + batch_size], reduction="sum")
    return float(total) / max(1, len(y))


def client_update(
    model: nn.Module,
    client: ClientData,
    global_state: StateDict,
    training: LocalTraining,
    *,
    run_seed: int,
    round_index: int,
    augment_pad: torch.Tensor | None,
) -> LocalResult:
    """Phase 1 for one client: load Theta_old into `model`, measure F_i(Theta_old), train, return dw_i.

    Minibatch order, augmentation and dropout come from the CLIENT_TRAINING stream of (round, client)."""
    model.load_state_dict(global_state)
    loss = training_loss(model, client.x, client.y, training.eval_batch_size)  # before local training
    delta = local_update(
        model,
        client.x,
        client.y,
        epochs=training.epochs,
        lr=training.lr,
        momentum=training.momentum,
        weight_decay=training.weight_decay,
        batch_size=training.batch_size,
        seed=stream_seed(run_seed, Stream.CLIENT_TRAINING, round_index, client.client_id),
        augment_pad=augment_pad,
    )
    return LocalResult(client.client_id, len(client.y), delta, loss)


@dataclass
class Probes:
    """Phase 2's probe set P: the pairs (x, x') in classifier space."""

    x: torch.Tensor
    x_prime: torch.Tensor


def train_audit(
    classifier: nn.Module,
    global_state: StateDict,
    audit_x: torch.Tensor,
    audit_y: torch.Tensor,
    audit: AuditConfig,
    space: PixelSpace,
    num_classes: int,
    shape: tuple[int, int, int],
    *,
    run_seed: int,
    round_index: int,
    gan_state: dict[str, Any] | None = None,
    gan: AuditGan | None = None,
) -> AuditGan:
    """Phase 2: G and D trained against the frozen Theta_old on the server's audit split: a fresh pair each
    round (the specification), or, with audit.warm_start, the previous round's `gan_state` continued for
    audit.gan_epochs_warm epochs. `gan`, the audit server's pair from an earlier round, is re-initialised in
    place rather than built anew (same weights: a compiled GAN step keeps its graphs); it is returned trained."""
    device = audit_x.device
    warm = audit.warm_start and gan_state is not None
    seed = stream_seed(run_seed, Stream.GAN_INIT, round_index)
    if gan is None:
        gan = AuditGan.create(audit.latent_dim, num_classes, shape, audit.delta_scale, audit.gan_lr, device, seed)
    elif not warm:
        gan.restart(seed)
    if warm:
        gan.load_state_dict(gan_state)
    classifier.load_state_dict(global_state)
    train_fairness_gan(
        gan,
        classifier,
        audit_x,
        audit_y,
        epochs=audit.gan_epochs_warm if warm else audit.gan_epochs,
        lambda1=audit.lambda1,
        lambda2=audit.lambda2,
        batch_size=audit.gan_batch_size,
        space=space,
        seed=stream_seed(run_seed, Stream.GAN_TRAINING, round_index),
        compiled=audit.gan_step == "compiled",
    )
    return gan


def draw_probes(gan: AuditGan, n_probes: int, space: PixelSpace, *, run_seed: int, round_index: int) -> Probes:
    """The round's probe set P from the trained G (PROBES stream of the round)."""
    device = next(gan.G.parameters()).device
    x, x_prime = generate_probes(gan.G, n_probes, space, stream_seed(run_seed, Stream.PROBES, round_index), device)
    return Probes(x, x_prime)


@dataclass
class RoundOutcome:
    """What the server decided in one round (lists per entry of `client_ids`)."""

    client_ids: list[int]
    state: StateDict
    """Theta_new (Theta_old when no update was accepted)."""
    weights: list[float]
    """The strategy's weight of each update (0 for a rejected one)."""
    losses: list[float]
    """F_i(Theta_old) as the client reported it."""
    rejected: dict[int, str] = field(default_factory=dict)
    """client -> why its update was not aggregated."""
    bias_base: float | None = None
    biases: list[float | None] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    test_accuracy: float | None = None
    """Theta_new's accuracy on the global test set (percent), filled by whoever evaluates it."""
    validation_accuracy: float | None = None
    """Theta_new's accuracy on the validation split (percent), when the run has one."""
    carried: list[float] | None = None
    """What the strategy carries into the next round (`Aggregation.carried`; the round's own when it accepted
    no update)."""


def result_problem(result: LocalResult, reference: StateDict) -> str | None:
    """Why a client's result cannot be aggregated (a bad update, or a NaN/Inf loss), or None if it can."""
    if not math.isfinite(result.loss):
        return "loss is NaN or Inf"
    return update_problem(result.delta, reference)


def score_and_aggregate(
    strategy: Strategy,
    global_state: StateDict,
    results: Sequence[LocalResult],
    audit: AuditEvidence | None,
    buffers: frozenset[str] = frozenset(),
    carried: list[float] | None = None,
) -> RoundOutcome:
    """Phases 3-4: reject unusable results, let the strategy weigh the rest, apply them to Theta_old
    (`buffers`: the model's buffer keys, for strategies that treat them apart from the parameters; `carried`:
    what the strategy carried out of the previous round)."""
    ids = [r.client_id for r in results]
    rejected = {r.client_id: why for r in results if (why := result_problem(r, global_state))}
    kept = [i for i, cid in enumerate(ids) if cid not in rejected]
    outcome = RoundOutcome(
        ids,
        global_state,
        [0.0] * len(ids),
        [r.loss for r in results],
        rejected,
        biases=[None] * len(ids),
        scores=[None] * len(ids),
        carried=carried,
    )
    if kept:
        decision = strategy.aggregate(global_state, [results[i] for i in kept], audit, buffers, carried)
        outcome.state, outcome.bias_base, outcome.carried = decision.state, decision.bias_base, decision.carried
        for j, i in enumerate(kept):
            outcome.weights[i] = decision.weights[j]
            if decision.scores is not None:
                outcome.biases[i], outcome.scores[i] = decision.biases[j], decision.scores[j]
    return outcome


def audit_evidence(evaluator: FoldedEvaluator, probes: Probes, device: torch.device, chunk: int) -> AuditEvidence:
    """The probes on the scoring device, with the scoring template."""
    return AuditEvidence(evaluator, probes.x.to(device), probes.x_prime.to(device), chunk)


@dataclass
class SharedImages:
    """The rows `rows` (sorted) of a held-out pool (the test set, the validation split) that several clients'
    subsets use (they overlap): classified once per evaluation, each client's figure read off its rows."""

    x: torch.Tensor
    y: torch.Tensor
    rows: np.ndarray

    @classmethod
    def of(
        cls, pool: tuple[torch.Tensor, torch.Tensor], subsets: Iterable[np.ndarray], device: torch.device
    ) -> SharedImages:
        """The rows of `pool` (images, labels) in any of `subsets`, on `device`."""
        rows = np.unique(np.concatenate([np.zeros(0, dtype=np.int64), *subsets]))
        return cls(pool[0][rows].to(device), pool[1][rows].to(device), rows)

    def client_accuracies(self, model: nn.Module, subsets: Iterable[np.ndarray], batch_size: int) -> list[float]:
        """Percent of each subset (indices into the pool) that `model` classifies right."""
        correct = (predictions(model, self.x, batch_size) == self.y).cpu().numpy()
        return [100.0 * float(correct[np.searchsorted(self.rows, subset)].mean()) for subset in subsets]


@dataclass
class ClientEvaluation:
    client_id: int
    train_accuracy: float
    """Percent of its own training images (through the training transform: the notebook's figure)."""
    test_accuracy: float
    """Percent of its held-out test subset (the client's label mix, no augmentation)."""
    validation_accuracy: float | None = None
    """Percent of its validation subset (the client's label mix, no augmentation); None without one."""


def evaluate_clients(
    model: nn.Module,
    global_state: StateDict,
    clients: Sequence[ClientData],
    test: SharedImages,
    validation: SharedImages | None = None,
    *,
    eval_batch_size: int,
    augment_pad: torch.Tensor | None,
    run_seed: int,
    round_index: int,
) -> list[ClientEvaluation]:
    """Each client's accuracies under Theta: on its training images, its test subset and (with `validation`,
    the validation rows its clients use) its validation subset."""
    model.load_state_dict(global_state)
    tests = test.client_accuracies(model, [c.test_index for c in clients], eval_batch_size)
    validations: list[float | None] = (
        [None] * len(clients)
        if validation is None
        else validation.client_accuracies(model, [c.validation_index for c in clients], eval_batch_size)
    )
    return [
        ClientEvaluation(
            c.client_id,
            accuracy(
                model,
                c.x,
                c.y,
                eval_batch_size,
                augment_pad,
                stream_seed(run_seed, Stream.CLIENT_EVALUATION, round_index, c.client_id),
            ),
            tested,
            validated,
        )
        for c, tested, validated in zip(clients, tests, validations)
    ]
