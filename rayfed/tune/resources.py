"""What a trial reserves: one placement-group bundle for the trial driver and one per actor it starts.

A trial's budget (CPUs, GPUs) is shared among its processes: CPUs among the driver and every actor, GPUs
among the actors. `resources.*` values that a config sets to a number are kept; `auto` ones are filled from
the budget. The trainable writes the same explicit fractions into its config, so every actor it starts fits
into (and is captured by) the trial's placement group, and concurrent trials never starve each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ray.tune import PlacementGroupFactory

from rayfed.config import Config
from rayfed.errors import UserError

RAY_RESOLUTION = 10_000
"""Ray accounts resources in units of 1/10,000."""


@dataclass(frozen=True)
class TrialBudget:
    """Total CPUs and GPUs one trial may reserve, its driver included."""

    cpus: float
    gpus: float


def budget_for(cluster: dict[str, float], concurrent: int | None, cpus: float | None,
               gpus: float | None) -> TrialBudget:
    """The per-trial budget: as given, else the cluster's resources shared by max_concurrent_trials
    (one trial at a time when that is unset)."""
    share = concurrent or 1
    return TrialBudget(
        cpus if cpus is not None else cluster.get("CPU", 0.0) / share,
        gpus if gpus is not None else cluster.get("GPU", 0.0) / share,
    )


def _floor(value: float) -> float:
    return math.floor(value * RAY_RESOLUTION) / RAY_RESOLUTION


def _fraction(setting: float | str, share: float) -> float:
    return float(setting) if setting != "auto" else share


@dataclass(frozen=True)
class TrialPlan:
    """The explicit resources of one trial."""

    driver_cpus: float
    actors: tuple[tuple[float, float], ...]
    """(CPUs, GPUs) of every actor the trial has alive at its peak."""
    overrides: dict[str, float]
    """`resources.*` keys -> the numbers the trial's config must use."""

    def placement_group(self) -> PlacementGroupFactory:
        """Tune's resource request: the driver's bundle first, then one bundle per actor."""
        bundles = [{"CPU": self.driver_cpus}]
        for cpus, gpus in self.actors:
            bundle = {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}
            if bundle:
                bundles.append(bundle)
        return PlacementGroupFactory(bundles, strategy="PACK")

    @property
    def total(self) -> dict[str, float]:
        """The CPUs and GPUs the trial reserves in all."""
        return {"CPU": self.driver_cpus + sum(c for c, _ in self.actors), "GPU": sum(g for _, g in self.actors)}


def plan_trial(run: str, config: Config, budget: TrialBudget) -> TrialPlan:
    """Explicit per-actor fractions for a trial of `run` (fl or sisa) within `budget`."""
    r = config.resources
    if run == "fl":
        per_actor = r.actor_capacity(config.data.num_clients, budget.cpus, budget.gpus)
        clients = math.ceil(config.data.num_clients / per_actor)
        actors = clients + 1  # + the audit server
    else:
        actors = config.sisa.shards  # one pool at a time: run_sisa closes each before the next starts
    cpu_share = _floor(budget.cpus / (actors + 1))
    gpu_share = _floor(budget.gpus / actors)
    if cpu_share <= 0:
        raise UserError(f"trial_resources.cpus={budget.cpus:g} is too small for {actors} actors and a driver")
    if run == "fl":
        client = (_fraction(r.cpus_per_client, cpu_share), _fraction(r.gpus_per_client, gpu_share))
        server = (_fraction(r.server_cpus, cpu_share), _fraction(r.server_gpus, gpu_share))
        overrides = {"cpus_per_client": client[0], "gpus_per_client": client[1],
                     "server_cpus": server[0], "server_gpus": server[1], "clients_per_actor": per_actor}
        return TrialPlan(cpu_share, (client,) * clients + (server,), overrides)
    shard = (_fraction(r.cpus_per_shard, cpu_share), _fraction(r.gpus_per_shard, gpu_share))
    return TrialPlan(cpu_share, (shard,) * actors, {"cpus_per_shard": shard[0], "gpus_per_shard": shard[1]})
