"""What a trial reserves: one placement-group bundle for the trial driver and one per actor it starts.

A trial's budget (CPUs, GPUs) is shared among its processes: CPUs among the driver and every actor, GPUs
among the actors, and the shares shrink until max_concurrent_trials trials fit on the cluster's nodes at
once, packed node by node (rayfed.engine.runtime.fit_shares). `resources.*` values that a config sets to a
number are kept; `auto` ones are filled from the budget. A trial whose bundles cannot all be placed on the
nodes is refused with an error instead of waiting forever. The trainable writes the same explicit fractions
into its config, so every actor it starts fits into (and is captured by) the trial's placement group, and
concurrent trials never starve each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ray.tune import PlacementGroupFactory

from rayfed.config import Config
from rayfed.engine.runtime import RAY_UNITS, Node, describe, fit_shares, placeable
from rayfed.errors import UserError
from rayfed.fl.strategies import seeded_runs


@dataclass(frozen=True)
class TrialBudget:
    """Total CPUs and GPUs one trial may reserve, its driver included."""

    cpus: float
    gpus: float
    nodes: tuple[Node, ...]
    """The cluster's alive nodes, on which the trials' placement groups must fit."""
    trials: int = 1
    """Trials meant to run at once (max_concurrent_trials)."""


def budget_for(nodes: Sequence[Node], concurrent: int | None, cpus: float | None, gpus: float | None) -> TrialBudget:
    """The per-trial budget: as given, else the nodes' resources shared by max_concurrent_trials
    (one trial at a time when that is unset)."""
    share = concurrent or 1
    return TrialBudget(
        cpus if cpus is not None else sum(n.cpus for n in nodes) / share,
        gpus if gpus is not None else sum(n.gpus for n in nodes) / share,
        tuple(nodes),
        share,
    )


def _floor(value: float) -> float:
    return math.floor(value * RAY_UNITS) / RAY_UNITS


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
        audited = sum(run.needs_audit for run, _ in seeded_runs(config))
        servers = r.server_count(audited, budget.cpus, budget.gpus)
        actors = clients + servers
    else:
        actors = config.sisa.shards  # run_sisa's shard actors train every ensemble and run the baselines
    most = (_floor(budget.cpus / (actors + 1)), min(1.0, _floor(budget.gpus / actors)))  # one GPU at most
    if most[0] <= 0:
        raise UserError(f"trial_resources.cpus={budget.cpus:g} is too small for {actors} actors and a driver")
    cpu_share, gpu_share = fit_shares(
        budget.nodes,
        "auto",
        "auto",
        actors * budget.trials,
        ("trial_resources.cpus", "trial_resources.gpus"),
        most,
        drivers=budget.trials,
    )
    if run == "fl":
        client = (_fraction(r.cpus_per_client, cpu_share), _fraction(r.gpus_per_client, gpu_share))
        server = (_fraction(r.server_cpus, cpu_share), _fraction(r.server_gpus, gpu_share))
        overrides = {
            "cpus_per_client": client[0],
            "gpus_per_client": client[1],
            "server_cpus": server[0],
            "server_gpus": server[1],
            "clients_per_actor": per_actor,
            "audit_servers": servers,
        }
        plan = TrialPlan(cpu_share, (client,) * clients + (server,) * servers, overrides)
    else:
        shard = (_fraction(r.cpus_per_shard, cpu_share), _fraction(r.gpus_per_shard, gpu_share))
        plan = TrialPlan(cpu_share, (shard,) * actors, {"cpus_per_shard": shard[0], "gpus_per_shard": shard[1]})
    _check_placeable(plan, budget.nodes, config)
    return plan


def _check_placeable(plan: TrialPlan, nodes: Sequence[Node], config: Config) -> None:
    """UserError naming the `resources.*` numbers of the config when the trial's bundles cannot all be placed."""
    bundles = [(plan.driver_cpus, 0.0), *plan.actors]
    held = placeable(nodes, bundles)
    if held == len(bundles):
        return
    explicit = [
        f"resources.{key}={getattr(config.resources, key)}"
        for key in plan.overrides
        if getattr(config.resources, key) != "auto"
    ]
    raise UserError(
        f"{' and '.join(explicit) or 'trial_resources'}: a trial's {len(bundles)} bundles (driver + "
        f"actors) cannot all be placed on the cluster's nodes ({describe(nodes)}), which hold only {held}"
    )
