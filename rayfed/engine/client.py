"""ClientActor: hosts one or more federated clients and runs their Phase 1 and evaluations
(`rayfed.fl.round.client_update`, `evaluate_clients`) on its device."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import ray
import torch

from rayfed.engine.runtime import setup_worker
from rayfed.fl.round import ClientEvaluation, LocalTraining, SharedImages, client_update, evaluate_clients
from rayfed.fl.setup import ClientData
from rayfed.fl.state import NumpyState, to_numpy, to_torch
from rayfed.fl.strategies import LocalResult
from rayfed.models import build_classifier
from rayfed.training import on_device


@dataclass
class ClientSettings:
    """What a client actor needs: the model architecture, Phase 1's hyperparameters, its torch threads."""

    model_name: str
    shape: tuple[int, int, int]
    num_classes: int
    training: LocalTraining
    augment_pad: torch.Tensor | None
    threads: int


@dataclass
class UpdateReceipt:
    """What the driver learns of an update (the update itself goes from the object store to the server)."""

    client_id: int
    restarted: bool
    """The actor had been restarted (after a crash) when it computed this update."""


@ray.remote
class ClientActor:
    """Holds its clients' data on its device for the whole run (placed in the object store once by the driver):
    one set per federation the run's seeds train on (one, unless data.partition_seed is `each`)."""

    def __init__(
        self,
        settings: ClientSettings,
        client_refs: list[list[ray.ObjectRef]],
        test_ref: list[ray.ObjectRef],
        validation_refs: list[ray.ObjectRef | None],
    ):
        """client_refs[k]: its clients' ClientData in federation k; validation_refs[k]: federation k's validation
        split (None without one); test_ref: [the test set], shared by every federation."""
        self.settings = settings
        self.device = setup_worker(settings.threads)
        self.model = on_device(build_classifier(settings.model_name, settings.shape, settings.num_classes), self.device)
        self.pad = None if settings.augment_pad is None else settings.augment_pad.to(self.device)
        self.clients: list[dict[int, ClientData]] = [
            {
                c.client_id: ClientData(
                    c.client_id, c.x.to(self.device), c.y.to(self.device), c.test_index, c.validation_index
                )
                for c in ray.get(refs)
            }
            for refs in client_refs
        ]
        # the test (and validation) images its clients are scored on, once for all of them
        hosted = [c for clients in self.clients for c in clients.values()]
        self.test = SharedImages.of(ray.get(test_ref[0]), [c.test_index for c in hosted], self.device)
        self.validation = [
            None
            if ref is None
            else SharedImages.of(ray.get(ref), [c.validation_index for c in clients.values()], self.device)
            for ref, clients in zip(validation_refs, self.clients)
        ]
        with warnings.catch_warnings():  # Ray's own property calls a deprecated accessor
            warnings.simplefilter("ignore", DeprecationWarning)
            self.restarted = ray.get_runtime_context().was_current_actor_reconstructed

    @ray.method(num_returns=2)
    def train(
        self, round_index: int, run_seed: int, global_state: NumpyState, client_ids: list[int], federation: int = 0
    ) -> tuple[list[UpdateReceipt], list[LocalResult]]:
        """Phase 1 for each of client_ids (of federation `federation`) from Theta_old. Two results: small receipts
        for the driver, and the updates (dw_i as numpy, with F_i(Theta_old)), which only the server fetches."""
        state = to_torch(global_state, self.device)
        results = []
        for cid in client_ids:
            result = client_update(
                self.model,
                self.clients[federation][cid],
                state,
                self.settings.training,
                run_seed=run_seed,
                round_index=round_index,
                augment_pad=self.pad,
            )
            result.delta = to_numpy(result.delta)
            results.append(result)
        receipts = [UpdateReceipt(cid, self.restarted) for cid in client_ids]
        self.restarted = False  # report a restart once, with the updates it recomputed
        return receipts, results

    # Read-only, so rerun on a restarted actor under either failure policy (under `drop` the actor's other
    # calls are not retried): a round that dropped this actor's updates still needs its clients' accuracies,
    # and the call may reach it while it restarts. An actor out of restarts still raises.
    @ray.method(max_task_retries=-1)
    def evaluate(
        self, round_index: int, run_seed: int, global_state: NumpyState, federation: int = 0
    ) -> list[ClientEvaluation]:
        """The accuracies of every hosted client of federation `federation` under Theta (see `evaluate_clients`)."""
        self.restarted = False  # a restart that reran this call recomputed no update (under `drop`, the first
        # call a restarted actor runs is this round's evaluation; the next round's updates are no retry)
        return evaluate_clients(
            self.model,
            to_torch(global_state, self.device),
            list(self.clients[federation].values()),
            self.test,
            self.validation[federation],
            eval_batch_size=self.settings.training.eval_batch_size,
            augment_pad=self.pad,
            run_seed=run_seed,
            round_index=round_index,
        )

    def pid(self) -> int:
        """The actor's process id (tests use it to kill the process)."""
        return os.getpid()
