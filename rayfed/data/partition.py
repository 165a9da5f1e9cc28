"""Who holds which training images: the server's audit split and the clients' partitions.

All functions take and return index arrays into the training set, and draw from a seeded
`np.random.RandomState`, so the same seed gives the same split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rayfed.errors import UserError


@dataclass
class FederatedSplit:
    """Indices into the training set (audit, clients) and the test set (client_test)."""

    audit: np.ndarray
    """The server's audit split, disjoint from every client."""
    clients: list[np.ndarray]
    """Training indices of each client (may overlap among clients under `extreme`)."""
    client_test: list[np.ndarray]
    """Held-out test indices of each client, with the client's label mix."""
    validation: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """The validation split (training-set indices, sorted), disjoint from the audit split and every client;
    empty without `data.validation_fraction`."""
    client_validation: list[np.ndarray] | None = None
    """Validation indices of each client (positions in `validation`), with the client's label mix; None
    without a validation split."""


def partition_extreme(
    labels: np.ndarray,
    pool: np.ndarray,
    num_clients: int,
    num_classes: int,
    classes_per_client: int,
    rng: np.random.RandomState,
) -> list[np.ndarray]:
    """The notebook's `partition_non_iid_extreme`: each client takes 1..classes_per_client classes and,
    of each, a window of len(class)/(K/2) images at a random start. Windows may overlap (defect 6, kept)."""
    class_indices = {c: pool[labels[pool] == c] for c in range(num_classes)}
    clients = []
    for _ in range(num_clients):
        n_classes = rng.randint(1, classes_per_client + 1)
        chosen = rng.choice(num_classes, min(n_classes, num_classes), replace=False)
        idx: list[int] = []
        for c in chosen:
            n_samples = len(class_indices[c]) // max(1, num_clients // 2)
            start = rng.randint(0, max(1, len(class_indices[c]) - n_samples))
            idx.extend(class_indices[c][start : start + n_samples])
        idx_arr = np.array(idx, dtype=np.int64)
        rng.shuffle(idx_arr)
        clients.append(idx_arr)
    return clients


def partition_iid(pool: np.ndarray, num_clients: int, rng: np.random.RandomState) -> list[np.ndarray]:
    """A seeded permutation cut into near-equal parts."""
    return [part.astype(np.int64) for part in np.array_split(rng.permutation(pool), num_clients)]


