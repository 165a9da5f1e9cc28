"""SISA shards as Ray actors: one ShardActor per shard, training in parallel, restarted when it dies.

A restarted actor rebuilds its trainer from the same arguments and Ray retries the interrupted call, which
resumes after the shard's last valid slice checkpoint (rayfed.sisa.train), so a crash costs at most one
slice stage and changes no number.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from tqdm import tqdm

from rayfed.config import ResourcesConfig
from rayfed.engine.runtime import actor_shares, log, setup_worker
from rayfed.sisa.plan import Layout
from rayfed.sisa.train import ShardStats, ShardTrainer, TrainSettings

SHARD_MAX_RESTARTS = 3
"""Restarts allowed per shard actor (each retries the interrupted call)."""


@ray.remote
class ShardActor:
    """One shard's ShardTrainer inside a Ray actor, on whatever device torch sees there."""

    def __init__(self, shard: int, slices: list[np.ndarray], x: torch.Tensor, y: torch.Tensor,
                 settings: TrainSettings, directory: str, threads: int):
        device = setup_worker(threads)
        self.trainer = ShardTrainer(shard, slices, x, y, settings, directory, device)

    def run(self, removed: Collection[int]) -> ShardStats:
        """Train (or retrain after the last valid checkpoint) without the removed points."""
        return self.trainer.run(removed)

    def final_state(self) -> dict[str, Any]:
        """The model state dict after the last slice."""
        return self.trainer.final_state()


class ShardPool:
    """S ShardActors training one ensemble, checkpoints in `directory`/shard{s}/slice{k}.pt."""

    def __init__(self, layout: Layout, x: torch.Tensor, y: torch.Tensor, settings: TrainSettings,
                 directory: Path, resources: ResourcesConfig):
        cpus, gpus = actor_shares(resources.cpus_per_shard, resources.gpus_per_shard, layout.num_shards, "shard")
        options = {"num_cpus": cpus, "num_gpus": gpus,
                   "max_restarts": SHARD_MAX_RESTARTS, "max_task_retries": SHARD_MAX_RESTARTS}
        self.directory = directory
        self.actors = []
        self._data = []  # the shards' data refs, held so that a restarted actor can be rebuilt from them
        for s in range(layout.num_shards):
            rows = torch.from_numpy(layout.shard_indices(s))
            self._data.append((ray.put(x[rows]), ray.put(y[rows])))
            self.actors.append(ShardActor.options(**options).remote(
                s, list(layout.slices[s]), *self._data[-1], settings, str(directory / f"shard{s}"),
                resources.torch_threads))
        ray.get([actor.__ray_ready__.remote() for actor in self.actors])  # timings exclude actor start-up

    def run(self, shards: Sequence[int], removed: Collection[int], desc: str) -> tuple[list[ShardStats], float]:
        """Run the given shards in parallel without the removed points; (per-shard stats, wall seconds).
        Returns only when every one has finished."""
        start = time.perf_counter()
        removed = sorted(int(i) for i in removed)
        pending = {self.actors[s].run.remote(removed): s for s in shards}
        stats = []
        with tqdm(total=len(pending), desc=desc, unit="shard", leave=False) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                stats.append(ray.get(done[0]))
                pending.pop(done[0])
                bar.update()
        seconds = time.perf_counter() - start
        log.info("%s: %d shard(s) in %.1fs", desc, len(stats), seconds)
        return sorted(stats, key=lambda st: st.shard), seconds

    def states(self) -> list[dict[str, Any]]:
        """Every shard's final model state dict, in shard order."""
        return ray.get([actor.final_state.remote() for actor in self.actors])

    def close(self) -> None:
        """Stop the actors (their checkpoints stay on disk)."""
        for actor in self.actors:
            ray.kill(actor)
