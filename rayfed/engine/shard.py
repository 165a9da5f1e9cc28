"""SISA shards on Ray: S ShardActors started once per `rayfed sisa` run, each training its shard of every
ensemble the run builds (the main one, the reference retrained from scratch, the backdoor one, every seed's)
and running the unsharded baselines, restarted when it dies.

An actor starts once (a process, torch, its CUDA context) and then serves jobs: a `ShardJob` names the shard,
its slices, its data (object refs) and its checkpoint directory, and the actor keeps the trainer of the last
job it served. A restarted actor rebuilds that trainer from the job that Ray retries with the interrupted call,
which resumes after the shard's last valid slice checkpoint (rayfed.sisa.train), so a crash costs at most one
slice stage and changes no number; an actor that dies once more after SHARD_MAX_RESTARTS restarts stops the run
(ActorsLost naming the step; --resume finishes it). Every shard actor turns deterministic kernels on unless
`sisa.deterministic` is false, with CUBLAS_WORKSPACE_CONFIG in its runtime environment. A step in which no
shard finishes a slice stage for `resources.stall_timeout` seconds fails (RunStalled naming the shards it
waited for) instead of hanging.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError
from tqdm import tqdm

from rayfed.config import ResourcesConfig
from rayfed.engine.runtime import actor_shares, log, setup_worker
from rayfed.errors import ActorsLost, RunStalled
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


@dataclass(frozen=True, eq=False)
class ShardJob:
    """One shard of one ensemble: what an actor needs to build its ShardTrainer. `directory` (the shard's
    checkpoint folder) identifies the job; x and y are object refs, fetched by the actor that builds it."""

    shard: int
    slices: list[np.ndarray]
    x: ray.ObjectRef
    y: ray.ObjectRef
    settings: TrainSettings
    directory: str


@ray.remote(num_cpus=0)
class StageCounter:
    """Slice stages finished by the shards: the progress that `ShardPool.run` watches for stalls."""

    def __init__(self):
        self.stages = 0

    def add(self) -> None:
        self.stages += 1

    def count(self) -> int:
        return self.stages


@ray.remote
class ShardActor:
    """Trains shards (the trainer of the last job it served stays built) and runs baseline jobs, on whatever
    device torch sees there, with the run's torch threads and kernel settings."""

    def __init__(self, threads: int, deterministic: bool, counter):
        self.device = setup_worker(threads)
        use_deterministic_kernels(deterministic)
        self.counter = counter
        self.job: ShardJob | None = None
        self.trainer: ShardTrainer | None = None

    def _trainer(self, job: ShardJob) -> ShardTrainer:
        if self.job is None or self.job.directory != job.directory:
            x, y = ray.get([job.x, job.y])
            self.trainer = ShardTrainer(job.shard, job.slices, x, y, job.settings, job.directory, self.device)
            self.job = job
        return self.trainer

    def load(self, job: ShardJob) -> None:
        """Build the job's trainer now (its data on the device), so that `run`'s timings exclude it."""
        self._trainer(job)

    def run(self, job: ShardJob, removed: Collection[int]) -> ShardStats:
        """Train (or retrain after the last valid checkpoint) the job's shard without the removed points,
        counting stages."""
        return self._trainer(job).run(removed, on_stage=lambda _: self.counter.add.remote())

    def final_state(self, job: ShardJob) -> dict[str, Any]:
        """The job's model state dict after the last slice."""
        return self._trainer(job).final_state()

    def kernel_settings(self) -> dict[str, Any]:
        """Device, torch version and determinism switches in this actor."""
        return kernel_settings()

    def call(self, function: Callable, *args: Any) -> Any:
        """function(*args, device=...) here (the unsharded baselines)."""
        return function(*args, device=self.device)


