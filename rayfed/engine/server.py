"""AuditServer: trains the audit GAN, scores the K hypothetical models, aggregates, evaluates Theta_new.

A thin actor around `rayfed.fl.round`: its methods are pure functions of their arguments, so Ray can retry
them on a restarted server with the same result."""

from __future__ import annotations

import os
from typing import Any

import ray
import torch

from rayfed.config import AuditConfig, MetricsConfig
from rayfed.engine.runtime import setup_worker
from rayfed.fl.gan_audit import AuditGan, FoldedEvaluator, PixelSpace
from rayfed.fl.held_out_audit import HeldOutAudit, held_out_audit, matched_epochs
from rayfed.fl.metrics import accuracy
from rayfed.fl.round import Probes, RoundOutcome, audit_evidence, draw_probes, score_and_aggregate, train_audit
from rayfed.fl.state import NumpyState, to_numpy, to_torch
from rayfed.fl.strategies import Strategy
from rayfed.models import build_classifier
from rayfed.training import on_device


def to_cpu(value: Any) -> Any:
    """Every tensor in a nested dict/list moved to the CPU: what the server returns must load on a CPU-only
    driver (a cluster's head node has no GPU)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


@ray.remote
class AuditServer:
    """Holds the audit split (never any client's data), the global test set and the validation split, if any:
    an audit and validation split per federation the run's seeds train on. One of `servers` audit servers:
    without `threads`, it takes its share of the node's cores."""

    def __init__(
        self,
        model_name: str,
        shape: tuple[int, int, int],
        num_classes: int,
        audit: AuditConfig,
        space: PixelSpace,
        test_ref: list[ray.ObjectRef],
        split_refs: list[ray.ObjectRef],
        eval_batch_size: int,
        threads: int | None,
        servers: int = 1,
    ):
        """test_ref: [the test set's (images, labels)]; split_refs[k]: federation k's (audit images, audit labels,
        validation split or None)."""
        self.device = setup_worker(threads or max(1, (os.cpu_count() or 1) // servers))
        self.test_x, self.test_y = (t.to(self.device) for t in ray.get(test_ref[0]))
        self.audit_splits: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.validation: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for audit_x, audit_y, validation in ray.get(split_refs):
            self.audit_splits.append((audit_x.to(self.device), audit_y.to(self.device)))
            self.validation.append(None if validation is None else tuple(t.to(self.device) for t in validation))
        self.model = on_device(build_classifier(model_name, shape, num_classes), self.device)
        self.evaluator = FoldedEvaluator(self.model)
        self.buffers = frozenset(name for name, _ in self.model.named_buffers())
        self.audit_config, self.space, self.eval_batch_size = audit, space, eval_batch_size
        self.shape, self.num_classes = shape, num_classes
        self.gan: AuditGan | None = None  # built at the first audit, re-initialised in place after

    @ray.method(num_returns=2)
    def audit(
        self,
        round_index: int,
        run_seed: int,
        global_state: NumpyState,
        gan_state: dict[str, Any] | None = None,
        federation: int = 0,
    ) -> tuple[Probes, dict[str, Any] | None]:
        """Phase 2: train G (and D) on federation `federation`'s audit split against the frozen Theta_old and draw
        the probe set P. It needs nothing from the clients, so the engine starts it with their local training.

        Returns the probes (for `score_and_aggregate`) and, with warm start, G, D and their optimizers' states
        (for the driver's next round and checkpoint), both on the CPU."""
        a = self.audit_config
        gan = train_audit(
            self.model,
            to_torch(global_state, self.device),
            *self.audit_splits[federation],
            a,
            self.space,
            self.num_classes,
            self.shape,
            run_seed=run_seed,
            round_index=round_index,
            gan_state=gan_state,
            gan=self.gan,
        )
        self.gan = gan
        probes = draw_probes(gan, a.n_probes, self.space, run_seed=run_seed, round_index=round_index)
        return Probes(probes.x.cpu(), probes.x_prime.cpu()), to_cpu(gan.state_dict()) if a.warm_start else None

    @ray.method(num_returns=2)
    def score_and_aggregate(
        self,
        strategy: Strategy,
        global_state: NumpyState,
        update_refs: list[ray.ObjectRef],
        probes: Probes | None = None,
        federation: int = 0,
        carried: list[float] | None = None,
    ) -> tuple[RoundOutcome, NumpyState]:
        """Check the updates, weight them by `strategy` (with this round's `probes` from `audit` if it needs
        them, and what it `carried` out of the previous round), apply them, evaluate Theta_new on the test set
        (and federation `federation`'s validation split). Returns the outcome (with those accuracies; its
        `state` emptied, as Theta_new travels separately as the second result)."""
        state = to_torch(global_state, self.device)
        results = [u for batch in ray.get(update_refs) for u in batch]
        for r in results:
            r.delta = to_torch(r.delta, self.device)
        if strategy.needs_audit and probes is None:
            raise ValueError(f"{strategy.name} needs this round's probes from AuditServer.audit")
        evidence = (
            audit_evidence(self.evaluator, probes, self.device, self.audit_config.score_chunk)
            if strategy.needs_audit
            else None
        )
        outcome = score_and_aggregate(strategy, state, results, evidence, self.buffers, carried)
        self.model.load_state_dict(outcome.state)
        outcome.test_accuracy = accuracy(self.model, self.test_x, self.test_y, self.eval_batch_size)
        if self.validation[federation] is not None:
            outcome.validation_accuracy = accuracy(self.model, *self.validation[federation], self.eval_batch_size)
        new_state = to_numpy(outcome.state)
        outcome.state = {}
        return outcome, new_state

    def held_out_audit(
        self, run_seed: int, state: NumpyState, metrics: MetricsConfig, federation: int = 0
    ) -> tuple[HeldOutAudit, HeldOutAudit | None]:
        """Audit a final model with the seed's auditors (`held_out_audit`): on the held-out test split, and on
        federation `federation`'s validation split when the run has one (else None), for at least as many GAN
        steps as on the test split. A pure
        function of its arguments, so a restarted server gives the same result. The server's round GAN, when it
        has one, is re-initialised for each."""
        weights = to_torch(state, self.device)
        splits = {"test": (self.test_x, self.test_y), "validation": self.validation[federation]}
        audits = {
            split: held_out_audit(
                self.model,
                weights,
                *images,
                self.audit_config,
                self.space,
                self.num_classes,
                epochs=matched_epochs(metrics.audit_epochs, len(self.test_y), len(images[1]), metrics.audit_batch_size),
                batch_size=metrics.audit_batch_size,
                run_seed=run_seed,
                split=split,
                gan=self.gan,
            )
            for split, images in splits.items()
            if images is not None
        }
        return audits["test"], audits.get("validation")

    def pid(self) -> int:
        """The server's process id (tests use it to kill the process)."""
        return os.getpid()
