"""Backdoor poisoning with a square trigger and its attack success rate (ASR).

- `badnets` (Gu et al. 2017, default): non-target training images get the trigger and are relabelled to the
  target class.
- `clean_label` (the notebook's second version): target-class images get the trigger, labels unchanged.
Poisoning returns new tensors (notebook defect 5: editing what `dataset[i]` returns poisoned nothing).
The trigger is a trigger_size x trigger_size square of pixel value v in [0, 1], set in pixel space and then
normalised: x = (v - mean_c) / std_c on each channel c.
ASR = share of triggered non-target test images that the model predicts as the target class.
"""

from __future__ import annotations

import numpy as np
import torch

from rayfed.data.datasets import normalise
from rayfed.errors import UserError
from rayfed.seeds import Stream, stream_seed


def stamp(
    x: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    size: int,
    value: float,
    position: str = "bottom_right",
    seed: int = 0,
) -> torch.Tensor:
    """A copy of normalised images x (n x C x H x W) with the trigger square set to pixel value `value`:
    bottom-right corner, or a random position per image (drawn from `seed`)."""
    n, c, h, w = x.shape
    check_trigger_fits(size, h, w)
    level = normalise(torch.full((1, c, 1, 1), float(value)), mean, std).view(c, 1, 1)
    out = x.clone()
    if position == "bottom_right":
        out[:, :, h - size :, w - size :] = level
        return out
    rng = np.random.default_rng(seed)
    tops, lefts = rng.integers(0, h - size + 1, n), rng.integers(0, w - size + 1, n)
    for i, (top, left) in enumerate(zip(tops, lefts)):
        out[i, :, top : top + size, left : left + size] = level
    return out


def check_trigger_fits(size: int, height: int, width: int) -> None:
    """UserError naming `backdoor.trigger_size` unless a size x size trigger fits in height x width images."""
    if size > min(height, width):
        raise UserError(f"backdoor.trigger_size: {size} does not fit in {height}x{width} images")


def choose_poison(
    y: torch.Tensor, *, target: int, num_classes: int, mode: str, count: int | None, fraction: float, seed: int
) -> np.ndarray:
    """Sorted indices to poison, drawn (the BACKDOOR_POISON stream of the run seed `seed`) from the candidates:
    the non-target images (badnets) or the target-class images (clean_label). `count` points when given, else
    round(fraction x candidates), at least one."""
    if not 0 <= target < num_classes:
        raise UserError(f"backdoor.target_class: class {target} does not exist (the dataset has {num_classes} classes)")
    pool = np.flatnonzero((y != target).numpy() if mode == "badnets" else (y == target).numpy())
    if count is None:
        count = max(1, round(fraction * len(pool)))
    if not 1 <= count <= len(pool):
        raise UserError(f"backdoor.poison: needs between 1 and {len(pool)} {mode} candidates, got {count}")
    rng = np.random.default_rng(stream_seed(seed, Stream.BACKDOOR_POISON))
    return np.sort(rng.choice(pool, size=count, replace=False))


def poison_data(
    x: torch.Tensor,
    y: torch.Tensor,
    indices: np.ndarray,
    *,
    target: int,
    mode: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    size: int,
    value: float,
    position: str,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """New (x, y) with the trigger stamped on x[indices] and, for badnets, y[indices] set to the target; random
    positions come from the BACKDOOR_TRIGGER stream (part 0) of the run seed `seed`."""
    rows = torch.from_numpy(indices)
    x, y = x.clone(), y.clone()
    x[rows] = stamp(
        x[rows],
        mean,
        std,
        size=size,
        value=value,
        position=position,
        seed=stream_seed(seed, Stream.BACKDOOR_TRIGGER, 0),
    )
    if mode == "badnets":
        y[rows] = target
    return x, y


def attack_success_rate(pred_triggered: torch.Tensor, y_clean: torch.Tensor, target: int) -> float:
    """Percent of triggered non-target images predicted as the target class."""
    keep = y_clean != target
    return 100.0 * float((pred_triggered[keep] == target).float().mean()) if keep.any() else 0.0
