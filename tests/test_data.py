"""Datasets, partitions, the audit split, augmentation, and CIFAR-10 through torchvision's own loader."""

import hashlib
import pickle

import numpy as np
import pytest
import torch

from rayfed.data import (
    ImageData,
    augment_batch,
    black_level,
    client_test_indices,
    hold_out_validation,
    load_dataset,
    split_federated,
)
from rayfed.data.partition import partition_clients, partition_extreme
from rayfed.errors import UserError
from rayfed.models import CNN

PARTITIONS = ["extreme", "dirichlet", "iid", "shards"]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_is_bundled_and_normalised(digits):
    assert digits.shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.train_y) + len(digits.test_y) == 1797
    assert abs(float(digits.train_x.mean())) < 1e-4 and abs(float(digits.train_x.std()) - 1) < 1e-3


@pytest.mark.parametrize("partition", PARTITIONS)
def test_audit_split_is_disjoint_from_every_client(digits, partition):
    y = digits.train_y.numpy()
    split = split_federated(y, digits.test_y.numpy(), 10, 8, partition, 0.1, 50, seed=3)
    audit = set(split.audit.tolist())
    assert len(audit) == round(0.1 * len(y))
    for idx in split.clients:
        assert len(idx) > 0 and not audit & set(idx.tolist())


@pytest.mark.parametrize("partition", ["dirichlet", "iid", "shards"])
def test_disjoint_partitions_cover_the_pool_once(digits, partition):
    y = digits.train_y.numpy()
    split = split_federated(y, digits.test_y.numpy(), 10, 8, partition, 0.1, 50, seed=3)
    held = np.concatenate(split.clients)
    assert len(held) == len(set(held.tolist())) == len(y) - len(split.audit)


def test_extreme_partition_is_the_notebooks_algorithm():
    labels = np.repeat(np.arange(10), 20)
    pool = np.arange(200)
    ours = partition_extreme(labels, pool, 6, 10, 2, np.random.RandomState(42))
    # the notebook's code, verbatim apart from its global np.random
    np.random.seed(42)
    class_indices = {c: np.where(labels == c)[0] for c in range(10)}
    for cid in range(6):
        n_classes = np.random.randint(1, 3)
        client_classes = np.random.choice(10, n_classes, replace=False)
        idx = []
        for c in client_classes:
            n_samples = len(class_indices[c]) // (6 // 2)
            start = np.random.randint(0, max(1, len(class_indices[c]) - n_samples))
            idx.extend(class_indices[c][start : start + n_samples])
        np.random.shuffle(idx)
        assert np.array_equal(ours[cid], np.array(idx))
        assert 1 <= len(set(labels[ours[cid]].tolist())) <= 2


def test_same_seed_same_split_other_seed_other_split(digits):
    y, ty = digits.train_y.numpy(), digits.test_y.numpy()
    a = split_federated(y, ty, 10, 5, "dirichlet", 0.1, 50, seed=1)
    b = split_federated(y, ty, 10, 5, "dirichlet", 0.1, 50, seed=1)
    c = split_federated(y, ty, 10, 5, "dirichlet", 0.1, 50, seed=2)
    assert all(np.array_equal(p, q) for p, q in zip(a.clients, b.clients))
    assert not all(np.array_equal(p, q) for p, q in zip(a.clients, c.clients))


def test_client_test_subset_has_the_clients_label_mix():
    test_labels = np.repeat(np.arange(4), 50)
    client_labels = np.array([0] * 30 + [2] * 10)  # 75% class 0, 25% class 2
    idx = client_test_indices(client_labels, test_labels, 20, 4, np.random.RandomState(0))
    assert np.bincount(test_labels[idx], minlength=4).tolist() == [15, 0, 5, 0]
    assert len(set(idx.tolist())) == 20  # without replacement when the test set has enough


def test_too_many_clients_is_a_user_error(digits):
    y = digits.train_y.numpy()
    with pytest.raises(UserError, match="data.num_clients"):
        split_federated(y[:20], digits.test_y.numpy(), 10, 50, "iid", 0.1, 5, seed=0)


@pytest.mark.parametrize("partition", PARTITIONS)
def test_validation_split_is_apart_from_the_audit_split_and_every_client(digits, partition):
    """validation_fraction carves its images out of the training set before the clients are dealt theirs; each
    client's validation subset (positions in the split) has its label mix, as its test subset has."""
    y = digits.train_y.numpy()
    split = split_federated(y, digits.test_y.numpy(), 10, 8, partition, 0.1, 30, seed=3, validation_fraction=0.2)
    validation = set(split.validation.tolist())
    assert len(validation) == round(0.2 * len(y)) and not validation & set(split.audit.tolist())
    assert np.array_equal(split.validation, np.sort(split.validation))
    for idx, held in zip(split.clients, split.client_validation):
        assert not validation & set(idx.tolist())
        assert len(held) == 30 and held.max() < len(split.validation)
        mix = np.bincount(y[idx], minlength=10) / len(idx) * 30
        assert np.abs(np.bincount(y[split.validation[held]], minlength=10) - mix).max() < 1  # largest remainder


