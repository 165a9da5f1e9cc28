"""Datasets, partitions of the training set among clients, the server's audit split and validation splits."""

from rayfed.data.datasets import (
    ImageData,
    augment_batch,
    black_level,
    denormalise,
    hold_out_validation,
    load_dataset,
    normalise,
)
from rayfed.data.partition import FederatedSplit, client_test_indices, partition_clients, split_federated

__all__ = [
    "FederatedSplit",
    "ImageData",
    "augment_batch",
    "black_level",
    "client_test_indices",
    "denormalise",
    "hold_out_validation",
    "load_dataset",
    "normalise",
    "partition_clients",
    "split_federated",
]