class ShardWorkers:
    """The run's S ShardActors (actor s trains shard s of every ensemble) and the stage counter they share."""

    def __init__(self, num_shards: int, resources: ResourcesConfig, deterministic: bool = True):
        cpus, gpus = actor_shares(resources.cpus_per_shard, resources.gpus_per_shard, num_shards, "shard")
        options = {
            "num_cpus": cpus,
            "num_gpus": gpus,
            "runtime_env": {"env_vars": DETERMINISTIC_ENV} if deterministic else None,
            "max_restarts": SHARD_MAX_RESTARTS,
            "max_task_retries": SHARD_MAX_RESTARTS,
        }
        self.stall_timeout = resources.stall_timeout
        self.counter = StageCounter.remote()
        self.actors = [
            ShardActor.options(**options).remote(resources.torch_threads, deterministic, self.counter)
            for _ in range(num_shards)
        ]
        self._next = itertools.cycle(self.actors)
        ray.get([actor.__ray_ready__.remote() for actor in self.actors])  # timings exclude actor start-up

    def get(self, refs: Any, what: str) -> Any:
        """ray.get(refs) of shard actors' work; ActorsLost naming `what` if an actor died with no restarts left."""
        try:
            return ray.get(refs)
        except RayActorError as exc:
            raise ActorsLost(
                f"{what}: a shard actor died with no restarts left ({SHARD_MAX_RESTARTS} per actor; "
                f"{str(exc).splitlines()[0]}); --resume finishes the run from its checkpoints"
            ) from None

    def call(self, function: Callable, *args: Any, num_returns: int = 1) -> Any:
        """function(*args, device=...) on the next actor in turn: its object ref (refs with num_returns > 1)."""
        return next(self._next).call.options(num_returns=num_returns).remote(function, *args)

    def kernel_settings(self) -> dict[str, Any]:
        """Device, torch version and determinism of the actors (the first one's: they share options)."""
        return self.get(self.actors[0].kernel_settings.remote(), "the shard actors' kernel settings")

    def close(self) -> None:
        """Stop the actors (their checkpoints stay on disk)."""
        for actor in self.actors + [self.counter]:
            ray.kill(actor)


class ShardPool:
    """One ensemble of S shards trained by the workers, checkpoints in `directory`/shard{s}/slice{k}.pt."""

    def __init__(
        self,
        workers: ShardWorkers,
        layout: Layout,
        x: torch.Tensor,
        y: torch.Tensor,
        settings: TrainSettings,
        directory: Path,
    ):
        if layout.num_shards != len(workers.actors):
            raise ValueError(f"{layout.num_shards} shards for {len(workers.actors)} shard actors")
        self.workers, self.directory = workers, directory
        self.jobs = []
        for s in range(layout.num_shards):
            rows = torch.from_numpy(layout.shard_indices(s))
            data = ray.put(x[rows]), ray.put(y[rows])
            self.jobs.append(ShardJob(s, list(layout.slices[s]), *data, settings, str(directory / f"shard{s}")))
        workers.get([actor.load.remote(job) for actor, job in zip(workers.actors, self.jobs)], f"loading {directory}")

    def submit(self, shards: Sequence[int], removed: Collection[int]) -> dict[ray.ObjectRef, int]:
        """Start the given shards without the removed points: {ref of its ShardStats: shard}."""
        removed = sorted(int(i) for i in removed)
        return {self.workers.actors[s].run.remote(self.jobs[s], removed): s for s in shards}

    def run(self, shards: Sequence[int], removed: Collection[int], desc: str) -> tuple[list[ShardStats], float]:
        """Run the given shards in parallel without the removed points; (per-shard stats, wall seconds).
        Returns only when every one has finished; RunStalled when no slice stage finishes for stall_timeout."""
        start = time.perf_counter()
        pending = self.submit(shards, removed)
        counter, stall_timeout = self.workers.counter, self.workers.stall_timeout
        stats = []
        stages, last_progress = ray.get(counter.count.remote()), time.perf_counter()
        with tqdm(total=len(pending), desc=desc, unit="shard", leave=False) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=min(1.0, stall_timeout))
                now = ray.get(counter.count.remote())
                if done or now > stages:
                    stages, last_progress = now, time.perf_counter()
                elif time.perf_counter() - last_progress > stall_timeout:
                    raise RunStalled(
                        f"{desc}: shard(s) {sorted(pending.values())} finished no slice stage in "
                        f"{stall_timeout:g} s (resources.stall_timeout)"
                    )
                for ref in done:
                    stats.append(self.workers.get(ref, f"{desc}: shard {pending[ref]}"))
                    pending.pop(ref)
                    bar.update()
        seconds = time.perf_counter() - start
        log.info("%s: %d shard(s) in %.1fs", desc, len(stats), seconds)
        return sorted(stats, key=lambda st: st.shard), seconds

    def states(self) -> list[dict[str, Any]]:
        """Every shard's final model state dict, in shard order."""
        refs = [actor.final_state.remote(job) for actor, job in zip(self.workers.actors, self.jobs)]
        return self.workers.get(refs, f"the final states of {self.directory}")