def partition_dirichlet(
    labels: np.ndarray,
    pool: np.ndarray,
    num_clients: int,
    num_classes: int,
    alpha: float,
    rng: np.random.RandomState,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Per class, client proportions ~ Dir(alpha); redrawn until every client holds at least one image."""
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in range(num_classes):
            members = rng.permutation(pool[labels[pool] == c])
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
            for cid, chunk in enumerate(np.split(members, cuts)):
                parts[cid].extend(chunk.tolist())
        if min(len(p) for p in parts) > 0:
            return [rng.permutation(np.array(p, dtype=np.int64)) for p in parts]
    raise UserError(
        f"data.dirichlet_alpha={alpha}: could not give all {num_clients} clients an image in {max_tries} draws"
    )


def partition_shards(
    labels: np.ndarray, pool: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.RandomState
) -> list[np.ndarray]:
    """Sort by label, cut into num_clients * shards_per_client shards, deal shards_per_client to each client."""
    num_shards = num_clients * shards_per_client
    if num_shards > len(pool):
        raise UserError(
            f"data.shards_per_client={shards_per_client}: {num_shards} shards for {len(pool)} client images"
        )
    ordered = pool[np.argsort(labels[pool], kind="stable")]
    shards = np.array_split(ordered, num_shards)
    order = rng.permutation(num_shards)
    return [
        np.concatenate([shards[s] for s in order[cid * shards_per_client : (cid + 1) * shards_per_client]])
        for cid in range(num_clients)
    ]


def partition_clients(
    partition: str,
    labels: np.ndarray,
    pool: np.ndarray,
    num_clients: int,
    num_classes: int,
    rng: np.random.RandomState,
    classes_per_client: int = 2,
    dirichlet_alpha: float = 0.5,
    shards_per_client: int = 2,
) -> list[np.ndarray]:
    """Split the pool of client-eligible training indices among num_clients by the named scheme."""
    if num_clients > len(pool):
        raise UserError(f"data.num_clients={num_clients} is more than the {len(pool)} training images clients can hold")
    if partition == "extreme":
        clients = partition_extreme(labels, pool, num_clients, num_classes, classes_per_client, rng)
    elif partition == "iid":
        clients = partition_iid(pool, num_clients, rng)
    elif partition == "dirichlet":
        clients = partition_dirichlet(labels, pool, num_clients, num_classes, dirichlet_alpha, rng)
    elif partition == "shards":
        clients = partition_shards(labels, pool, num_clients, shards_per_client, rng)
    else:
        raise UserError(f"data.partition: unknown partition {partition!r}")
    empty = [cid for cid, idx in enumerate(clients) if len(idx) == 0]
    if empty:
        raise UserError(
            f"data.num_clients={num_clients}: partition {partition!r} leaves client {empty[0]} without images"
        )
    return clients


def largest_test_size(client_labels: np.ndarray, test_labels: np.ndarray, num_classes: int) -> int:
    """The largest subset with the client's label mix that the test set holds without repeating an image:
    min over the client's classes c of floor(n_test_c / p_c) (p_c the client's share of class c)."""
    counts = np.bincount(client_labels, minlength=num_classes).astype(float)
    available = np.bincount(test_labels, minlength=num_classes).astype(float)
    share = counts / counts.sum()
    present = share > 0
    return max(1, int(np.floor(np.min(available[present] / share[present]) + 1e-9)))


def client_test_indices(
    client_labels: np.ndarray, test_labels: np.ndarray, size: int | str, num_classes: int, rng: np.random.RandomState
) -> np.ndarray:
    """`size` test indices (or `max`: `largest_test_size`) whose label mix matches client_labels
    (largest-remainder rounding; drawn without replacement where the test set has enough of a class)."""
    if size == "max":
        size = largest_test_size(client_labels, test_labels, num_classes)
    counts = np.bincount(client_labels, minlength=num_classes).astype(float)
    quota = counts / counts.sum() * size
    take = np.floor(quota).astype(int)
    remainder_order = np.argsort(-(quota - take), kind="stable")
    take[remainder_order[: size - take.sum()]] += 1
    picked = []
    for c in np.nonzero(take)[0]:
        members = np.nonzero(test_labels == c)[0]
        if len(members) == 0:
            continue
        picked.append(rng.choice(members, take[c], replace=take[c] > len(members)))
    return np.concatenate(picked).astype(np.int64) if picked else np.zeros(0, dtype=np.int64)


def _require_classes(
    clients: list[np.ndarray], train_labels: np.ndarray, held_out_labels: np.ndarray, what: str, key: str
) -> None:
    """UserError naming a class some client holds and the held-out images (the test set, the validation split)
    lack: that client's subset drawn with its label mix would silently lose the class, and under `max` shrink
    to one image."""
    held = set(np.unique(held_out_labels).tolist())
    for cid, idx in enumerate(clients):
        missing = sorted(set(np.unique(train_labels[idx]).tolist()) - held)
        if missing:
            raise UserError(f"{key}: {what} holds no image of class {missing[0]}, which client {cid} has; raise it")


def validation_size(fraction: float, n: int, num_classes: int) -> int:
    """Images in a validation split of `fraction` of n training images (0 without one); a UserError when it
    could not hold an image of every class."""
    size = int(round(fraction * n)) if fraction > 0 else 0
    if fraction > 0 and size < num_classes:
        raise UserError(
            f"data.validation_fraction={fraction}: {size} validation images for {num_classes} classes; raise it"
        )
    return size


def split_federated(
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    num_clients: int,
    partition: str,
    audit_fraction: float,
    client_test_size: int | str,
    seed: int,
    classes_per_client: int = 2,
    dirichlet_alpha: float = 0.5,
    shards_per_client: int = 2,
    validation_fraction: float = 0.0,
) -> FederatedSplit:
    """Carve the server's audit split and the validation split, partition the rest among clients, and draw
    each client's test subset (and validation subset, with the same size rule, from the validation split).
    Without a validation split every draw is what it was before validation splits existed."""
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(train_labels))
    n_audit = max(1, int(round(audit_fraction * len(train_labels))))
    n_validation = validation_size(validation_fraction, len(train_labels), num_classes)
    audit = np.sort(order[:n_audit])
    validation = np.sort(order[n_audit : n_audit + n_validation])
    pool = np.sort(order[n_audit + n_validation :])
    clients = partition_clients(
        partition,
        train_labels,
        pool,
        num_clients,
        num_classes,
        rng,
        classes_per_client,
        dirichlet_alpha,
        shards_per_client,
    )
    _require_classes(clients, train_labels, test_labels, "the test set", "data.dataset")
    client_test = [
        client_test_indices(train_labels[idx], test_labels, client_test_size, num_classes, rng) for idx in clients
    ]
    client_validation = None
    if n_validation:
        _require_classes(
            clients,
            train_labels,
            train_labels[validation],
            f"the validation split ({n_validation} images)",
            f"data.validation_fraction={validation_fraction}",
        )
        client_validation = [
            client_test_indices(train_labels[idx], train_labels[validation], client_test_size, num_classes, rng)
            for idx in clients
        ]
    return FederatedSplit(audit.astype(np.int64), clients, client_test, validation.astype(np.int64), client_validation)
