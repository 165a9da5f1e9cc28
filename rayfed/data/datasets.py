"""Datasets as in-memory tensors in the classifier's input space (pixel values normalised by mean/std).

`digits` ships inside scikit-learn (no download); the others go through torchvision's own dataset
classes, downloaded into `data.root` when allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from rayfed.data.partition import validation_size
from rayfed.errors import UserError

# Per-channel mean/std of the classifier's input normalisation (CIFAR-10's as in the notebook).
_NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}
_AUGMENT_BY_DEFAULT = {"cifar10"}
DIGITS_TEST_FRACTION = 0.25


@dataclass
class ImageData:
    """A train/test split held as tensors, images normalised for the classifier."""

    name: str
    train_x: torch.Tensor
    """N x C x H x W float32, (pixel - mean) / std."""
    train_y: torch.Tensor
    """N int64 labels."""
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    augment: bool
    """Whether training uses random crop + flip (the dataset's default unless the config says)."""

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


PerChannel = tuple[float, ...] | torch.Tensor
"""One value per channel: numbers, or a (1, C, 1, 1) tensor already beside the images."""


def per_channel(values: PerChannel, like: torch.Tensor) -> torch.Tensor:
    """`values` as a (1, C, 1, 1) tensor on like's device: as given, or built in like's dtype."""
    if isinstance(values, torch.Tensor):
        return values
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def normalise(pixels: torch.Tensor, mean: PerChannel, std: PerChannel) -> torch.Tensor:
    """[0, 1] pixels -> classifier input space."""
    return (pixels - per_channel(mean, pixels)) / per_channel(std, pixels)


def denormalise(x: torch.Tensor, mean: PerChannel, std: PerChannel) -> torch.Tensor:
    """Classifier input space -> [0, 1] pixels."""
    return x * per_channel(std, x) + per_channel(mean, x)


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = (bunch.images / 16.0).astype(np.float32)[:, None]  # N x 1 x 8 x 8 in [0, 1]
    labels = bunch.target.astype(np.int64)
    # A fixed split (independent of the run's seed) so every run is tested on the same images.
    order = np.random.RandomState(0).permutation(len(labels))
    n_test = int(round(DIGITS_TEST_FRACTION * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return pixels[train], labels[train], pixels[test], labels[test]


def _load_torchvision(name: str, root: Path, download: bool) -> tuple[np.ndarray, ...]:
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=download)
        except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError... for a missing dataset
            how = "and could not be downloaded" if download else "and data.download is false"
            reason = " ".join(str(exc).split())[:160]
            raise UserError(f"dataset {name} was not found under {root} {how} ({reason})") from None
        images = np.asarray(ds.data)
        if images.ndim == 3:  # MNIST-like N x H x W
            images = images[:, None]
        else:  # CIFAR N x H x W x C
            images = images.transpose(0, 3, 1, 2)
        splits += [(images.astype(np.float32) / 255.0), np.asarray(ds.targets, dtype=np.int64)]
    return tuple(splits)


def load_dataset(name: str, root: str | Path = "data", download: bool = True, augment: bool | None = None) -> ImageData:
    """Load a dataset by name into normalised tensors."""
    if name == "digits":
        train_p, train_y, test_p, test_y = _load_digits()
        mean = (float(train_p.mean()),)
        std = (float(train_p.std()),)
    elif name in _NORMALISATION:
        train_p, train_y, test_p, test_y = _load_torchvision(name, Path(root).resolve(), download)
        mean, std = _NORMALISATION[name]
    else:
        raise UserError(f"data.dataset: unknown dataset {name!r}")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    return ImageData(
        name=name,
        train_x=normalise(torch.from_numpy(train_p), mean, std),
        train_y=torch.from_numpy(train_y),
        test_x=normalise(torch.from_numpy(test_p), mean, std),
        test_y=torch.from_numpy(test_y),
        mean=mean,
        std=std,
        num_classes=num_classes,
        augment=(name in _AUGMENT_BY_DEFAULT) if augment is None else augment,
    )


def augment_batch(
    x: torch.Tensor, pad_value: torch.Tensor, generator: torch.Generator, padding: int = 4
) -> torch.Tensor:
    """Random crop with padding + random horizontal flip per image (the notebook's RandomCrop(32, 4) + flip).

    x is already normalised, so the padding uses `pad_value`: each channel's normalised black
    (-mean / std), which is what the notebook's zero padding of [0, 1] pixels becomes after Normalize.
    Offsets and flips are drawn on the generator's device: with one on x's GPU, no host work per batch.
    """
    n, c, h, w = x.shape
    padded = pad_value.view(1, c, 1, 1).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding : padding + h, padding : padding + w] = x
    draws = generator.device
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=draws).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=draws).to(x.device)
    flip = (torch.rand(n, 1, generator=generator, device=draws) < 0.5).to(x.device)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip, cols.flip(1), cols) + dx
    rows = torch.arange(h, device=x.device).expand(n, h) + dy
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, channel, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def hold_out_validation(
    data: ImageData, fraction: float, seed: int
) -> tuple[ImageData, tuple[torch.Tensor, torch.Tensor] | None]:
    """`data` without a seeded validation split of `fraction` of its training images, and that split's images
    and labels; `data` itself and None when fraction is 0. The test set is untouched."""
    size = validation_size(fraction, len(data.train_y), data.num_classes)
    if not size:
        return data, None
    order = torch.from_numpy(np.random.RandomState(seed).permutation(len(data.train_y)))
    validation, kept = order[:size].sort().values, order[size:].sort().values
    rest = replace(data, train_x=data.train_x[kept], train_y=data.train_y[kept])
    return rest, (data.train_x[validation], data.train_y[validation])


def black_level(mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Each channel's value of a black (0) pixel in the classifier's input space."""
    return torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32)
