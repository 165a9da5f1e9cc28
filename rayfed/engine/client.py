"""ClientActor: hosts one or more federated clients, runs their local updates and evaluations."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import ray
import torch

from rayfed.engine.runtime import setup_worker
from rayfed.fl.local import local_update
from rayfed.fl.metrics import accuracy, predictions
from rayfed.fl.setup import ClientData
from rayfed.seeds import Stream, stream_seed
from rayfed.fl.state import NumpyState, to_numpy, to_torch
from rayfed.models import build_classifier


@dataclass
class LocalSettings:
    """What a client needs to train: model architecture and Phase 1 hyperparameters."""

    model_name: str
    shape: tuple[int, int, int]
    num_classes: int
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    eval_batch_size: int
    seed: int
    augment_pad: torch.Tensor | None
    threads: int


@dataclass
class ClientUpdate:
    client_id: int
    num_samples: int
    delta: NumpyState
    """dw_i = w_after - w_before."""


@dataclass
class UpdateReceipt:
    """What the driver learns of an update (the update itself goes from the object store to the server)."""

    client_id: int
    restarted: bool
    """The actor had been restarted (after a crash) when it computed this update."""


@ray.remote
class ClientActor:
    """Holds its clients' data on its device for the whole run (placed in the object store once by the driver)."""

    def __init__(self, settings: LocalSettings, client_refs: list[ray.ObjectRef], test_ref: list[ray.ObjectRef]):
        self.settings = settings
        self.device = setup_worker(settings.threads)
        self.model = build_classifier(settings.model_name, settings.shape, settings.num_classes).to(self.device)
        self.clients: dict[int, ClientData] = {}
        for client in ray.get(client_refs):
            self.clients[client.client_id] = ClientData(
                client.client_id, client.x.to(self.device), client.y.to(self.device), client.test_index)
        # the test images its clients are scored on, once for all of them (clients' subsets overlap)
        test_x, test_y = ray.get(test_ref[0])
        self.test_rows = np.unique(np.concatenate([c.test_index for c in self.clients.values()]))
        self.test_x, self.test_y = test_x[self.test_rows].to(self.device), test_y[self.test_rows].to(self.device)
        with warnings.catch_warnings():  # Ray's own property calls a deprecated accessor
            warnings.simplefilter("ignore", DeprecationWarning)
            self.restarted = ray.get_runtime_context().was_current_actor_reconstructed

    def _load(self, state: NumpyState) -> None:
        self.model.load_state_dict(to_torch(state, self.device))

    @ray.method(num_returns=2)
    def train(self, round_index: int, global_state: NumpyState,
              client_ids: list[int]) -> tuple[list[UpdateReceipt], list[ClientUpdate]]:
        """Phase 1 for each of client_ids: start from Theta_old, compute dw_i (seeded by seed, round, client).

        Two results: small receipts for the driver, and the updates, which only the server fetches."""
        s = self.settings
        pad = None if s.augment_pad is None else s.augment_pad.to(self.device)
        updates = []
        for cid in client_ids:
            self._load(global_state)
            c = self.clients[cid]
            delta = local_update(
                self.model, c.x, c.y, epochs=s.epochs, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                batch_size=s.batch_size, seed=stream_seed(s.seed, Stream.CLIENT_TRAINING, round_index, cid), augment_pad=pad,
            )
            updates.append(ClientUpdate(cid, len(c.y), to_numpy(delta)))
        receipts = [UpdateReceipt(cid, self.restarted) for cid in client_ids]
        self.restarted = False  # report a restart once, with the updates it recomputed
        return receipts, updates

    def evaluate(self, round_index: int, global_state: NumpyState) -> list[tuple[int, float, float]]:
        """(client, accuracy on its own training data through the training transform (the notebook's figure),
        accuracy on its held-out test subset) for every hosted client. The hosted clients' test images are
        classified once, in one pass, and each client's accuracy is read off its own indices."""
        s = self.settings
        self._load(global_state)
        pad = None if s.augment_pad is None else s.augment_pad.to(self.device)
        correct = (predictions(self.model, self.test_x, s.eval_batch_size) == self.test_y).cpu().numpy()
        results = []
        for cid, c in self.clients.items():
            own = accuracy(self.model, c.x, c.y, s.eval_batch_size, pad, stream_seed(s.seed, Stream.CLIENT_EVALUATION, round_index, cid))
            test = 100.0 * float(correct[np.searchsorted(self.test_rows, c.test_index)].mean())
            results.append((cid, own, test))
        return results

    def pid(self) -> int:
        """The actor's process id (tests use it to kill the process)."""
        return os.getpid()
