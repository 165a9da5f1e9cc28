"""FederatedEngine: the client actors and the audit servers of a run, and one round on them.

A round is started (local updates submitted, with the server's GAN audit beside them) and then finished
(receipts read, updates scored and aggregated on the server, everyone evaluated), so the driver can start the
rounds of several method runs and seeds before it waits for the first: Ray then overlaps them."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError

from rayfed.config import Config
from rayfed.engine.client import ClientActor, ClientSettings
from rayfed.engine.runtime import actor_shares, cluster_cpus, cluster_gpus
from rayfed.engine.server import AuditServer
from rayfed.errors import ActorsLost, RunStalled
from rayfed.fl.metrics import fairness_summary
from rayfed.fl.round import LocalTraining, RoundOutcome
from rayfed.fl.rows import AuditRow, ClientRow, RoundRow, as_dict, client_accuracy_column, validation_figures
from rayfed.fl.setup import Federation, select_clients
from rayfed.fl.strategies import Strategy, seeded_runs

log = logging.getLogger("rayfed")


@dataclass
class RoundResult:
    state_ref: ray.ObjectRef
    """Theta_new, in the object store."""
    round_row: dict[str, Any]
    client_rows: list[dict[str, Any]]
    gan_state: dict[str, Any] | None
    """The warm-started G, D and optimizers after this round (None without warm start)."""
    carried: list[float] | None
    """What the strategy carries into the next round (AFL's lambda; None for the others)."""


@dataclass
class PendingRound:
    """A round whose local updates (and audit) are submitted but not yet collected."""

    round_index: int
    run: Strategy
    seed: int
    state_ref: ray.ObjectRef
    server: int
    """The audit server that audits and aggregates this run."""
    started: float
    by_actor: dict[int, list[int]]
    """actor -> the selected clients it trains."""
    trains: dict[int, tuple[ray.ObjectRef, ray.ObjectRef]]
    """actor -> (receipts, updates) refs."""
    probes_ref: ray.ObjectRef | None
    gan_ref: ray.ObjectRef | None
    carried: list[float] | None
    """What the strategy carried out of the previous round."""


def weight_figures(weights: list[float], scores: list[float | None]) -> dict[str, float | None]:
    """effective_clients = 1 / sum alpha_i^2, max_weight, and score_spread = std of S over scored clients."""
    alphas = np.asarray([w for w in weights if w > 0], dtype=np.float64)
    scored = np.asarray([s for s in scores if s is not None], dtype=np.float64)
    return {
        "effective_clients": float(1.0 / np.sum(alphas**2)) if len(alphas) else None,
        "max_weight": float(alphas.max()) if len(alphas) else None,
        "score_spread": float(scored.std()) if len(scored) else None,
    }


STALL_POLL_S = 5.0
"""How often `wait_for` looks whether anything finished: the stall timeout's precision."""


class FederatedEngine:
    """Starts the client actors and the audit servers, and runs rounds on them."""

    def __init__(self, config: Config, federations: Federation | Mapping[int, Federation]):
        """federations: the one federation every seed trains on, or each run seed's (`build_federations`)."""
        self.config = config
        if isinstance(federations, Federation):
            federations = dict.fromkeys(config.seed_list, federations)
        self.federations: list[Federation] = list({id(f): f for f in federations.values()}.values())
        """The distinct federations; the actors hold each one's data, index k in their calls."""
        index = {id(f): k for k, f in enumerate(self.federations)}
        self.federation_index = {seed: index[id(f)] for seed, f in federations.items()}
        """run seed -> its federation's index (a seed outside the config trains on the first)."""
        self.last_progress = time.monotonic()
        """When a step the engine waits on last finished (or work was last submitted): the stall watchdog's clock."""
        first = self.federations[0]
        if any(f.data is not first.data for f in self.federations):
            raise ValueError("the federations must share one dataset (build_federations loads it once)")
        r, fl, d = config.resources, config.fl, first.data
        ids = list(range(config.data.num_clients))
        per_actor = r.actor_capacity(len(ids), cluster_cpus(), cluster_gpus())
        self.groups = [ids[i : i + per_actor] for i in range(0, len(ids), per_actor)]
        self.actor_of = {cid: a for a, group in enumerate(self.groups) for cid in group}
        seeded = seeded_runs(config)
        audited = [key for key in seeded if key[0].needs_audit]
        num_servers = r.server_count(len(audited), cluster_cpus(), cluster_gpus())
        # Each seeded run's home server, dealt round-robin with the audited runs first: their GANs spread evenly.
        dealt = audited + [key for key in seeded if not key[0].needs_audit]
        self.server_of = {(run.file_label, seed): i % num_servers for i, (run, seed) in enumerate(dealt)}
        num_actors = len(self.groups) + num_servers
        cpus, gpus = actor_shares(r.cpus_per_client, r.gpus_per_client, num_actors, "client")  # servers among them
        training = LocalTraining(
            fl.local_epochs, fl.lr, fl.momentum, fl.weight_decay, config.data.batch_size, config.data.eval_batch_size
        )
        settings = ClientSettings(
            config.model.name, d.shape, d.num_classes, training, first.augment_pad, r.torch_threads
        )
        retries = fl.max_retries
        task_retries = retries if fl.on_client_failure == "retry" else 0
        # Each client's data enters the object store once; the engine keeps the refs so restarted actors find them.
        self.client_refs = [[ray.put(c) for c in f.clients] for f in self.federations]
        self.test_ref = ray.put((d.test_x, d.test_y))
        validations = [f.validation for f in self.federations]
        self.validation_refs = [None if v is None else ray.put(v) for v in validations]
        self.actors = [
            ClientActor.options(
                num_cpus=cpus, num_gpus=gpus, max_restarts=retries, max_task_retries=task_retries
            ).remote(
                settings,
                [[refs[cid] for cid in group] for refs in self.client_refs],
                [self.test_ref],
                self.validation_refs,
            )
            for group in self.groups
        ]
        self.split_refs = [
            ray.put((d.train_x[f.split.audit], d.train_y[f.split.audit], v))
            for f, v in zip(self.federations, validations)
        ]
        self.servers = [
            AuditServer.options(
                num_cpus=cpus if r.server_cpus == "auto" else r.server_cpus,
                num_gpus=gpus if r.server_gpus == "auto" else r.server_gpus,
                max_restarts=retries,
                max_task_retries=retries,
            ).remote(
                config.model.name,
                d.shape,
                d.num_classes,
                config.audit,
                first.space,
                [self.test_ref],
                self.split_refs,
                config.data.eval_batch_size,
                r.server_threads,
                num_servers,
            )
            for _ in range(num_servers)
        ]
        log.info(
            "%d client actors (%.4g CPU, %.4g GPU each) + %d audit server(s)", len(self.actors), cpus, gpus, num_servers
        )

    def start_round(
        self,
        round_index: int,
        run: Strategy,
        seed: int,
        state_ref: ray.ObjectRef,
        gan_state: dict[str, Any] | None = None,
        carried: list[float] | None = None,
    ) -> PendingRound:
        """Submit Phase 1 on the selected clients' actors and, for an audited method, Phase 2 on the run's audit
        server (it needs only Theta_old, so the server trains the audit GAN while the clients train). `gan_state`
        and `carried`: what the previous round's result left (`RoundResult`), None in the first round."""
        config = self.config
        selected = select_clients(
            config.data.num_clients, config.fl.clients_per_round, config.fl.client_fraction, seed, round_index
        )
        by_actor: dict[int, list[int]] = {}
        for cid in selected:
            by_actor.setdefault(self.actor_of[cid], []).append(cid)
        k = self.federation_of(seed)
        trains = {a: self.actors[a].train.remote(round_index, seed, state_ref, cids, k) for a, cids in by_actor.items()}
        self.last_progress = time.monotonic()  # new work: the watchdog's clock starts from its submission
        server = self.server_of.get((run.file_label, seed), 0)  # a run outside the config: the first server
        probes_ref, gan_ref = (
            self.servers[server].audit.remote(round_index, seed, state_ref, gan_state, k)
            if run.needs_audit
            else (None, None)
        )
        return PendingRound(
            round_index,
            run,
            seed,
            state_ref,
            server,
            time.perf_counter(),
            by_actor,
            trains,
            probes_ref,
            gan_ref,
            carried,
        )

    def federation_of(self, seed: int) -> int:
        """The index of the federation that the run seeded `seed` trains on."""
        return self.federation_index.get(seed, 0)

    def _wait(self, refs: Any, what: str, p: PendingRound, droppable: bool = False) -> Any:
        """`wait_for` of one round's step, naming the round."""
        return self.wait_for(refs, f"round {p.round_index} of {p.run.label} (seed {p.seed})", what, droppable)

    def wait_for(self, refs: Any, subject: str, what: str, droppable: bool = False) -> Any:
        """ray.get(refs), or RunStalled naming what `subject` waited for once nothing the engine waits on (any
        run's updates, scoring, evaluations, audits) has finished for resources.stall_timeout seconds: a lost
        object whose reconstruction never finishes, a wedged actor. Progress anywhere counts, as a run's steps
        queue behind the other runs' on the same actors: a long wait is no stall while they advance. An actor
        that died with no restarts left (its calls are retried while it has some) ends the run with ActorsLost,
        unless the caller can drop what it computes (`droppable`: it gets the RayActorError)."""
        timeout = self.config.resources.stall_timeout
        waiting = list(refs) if isinstance(refs, list) else [refs]
        while waiting:
            idle = time.monotonic() - self.last_progress
            if idle >= timeout:
                raise RunStalled(
                    f"{subject} made no progress for {timeout:g} s waiting for {what} (resources.stall_timeout)"
                )
            poll = min(timeout - idle, STALL_POLL_S)
            ready, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=poll, fetch_local=False)
            if ready:
                self.last_progress = time.monotonic()
        try:
            return ray.get(refs)
        except RayActorError as exc:
            if droppable:
                raise
            raise ActorsLost(
                f"{subject}: an actor died with no restarts left (fl.max_retries={self.config.fl.max_retries}) "
                f"while computing {what} ({str(exc).splitlines()[0]}); --resume continues from the last "
                "checkpoint with fresh actors"
            ) from None

    def finish_round(self, pending: PendingRound) -> RoundResult:
        """Collect the receipts (dropping the clients of a dead actor), score and aggregate on the run's server,
        evaluate every client under Theta_new, and build the round's rows."""
        p, config = pending, self.config
        delivered, retries = [], {}
        for a, (receipts_ref, updates_ref) in p.trains.items():
            try:
                updates = f"the local updates of clients {p.by_actor[a]}"
                for receipt in self._wait(receipts_ref, updates, p, droppable=True):
                    retries[receipt.client_id] = int(receipt.restarted)
                delivered.append(updates_ref)
            except RayActorError as exc:
                log.warning(
                    "round %d: clients %s dropped, their actor died (%s)",
                    p.round_index,
                    p.by_actor[a],
                    str(exc).splitlines()[0],
                )
        for cid, count in retries.items():
            if count:
                log.warning("round %d: client %d was recomputed on a restarted actor", p.round_index, cid)
        k = self.federation_of(p.seed)
        outcome_ref, new_state_ref = self.servers[p.server].score_and_aggregate.remote(
            p.run, p.state_ref, delivered, p.probes_ref, k, p.carried
        )
        outcome: RoundOutcome = self._wait(outcome_ref, "the audit server's scoring and aggregation", p)
        batches = self._wait(
            [actor.evaluate.remote(p.round_index, p.seed, new_state_ref, k) for actor in self.actors],
            "the clients' evaluations",
            p,
        )
        evaluations = {e.client_id: e for batch in batches for e in batch}
        for cid, why in outcome.rejected.items():
            log.warning("round %d: update of client %d rejected: %s", p.round_index, cid, why)
        client_rows = self._client_rows(p, outcome, evaluations, retries)
        basis = config.metrics.client_accuracy
        column = client_accuracy_column(basis)
        per_client = [r[column] for r in client_rows]
        row = RoundRow(
            method=p.run.name,
            seed=p.seed,
            round=p.round_index,
            accuracy=outcome.test_accuracy,
            bias=outcome.bias_base,
            **fairness_summary(per_client),
            fairness_basis=basis,
            participants=sum(r["participated"] for r in client_rows),
            **weight_figures(outcome.weights, outcome.scores),
            **validation_figures(
                outcome.validation_accuracy,
                [evaluations[c.client_id].validation_accuracy for c in self.federations[k].clients],
            ),
            seconds=time.perf_counter() - p.started,
        )
        gan_state = None if p.gan_ref is None else self._wait(p.gan_ref, "the audit GAN's state", p)
        return RoundResult(new_state_ref, as_dict(row, p.run), client_rows, gan_state, outcome.carried)

    def _client_rows(
        self, p: PendingRound, outcome: RoundOutcome, evaluations: dict, retries: dict[int, int]
    ) -> list[dict[str, Any]]:
        index = {cid: i for i, cid in enumerate(outcome.client_ids)}
        mixture = p.run.mixture(outcome.carried)
        rows = []
        for client in self.federations[self.federation_of(p.seed)].clients:
            cid, i = client.client_id, index.get(client.client_id)
            rows.append(
                as_dict(
                    ClientRow(
                        method=p.run.name,
                        seed=p.seed,
                        round=p.round_index,
                        client=cid,
                        num_samples=len(client.y),
                        test_samples=len(client.test_index),
                        loss=None if i is None else outcome.losses[i],
                        accuracy=evaluations[cid].train_accuracy,
                        test_accuracy=evaluations[cid].test_accuracy,
                        validation_samples=0 if client.validation_index is None else len(client.validation_index),
                        validation_accuracy=evaluations[cid].validation_accuracy,
                        bias=None if i is None else outcome.biases[i],
                        score=None if i is None else outcome.scores[i],
                        weight=0.0 if i is None else outcome.weights[i],
                        mixture=None if mixture is None else mixture[cid],
                        participated=i is not None and cid not in outcome.rejected,
                        retries=retries.get(cid, 0),
                        rejected=outcome.rejected.get(cid),
                    ),
                    p.run,
                )
            )
        return rows

    def round(
        self,
        round_index: int,
        run: Strategy,
        seed: int,
        state_ref: ray.ObjectRef,
        gan_state: dict[str, Any] | None = None,
        carried: list[float] | None = None,
    ) -> RoundResult:
        """One whole round: `start_round` then `finish_round`."""
        return self.finish_round(self.start_round(round_index, run, seed, state_ref, gan_state, carried))

    def held_out_audits(
        self, seeded: list[tuple[Strategy, int]], state_refs: list[ray.ObjectRef], round_index: int
    ) -> list[dict[str, Any]]:
        """`audit.parquet`'s rows: every seeded run's model (`state_refs`, after `round_index`) audited on the
        held-out test split (and the validation split, if any) by its seed's auditors (`rayfed.fl.held_out_audit`),
        each on the run's own server, all submitted before any is collected."""
        refs = [
            self.servers[self.server_of.get((run.file_label, seed), 0)].held_out_audit.remote(
                seed, state_ref, self.config.metrics, self.federation_of(seed)
            )
            for (run, seed), state_ref in zip(seeded, state_refs)
        ]
        self.last_progress = time.monotonic()  # new work, as in start_round
        rows = []
        for (run, seed), ref in zip(seeded, refs):
            test, validation = self.wait_for(
                ref, f"the held-out audit of {run.label} (seed {seed})", "the audit server"
            )
            row = AuditRow(
                run.name,
                seed,
                round_index,
                test.bias,
                test.flip_rate,
                test.images,
                val_bias=None if validation is None else validation.bias,
                val_flip_rate=None if validation is None else validation.flip_rate,
                validation_images=0 if validation is None else validation.images,
                seconds=test.seconds + (0 if validation is None else validation.seconds),
            )
            rows.append(as_dict(row, run))
        return rows

    def shutdown(self) -> None:
        for actor in [*self.actors, *self.servers]:
            ray.kill(actor)
