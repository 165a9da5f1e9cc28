"""SISA shards as Ray actors: one ShardActor per shard, training in parallel, restarted when it dies.

A restarted actor rebuilds its trainer from the same arguments and Ray retries the interrupted call, which
resumes after the shard's last valid slice checkpoint (rayfed.sisa.train), so a crash costs at most one
slice stage and changes no number. Every shard actor (and every unsharded-baseline task) turns deterministic
kernels on unless `sisa.deterministic` is false, with CUBLAS_WORKSPACE_CONFIG in its runtime environment.
A step in which no shard finishes a slice stage for `resources.stall_timeout` seconds fails (RunStalled naming
the shards it waited for) instead of hanging.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from tqdm import tqdm

from rayfed.config import ResourcesConfig
from rayfed.engine.runtime import actor_shares, log, setup_worker
from rayfed.errors import RunStalled
from rayfed.sisa.plan import Layout
from rayfed.sisa.train import (
    DETERMINISTIC_ENV,
    ShardStats,
    ShardTrainer,
    TrainSettings,
    kernel_settings,
    use_deterministic_kernels,
)

SHARD_MAX_RESTARTS = 3
"""Restarts allowed per shard actor (each retries the interrupted call)."""


def worker_options(resources: ResourcesConfig, num_shards: int, deterministic: bool) -> dict[str, Any]:
    """Ray options of a shard actor or baseline task: its CPU and GPU share, and the deterministic runtime env."""
    cpus, gpus = actor_shares(resources.cpus_per_shard, resources.gpus_per_shard, num_shards, "shard")
    return {
        "num_cpus": cpus,
        "num_gpus": gpus,
        "runtime_env": {"env_vars": DETERMINISTIC_ENV} if deterministic else None,
    }


@ray.remote(num_cpus=0)
class StageCounter:
    """Slice stages finished by a pool's shards: the progress that `ShardPool.run` watches for stalls."""

    def __init__(self):
        self.stages = 0

    def add(self) -> None:
        self.stages += 1

    def count(self) -> int:
        return self.stages


@ray.remote
class ShardActor:
    """One shard's ShardTrainer inside a Ray actor, on whatever device torch sees there."""

    def __init__(
        self,
        shard: int,
        slices: list[np.ndarray],
        x: torch.Tensor,
        y: torch.Tensor,
        settings: TrainSettings,
        directory: str,
        threads: int,
        deterministic: bool,
        counter,
    ):
        device = setup_worker(threads)
        use_deterministic_kernels(deterministic)
        self.trainer = ShardTrainer(shard, slices, x, y, settings, directory, device)
        self.counter = counter

    def run(self, removed: Collection[int]) -> ShardStats:
        """Train (or retrain after the last valid checkpoint) without the removed points, counting stages."""
        return self.trainer.run(removed, on_stage=lambda _: self.counter.add.remote())

    def final_state(self) -> dict[str, Any]:
        """The model state dict after the last slice."""
        return self.trainer.final_state()

    def kernel_settings(self) -> dict[str, Any]:
        """Device, torch version and determinism switches in this actor."""
        return kernel_settings()


@ray.remote(max_retries=SHARD_MAX_RESTARTS)
def run_in_worker(job: Callable, threads: int, deterministic: bool, *args: Any) -> Any:
    """job(*args, device=...) in a Ray worker with the shard actors' torch settings (the unsharded baselines)."""
    device = setup_worker(threads)
    use_deterministic_kernels(deterministic)
    return job(*args, device=device)


class ShardPool:
    """S ShardActors training one ensemble, checkpoints in `directory`/shard{s}/slice{k}.pt."""

    def __init__(
        self,
        layout: Layout,
        x: torch.Tensor,
        y: torch.Tensor,
        settings: TrainSettings,
        directory: Path,
        resources: ResourcesConfig,
        deterministic: bool = True,
    ):
        options = {
            **worker_options(resources, layout.num_shards, deterministic),
            "max_restarts": SHARD_MAX_RESTARTS,
            "max_task_retries": SHARD_MAX_RESTARTS,
        }
        self.directory, self.stall_timeout = directory, resources.stall_timeout
        self.counter = StageCounter.remote()
        self.actors = []
        self._data = []  # the shards' data refs, held so that a restarted actor can be rebuilt from them
        for s in range(layout.num_shards):
            rows = torch.from_numpy(layout.shard_indices(s))
            self._data.append((ray.put(x[rows]), ray.put(y[rows])))
            self.actors.append(
                ShardActor.options(**options).remote(
                    s,
                    list(layout.slices[s]),
                    *self._data[-1],
                    settings,
                    str(directory / f"shard{s}"),
                    resources.torch_threads,
                    deterministic,
                    self.counter,
                )
            )
        ray.get([actor.__ray_ready__.remote() for actor in self.actors])  # timings exclude actor start-up

    def run(self, shards: Sequence[int], removed: Collection[int], desc: str) -> tuple[list[ShardStats], float]:
        """Run the given shards in parallel without the removed points; (per-shard stats, wall seconds).
        Returns only when every one has finished; RunStalled when no slice stage finishes for stall_timeout."""
        start = time.perf_counter()
        removed = sorted(int(i) for i in removed)
        pending = {self.actors[s].run.remote(removed): s for s in shards}
        stats = []
        stages, last_progress = ray.get(self.counter.count.remote()), time.perf_counter()
        with tqdm(total=len(pending), desc=desc, unit="shard", leave=False) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=min(1.0, self.stall_timeout))
                now = ray.get(self.counter.count.remote())
                if done or now > stages:
                    stages, last_progress = now, time.perf_counter()
                elif time.perf_counter() - last_progress > self.stall_timeout:
                    raise RunStalled(
                        f"{desc}: shard(s) {sorted(pending.values())} finished no slice stage in "
                        f"{self.stall_timeout:g} s (resources.stall_timeout)"
                    )
                for ref in done:
                    stats.append(ray.get(ref))
                    pending.pop(ref)
                    bar.update()
        seconds = time.perf_counter() - start
        log.info("%s: %d shard(s) in %.1fs", desc, len(stats), seconds)
        return sorted(stats, key=lambda st: st.shard), seconds

    def states(self) -> list[dict[str, Any]]:
        """Every shard's final model state dict, in shard order."""
        return ray.get([actor.final_state.remote() for actor in self.actors])

    def kernel_settings(self) -> dict[str, Any]:
        """Device, torch version and determinism of the pool (shard 0's actor: they share options)."""
        return ray.get(self.actors[0].kernel_settings.remote())

    def close(self) -> None:
        """Stop the actors (their checkpoints stay on disk)."""
        for actor in self.actors + [self.counter]:
            ray.kill(actor)
