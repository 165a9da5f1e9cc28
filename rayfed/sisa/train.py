"""Slice training of one shard with a checkpoint after every slice (plain torch, no Ray).

Exactness: stage r of shard s (training on slices 0..r, forgotten points removed) is a deterministic function
of checkpoint r, that data and the seed derived from (seed, s, r). Every random draw (initial weights,
minibatch order, augmentation, dropout) is seeded per stage, never carried over, and a checkpoint holds the
model AND the optimizer state (SGD momentum). So retraining a shard from checkpoint r without some points
equals training it from scratch without them, bit for bit on CPU (same torch thread count).

Checkpoint k (k = 0..R) is the shard after slices 0..k-1, in `<directory>/slice{k}.pt`, written atomically,
with `seen`: the sorted indices of slices 0..k-1 minus the removed points. A checkpoint is valid for a set
of removed points when its `seen` is what that set implies; `ShardTrainer.run` resumes after the last valid
checkpoint of the chain, which is how it unlearns (the first stale checkpoint is the first affected slice)
and how a restarted actor continues after a crash.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from rayfed.models import build_classifier
from rayfed.results import RunDirectory
from rayfed.seeds import Stream, stream_seed
from rayfed.training import on_device, sgd, sgd_epochs


@dataclass(frozen=True)
class TrainSettings:
    """Everything a shard's training depends on besides its data."""

    model: str
    input_shape: tuple[int, int, int]
    num_classes: int
    epochs: tuple[int, ...]
    """e_r per stage (see rayfed.sisa.schedule)."""
    lr: float
    momentum: float
    batch_size: int
    seed: int
    pretrained: bool = False
    augment_pad: torch.Tensor | None = None
    """Per-channel black level: random crop + flip during training when set (None = no augmentation)."""


@dataclass
class ShardStats:
    """What one call of `ShardTrainer.run` did."""

    shard: int
    first_stage: int
    """First stage trained (= the checkpoint resumed from); R when nothing needed training."""
    samples: int
    """Samples processed (sum of minibatch sizes)."""
    seconds: float


DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
"""Environment a process needs before CUDA starts for deterministic cuBLAS (set by the actor's runtime_env)."""


def use_deterministic_kernels(on: bool) -> None:
    """Deterministic kernels on (cuDNN autotuning off, deterministic cuDNN, torch's deterministic algorithms,
    warning where an op has none) or off (autotuning back on). CPU training is deterministic either way."""
    torch.backends.cudnn.benchmark = not on
    torch.backends.cudnn.deterministic = on
    torch.use_deterministic_algorithms(on, warn_only=True)


def kernel_settings() -> dict[str, Any]:
    """What this process trains with: device, torch version and the determinism switches."""
    return {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_version": torch.__version__,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def stage_seed(seed: int, shard: int, stage: int) -> int:
    """Seed of stage r of shard s (minibatch order, augmentation, dropout)."""
    return stream_seed(seed, Stream.SISA_STAGE, shard, stage)


def new_model(settings: TrainSettings, shard: int, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The shard's initial model (weights seeded by (seed, s)) and a fresh SGD optimizer."""
    torch.manual_seed(stream_seed(settings.seed, Stream.SISA_INIT, shard))
    model = build_classifier(settings.model, settings.input_shape, settings.num_classes, settings.pretrained)
    model = on_device(model, device)
    return model, sgd(model.parameters(), device, lr=settings.lr, momentum=settings.momentum)


def model_from_state(settings: TrainSettings, state: dict[str, Any]) -> nn.Module:
    """A CPU model of the settings' architecture holding `state` (for ensemble prediction)."""
    model = build_classifier(settings.model, settings.input_shape, settings.num_classes)
    model.load_state_dict(state)
    return model.eval()


class ShardTrainer:
    """One shard: its slices, its data and its checkpoint directory."""

    def __init__(
        self,
        shard: int,
        slices: list[np.ndarray],
        x: torch.Tensor,
        y: torch.Tensor,
        settings: TrainSettings,
        directory: str | Path,
        device: torch.device | None = None,
    ):
        """slices[r]: global training indices of slice r; x, y: the shard's data, rows in slice order."""
        self.shard = shard
        self.settings = settings
        self.device = device or torch.device("cpu")
        self.indices = np.concatenate(slices)
        self.bounds = np.cumsum([0] + [len(part) for part in slices])  # union of slices < k = rows[:bounds[k]]
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.store = RunDirectory(Path(directory).resolve())
        self.store.path.mkdir(parents=True, exist_ok=True)

    @property
    def num_slices(self) -> int:
        return len(self.bounds) - 1

    def path(self, k: int) -> Path:
        """Absolute path of checkpoint k."""
        return self.store.file(f"slice{k}.pt")

    def _kept(self, k: int, removed: Collection[int]) -> np.ndarray:
        """Row positions of slices 0..k-1 minus removed points, in slice order."""
        rows = np.arange(self.bounds[k])
        return rows[~np.isin(self.indices[rows], np.fromiter(removed, dtype=np.int64, count=len(removed)))]

    def _valid(self, k: int, removed: Collection[int]) -> bool:
        path = self.path(k)
        if not path.exists():
            return False
        seen = torch.load(path, weights_only=True, mmap=True)["seen"].numpy()
        return np.array_equal(seen, np.sort(self.indices[self._kept(k, removed)]))

    def resume_point(self, removed: Collection[int]) -> int:
        """The last k such that checkpoints 0..k are all valid for `removed` (-1 when none is)."""
        k = -1
        while k < self.num_slices and self._valid(k + 1, removed):
            k += 1
        return k

    def _save(self, k: int, model: nn.Module, optimizer: torch.optim.Optimizer, removed: Collection[int]) -> None:
        seen = torch.from_numpy(np.sort(self.indices[self._kept(k, removed)]))
        self.store.save_state(
            f"slice{k}.pt",
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "seen": seen,
                "shard": self.shard,
                "slice": k,
            },
        )

    def run(self, removed: Collection[int] = (), on_stage: Callable[[int], None] | None = None) -> ShardStats:
        """Bring checkpoints 0..R up to date for the removed points: resume from the last valid checkpoint
        k and train stages k..R-1, saving checkpoint r+1 after stage r. `on_stage(r)` is called after each
        stage's checkpoint is written (progress, fault-injection in tests)."""
        start_time = time.perf_counter()
        removed = set(int(i) for i in removed)
        model, optimizer = new_model(self.settings, self.shard, self.device)
        start = self.resume_point(removed)
        if start < 0:
            self._save(0, model, optimizer, removed)
            start = 0
        else:
            state = torch.load(self.path(start), weights_only=True, map_location=self.device)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        samples = 0
        for r in range(start, self.num_slices):
            rows = torch.from_numpy(self._kept(r + 1, removed)).to(self.device)
            samples += sgd_epochs(
                model,
                optimizer,
                self.x[rows],
                self.y[rows],
                epochs=self.settings.epochs[r],
                batch_size=self.settings.batch_size,
                seed=stage_seed(self.settings.seed, self.shard, r),
                augment_pad=self.settings.augment_pad,
            )
            self._save(r + 1, model, optimizer, removed)
            if on_stage is not None:
                on_stage(r)
        return ShardStats(self.shard, start, samples, time.perf_counter() - start_time)

    def final_state(self) -> dict[str, Any]:
        """The model state dict of checkpoint R (on CPU)."""
        return torch.load(self.path(self.num_slices), weights_only=True, map_location="cpu")["model"]
