"""Everything a federated run starts from, built from the config: data, who holds what, Theta_0, seeds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rayfed.config import Config
from rayfed.data import ImageData, black_level, load_dataset, split_federated
from rayfed.data.partition import FederatedSplit
from rayfed.fl.gan_audit import PixelSpace
from rayfed.fl.state import StateDict
from rayfed.models import build_classifier
from rayfed.seeds import Stream, stream_seed


@dataclass
class ClientData:
    """One client's training tensors (on CPU until an actor moves them to its device) and test indices."""

    client_id: int
    x: torch.Tensor
    y: torch.Tensor
    test_index: np.ndarray
    """The client's held-out test images: indices into the (shared) test set."""
    validation_index: np.ndarray | None = None
    """The client's validation images: indices into the (shared) validation split; None without one."""


@dataclass
class Federation:
    data: ImageData
    split: FederatedSplit
    clients: list[ClientData]

    @property
    def space(self) -> PixelSpace:
        return PixelSpace(self.data.mean, self.data.std)

    @property
    def validation(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The validation split's images and labels (carved from the training set), or None without one."""
        if self.split.client_validation is None:
            return None
        index = torch.from_numpy(self.split.validation)
        return self.data.train_x[index], self.data.train_y[index]

    @property
    def augment_pad(self) -> torch.Tensor | None:
        """Per-channel padding of the training augmentation, or None without augmentation."""
        return black_level(self.data.mean, self.data.std) if self.data.augment else None

    @property
    def num_samples(self) -> list[int]:
        return [len(c.y) for c in self.clients]

    @property
    def unheld_classes(self) -> list[int]:
        """Classes of which no client holds a training image (the `extreme` partition can leave some out)."""
        held = set(torch.cat([c.y for c in self.clients]).unique().tolist())
        return [c for c in range(self.data.num_classes) if c not in held]

    @property
    def held_test_percent(self) -> float:
        """Percent of the global test set in the classes some client holds: about the best global accuracy a
        model trained only on the clients' data can reach when some classes are unheld."""
        test_y = self.data.test_y
        held = ~torch.isin(test_y, torch.tensor(self.unheld_classes, dtype=test_y.dtype))
        return 100.0 * held.float().mean().item()


def initial_model_state(config: Config, federation: Federation, seed: int) -> StateDict:
    """Theta_0 of the run seeded `seed` (every method of that seed starts from it)."""
    torch.manual_seed(seed)
    data = federation.data
    model = build_classifier(config.model.name, data.shape, data.num_classes, config.model.pretrained)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def build_federation(config: Config, partition_seed: int | None = None, data: ImageData | None = None) -> Federation:
    """Load the dataset (unless given), carve the audit split, partition the clients and draw their test subsets,
    all from `partition_seed` (default: the first seed's, `config.partition_seed_of(config.seed)`)."""
    d = config.data
    data = data if data is not None else load_dataset(d.dataset, d.root, d.download, d.augment)
    split = split_federated(
        data.train_y.numpy(),
        data.test_y.numpy(),
        data.num_classes,
        d.num_clients,
        d.partition,
        d.audit_fraction,
        d.client_test_size,
        config.partition_seed_of(config.seed) if partition_seed is None else partition_seed,
        d.classes_per_client,
        d.dirichlet_alpha,
        d.shards_per_client,
        d.validation_fraction,
    )
    validation = split.client_validation or [None] * len(split.clients)
    clients = [
        ClientData(cid, data.train_x[idx], data.train_y[idx], test, val)
        for cid, (idx, test, val) in enumerate(zip(split.clients, split.client_test, validation))
    ]
    return Federation(data, split, clients)


def build_federations(config: Config) -> dict[int, Federation]:
    """Each run seed's federation (data.partition_seed): one shared by every seed, or one drawn per seed, from
    one load of the dataset."""
    data = load_dataset(config.data.dataset, config.data.root, config.data.download, config.data.augment)
    by_partition = {partition: build_federation(config, partition, data) for partition in config.partition_seeds}
    return {seed: by_partition[config.partition_seed_of(seed)] for seed in config.seed_list}


def select_clients(
    num_clients: int, count: int | None, fraction: float | None, seed: int, round_index: int
) -> list[int]:
    """The clients taking part in a round: all, or a seeded sample (CLIENT_SELECTION stream of the round)
    of `count` clients or of `fraction` of them (at least one)."""
    if count is None and fraction is None:
        return list(range(num_clients))
    size = count if count is not None else max(1, int(round(fraction * num_clients)))
    rng = np.random.RandomState(stream_seed(seed, Stream.CLIENT_SELECTION, round_index))
    return sorted(rng.choice(num_clients, size, replace=False).tolist())