def test_a_validation_split_without_a_class_some_client_holds_is_refused(digits):
    """2% of digits' training images (27), dirichlet, partition seed 2: the split holds no 2, which clients hold.
    Drawn anyway, their validation subsets lost the class and, under `max`, shrank to one image each."""
    y = digits.train_y.numpy()
    with pytest.raises(
        UserError,
        match=r"data.validation_fraction=0.02: the validation split \(27 images\) holds "
        r"no image of class 2, which client \d+ has",
    ):
        split_federated(y, digits.test_y.numpy(), 10, 10, "dirichlet", 0.1, "max", seed=2, validation_fraction=0.02)


def test_no_validation_split_leaves_every_draw_as_it_was(digits):
    """Without validation_fraction the audit split, the partition and the test subsets are those of a split
    that never heard of validation: the draws of split_federated's seed, in its order, re-done by hand."""
    y, ty = digits.train_y.numpy(), digits.test_y.numpy()
    split = split_federated(y, ty, 10, 5, "dirichlet", 0.1, 20, seed=7)
    rng = np.random.RandomState(7)
    order = rng.permutation(len(y))
    n_audit = round(0.1 * len(y))
    clients = partition_clients("dirichlet", y, np.sort(order[n_audit:]), 5, 10, rng)
    assert np.array_equal(split.audit, np.sort(order[:n_audit])) and len(split.validation) == 0
    assert split.client_validation is None
    for ours, theirs in zip(split.clients, clients):
        assert np.array_equal(ours, theirs)
    for ours, idx in zip(split.client_test, clients):
        assert np.array_equal(ours, client_test_indices(y[idx], ty, 20, 10, rng))


def test_a_validation_split_too_small_for_the_classes_is_a_user_error(digits):
    y = digits.train_y.numpy()
    with pytest.raises(UserError, match=r"data.validation_fraction=0.005: 7 validation images for 10 classes"):
        split_federated(y, digits.test_y.numpy(), 10, 5, "iid", 0.1, 20, seed=0, validation_fraction=0.005)


def test_hold_out_validation_takes_its_images_out_of_the_training_set_only():
    """Images numbered by their row: the split and the rest partition the training rows, the test set is kept,
    the same seed draws the same split, and fraction 0 changes nothing."""
    train = torch.arange(40.0).reshape(40, 1, 1, 1)
    data = ImageData(
        "toy", train, torch.arange(40) % 4, -train, torch.zeros(5, dtype=torch.int64), (0.0,), (1.0,), 4, False
    )
    rest, (x, y) = hold_out_validation(data, 0.25, seed=9)
    held, kept = x.flatten().long().tolist(), rest.train_x.flatten().long().tolist()
    assert len(held) == 10 and sorted(held + kept) == list(range(40)) and kept == sorted(kept)
    assert y.tolist() == [i % 4 for i in held] and rest.train_y.tolist() == [i % 4 for i in kept]
    assert rest.test_x is data.test_x and hold_out_validation(data, 0.25, seed=9)[1][0].equal(x)
    assert hold_out_validation(data, 0.0, seed=9) == (data, None)
    with pytest.raises(UserError, match="data.validation_fraction=0.05: 2 validation images for 4 classes"):
        hold_out_validation(data, 0.05, seed=9)


def test_augmentation_crops_and_flips_with_black_padding():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    pad = torch.tensor([-9.0])
    out = augment_batch(x, pad, torch.Generator().manual_seed(0), padding=1)
    assert out.shape == x.shape
    for img, src in zip(out, x):  # each output pixel is padding or a pixel of its own (maybe flipped) image
        values = set(img.flatten().tolist()) - {-9.0}
        assert values <= set(src.flatten().tolist())
    same = augment_batch(x, pad, torch.Generator().manual_seed(0), padding=1)
    assert torch.equal(out, same)
    assert black_level((0.5,), (0.25,)).tolist() == [-2.0]


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_cnn_is_shape_generic(shape):
    assert CNN(shape, 10)(torch.randn(2, *shape)).shape == (2, 10)


def _write_cifar(root, n_per_batch=10):
    """A tiny CIFAR-10 in its own on-disk format (cifar-10-batches-py: pickled dicts of uint8 rows, str keys as the
    original Python 2 pickles load)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "data": rng.randint(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            "labels": rng.randint(0, 10, n_per_batch).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in names + ["batches.meta"]}


def test_cifar10_through_torchvisions_loader(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    md5 = _write_cifar(tmp_path)
    # torchvision checks the real archive's md5 sums; point them at the files this test wrote
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setitem(CIFAR10.meta, "md5", md5["batches.meta"])
    data = load_dataset("cifar10", tmp_path, download=False)
    assert data.shape == (3, 32, 32) and len(data.train_y) == 50 and len(data.test_y) == 10
    assert data.augment  # the notebook trains CIFAR-10 with crop + flip
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())["data"][0]
    pixel = raw.reshape(3, 32, 32)[0, 0, 0] / 255.0
    assert float(data.train_x[0, 0, 0, 0]) == pytest.approx((pixel - 0.4914) / 0.2023, rel=1e-5)


def test_missing_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(UserError, match=f"cifar10 was not found under {tmp_path}"):
        load_dataset("cifar10", tmp_path, download=False)
