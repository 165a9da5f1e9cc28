"""AuditServer: trains the audit GAN, scores the K hypothetical models, aggregates, evaluates Theta_new."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import ray
import torch

from rayfed.config import AuditConfig
from rayfed.engine.runtime import setup_worker
from rayfed.fl.audit import AuditGan, FoldedEvaluator, PixelSpace, generate_probes, hypothetical_biases, train_fairness_gan
from rayfed.fl.metrics import accuracy
from rayfed.fl.state import NumpyState, aggregate, to_numpy, to_torch, update_problem
from rayfed.fl.strategies import fairness_scores, fedavg_weights, softmax_weights
from rayfed.models import build_classifier
from rayfed.seeds import Stream, stream_seed


@dataclass
class RoundOutcome:
    """What the server decided in one round (per entry of `client_ids`)."""

    client_ids: list[int]
    weights: list[float]
    """alpha_i (0 for a rejected update)."""
    rejected: dict[int, str] = field(default_factory=dict)
    """client -> why its update was not aggregated."""
    bias_base: float | None = None
    biases: list[float | None] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    test_accuracy: float = 0.0


@dataclass
class AuditProbes:
    """Phase 2's probe set P for one round: the pairs (x, x') in classifier space, on the CPU."""

    x: torch.Tensor
    x_prime: torch.Tensor


@ray.remote
class AuditServer:
    """Holds the audit split (never any client's data) and the global test set."""

    def __init__(self, model_name: str, shape: tuple[int, int, int], num_classes: int, audit: AuditConfig,
                 space: PixelSpace, data_ref: list[ray.ObjectRef], seed: int, eval_batch_size: int,
                 threads: int | None):
        self.device = setup_worker(threads or os.cpu_count() or 1)
        audit_x, audit_y, test_x, test_y = (t.to(self.device) for t in ray.get(data_ref[0]))
        self.audit_x, self.audit_y, self.test_x, self.test_y = audit_x, audit_y, test_x, test_y
        self.model = build_classifier(model_name, shape, num_classes).to(self.device)
        self.evaluator = FoldedEvaluator(self.model)
        self.audit_config, self.space, self.seed, self.eval_batch_size = audit, space, seed, eval_batch_size
        self.shape, self.num_classes = shape, num_classes

    @ray.method(num_returns=2)
    def audit(self, round_index: int, global_state: NumpyState,
              gan_state: dict[str, Any] | None = None) -> tuple[AuditProbes, dict[str, Any] | None]:
        """Phase 2: train G (and D) against the frozen Theta_old on the server's audit split and draw the
        probe set P. It needs nothing from the clients, so the engine starts it with their local training.

        Returns the probes (for `aggregate`) and, with warm start, G, D and their optimizers' states (for the
        driver's next round and checkpoint). A pure function of its arguments (a warm-started GAN comes in as
        `gan_state`), so Ray can retry it on a restarted server with the same result.
        """
        a = self.audit_config
        warm = a.warm_start and gan_state is not None
        gan = AuditGan.create(a.latent_dim, self.num_classes, self.shape, a.delta_scale, a.gan_lr, self.device,
                              stream_seed(self.seed, Stream.GAN_INIT, round_index))
        if warm:
            gan.load_state_dict(gan_state)
        self.model.load_state_dict(to_torch(global_state, self.device))
        train_fairness_gan(gan, self.model, self.audit_x, self.audit_y,
                           epochs=a.gan_epochs_warm if warm else a.gan_epochs, lambda1=a.lambda1,
                           lambda2=a.lambda2, batch_size=a.gan_batch_size, space=self.space,
                           seed=stream_seed(self.seed, Stream.GAN_TRAINING, round_index))
        x, x_prime = generate_probes(gan.G, a.n_probes, self.space, stream_seed(self.seed, Stream.PROBES, round_index),
                                     self.device)
        return AuditProbes(x.cpu(), x_prime.cpu()), gan.state_dict() if a.warm_start else None

    @ray.method(num_returns=2)
    def aggregate(self, round_index: int, method: str, gamma: float | None, global_state: NumpyState,
                  update_refs: list[ray.ObjectRef],
                  probes: AuditProbes | None = None) -> tuple[RoundOutcome, NumpyState]:
        """Check the updates, weight them (FedAvg sizes, or softmax(gamma * S) with S scored on this round's
        `probes` from `audit`), apply them, evaluate Theta_new.

        A pure function of its arguments, so that Ray can retry it on a restarted server with the same result.
        """
        state = to_torch(global_state, self.device)
        client_updates = [u for batch in ray.get(update_refs) for u in batch]
        ids = [u.client_id for u in client_updates]
        deltas = [to_torch(u.delta, self.device) for u in client_updates]
        rejected = {cid: why for cid, d in zip(ids, deltas) if (why := update_problem(d, state))}
        kept = [i for i, cid in enumerate(ids) if cid not in rejected]
        outcome = RoundOutcome(ids, [0.0] * len(ids), rejected, biases=[None] * len(ids), scores=[None] * len(ids))
        if method == "fedauditgan" and probes is None:
            raise ValueError("fedauditgan needs this round's probes from AuditServer.audit")
        if kept:
            kept_deltas = [deltas[i] for i in kept]
            if method == "fedauditgan":
                x, x_prime = probes.x.to(self.device), probes.x_prime.to(self.device)
                # Phase 3: B_base for Theta_old, B_i for each Theta_old + dw_i.
                base, biases = hypothetical_biases(self.evaluator, state, kept_deltas, x, x_prime,
                                                   self.audit_config.score_chunk)
                scores = fairness_scores(base, biases)  # S_i = B_base - B_i
                weights = softmax_weights(scores, gamma)  # alpha = softmax(gamma * S)
                outcome.bias_base = base
                for i, b, s in zip(kept, biases, scores):
                    outcome.biases[i], outcome.scores[i] = b, s
            else:
                weights = fedavg_weights([client_updates[i].num_samples for i in kept])  # alpha_i ~ n_i
            for i, w in zip(kept, weights):
                outcome.weights[i] = w
            state = aggregate(state, kept_deltas, weights)  # Theta_new = Theta_old + sum alpha_i dw_i
        self.model.load_state_dict(state)
        outcome.test_accuracy = accuracy(self.model, self.test_x, self.test_y, self.eval_batch_size)
        return outcome, to_numpy(state)

    def pid(self) -> int:
        """The server's process id (tests use it to kill the process)."""
        return os.getpid()
