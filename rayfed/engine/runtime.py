"""Connecting to Ray and sizing actors. The device an actor uses is whatever torch sees inside it."""

from __future__ import annotations

import logging
import math
import os
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ray
import torch

from rayfed.errors import UserError

log = logging.getLogger("rayfed")


def init_ray(address: str | None = None) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), or start a local Ray; no-op inside a running Ray
    (a Tune trial, a test session). Returns True when this call started or joined Ray."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    if address:
        check_reachable(address)
        ray.init(address=address, **kwargs)
    else:
        ray.init(**kwargs)
    return True


REACH_TIMEOUT_S = 10.0
"""How long `check_reachable` waits for a cluster's port to answer."""


def check_reachable(address: str) -> None:
    """UserError unless something listens at a `HOST:PORT` or `ray://HOST:PORT` address (`auto` and other
    forms are Ray's to resolve): ray.init retries an address where nothing listens for minutes, silently."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as error:
        raise UserError(
            f"resources.address: nothing answers at {address} ({error.strerror or error}); is its Ray cluster up?"
        ) from None


def cluster_gpus() -> float:
    """GPUs Ray can schedule in the whole cluster (fakes included, as `ray.init(num_gpus=1)`)."""
    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_cpus() -> float:
    """CPUs Ray can schedule in the whole cluster."""
    return float(ray.cluster_resources().get("CPU", 0.0))


RAY_UNITS = 10_000
"""Ray accounts resources in units of 1/10,000."""


@dataclass(frozen=True)
class Node:
    """What one node offers Ray's scheduler in all (not what is free now)."""

    cpus: float
    gpus: float


def alive_nodes() -> list[Node]:
    """The alive nodes of the cluster, from ray.nodes() (fake GPUs included)."""
    return [
        Node(float(n["Resources"].get("CPU", 0.0)), float(n["Resources"].get("GPU", 0.0)))
        for n in ray.nodes()
        if n["Alive"]
    ]


def _units(amount: float) -> int:
    return round(amount * RAY_UNITS)


def placeable(nodes: Sequence[Node], requests: Sequence[tuple[float, float]]) -> int:
    """How many of the (CPUs, GPUs) requests fit on the nodes at once, packed first-fit, largest first, node
    by node (as Ray places actors that each wait for room). A GPU fraction below one comes out of a single
    GPU (Ray hands fractions out per device), so a node of k GPUs holds k * floor(1 / fraction) of them."""
    free = []
    for node in nodes:
        whole, rest = divmod(_units(node.gpus), RAY_UNITS)
        free.append((_units(node.cpus), [RAY_UNITS] * whole + ([rest] if rest else [])))
    placed = 0
    for cpus, gpus in sorted(((_units(c), _units(g)) for c, g in requests), key=lambda r: (r[1], r[0]), reverse=True):
        for i, (free_cpus, devices) in enumerate(free):
            if free_cpus < cpus:
                continue
            if 0 < gpus < RAY_UNITS:  # a fraction: the first device with room
                device = next((d for d, left in enumerate(devices) if left >= gpus), None)
                if device is None:
                    continue
                devices[device] -= gpus
            elif gpus:  # whole GPUs: that many untouched devices
                untouched = [d for d, left in enumerate(devices) if left == RAY_UNITS][: gpus // RAY_UNITS]
                if len(untouched) * RAY_UNITS < gpus:
                    continue
                for d in untouched:
                    devices[d] = 0
            free[i] = (free_cpus - cpus, devices)
            placed += 1
            break
    return placed


def _largest_share(fits: Callable[[float], bool], most: float) -> float | None:
    """The largest share in Ray's units, at most `most`, for which fits(share) holds (fits must hold for every
    smaller share once it holds for one); 0 when `most` is below one unit, None when not even one unit fits."""
    low, high = 0, math.floor(most * RAY_UNITS + 1e-9)
    if high == 0:
        return 0.0
    while low < high:  # invariant: every share <= low units fits (or low == 0), high is the largest candidate
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid / RAY_UNITS) else (low, mid - 1)
    return low / RAY_UNITS if low else None


def fit_shares(
    nodes: Sequence[Node],
    cpus: float | str,
    gpus: float | str,
    num_actors: int,
    keys: tuple[str, str],
    most: tuple[float, float] = (1.0, 1.0),
    drivers: int = 0,
) -> tuple[float, float]:
    """(CPUs, GPUs) per actor for num_actors identical actors that must all run at once on the nodes.

    A number is kept; `auto` is the largest share in Ray's 1/10,000 units, at most `most` (one CPU, one GPU),
    with which all the actors fit when packed node by node (`placeable`): first the GPU share, then the CPU
    share next to it. So 11 actors on five 1-GPU nodes get 0.3333 GPU (three to a node), not 5/11 (two to a
    node: ten placed). `auto` is 0 where no node has that resource. `drivers` CPU-only processes of the same
    CPU share must fit alongside (Tune trials' drivers). Raises UserError naming `keys` (the config keys of
    the CPU and the GPU share) when the actors cannot all be placed.
    """

    def fits(cpu: float, gpu: float) -> bool:
        requests = [(cpu, gpu)] * num_actors + [(cpu, 0.0)] * drivers
        return placeable(nodes, requests) == len(requests)

    def auto(resource: str, fits_with: Callable[[float], bool], cap: float) -> float | None:
        return _largest_share(fits_with, cap) if any(getattr(n, resource) > 0 for n in nodes) else 0.0

    fixed_cpu = None if cpus == "auto" else float(cpus)
    gpu = float(gpus) if gpus != "auto" else auto("gpus", lambda g: fits(fixed_cpu or 0.0, g), most[1])
    cpu = fixed_cpu if fixed_cpu is not None else auto("cpus", lambda c: fits(c, gpu or 0.0), most[0])
    if cpu is not None and gpu is not None and fits(cpu, gpu):
        return cpu, gpu
    sizes = [f"{share:g} {name}" for share, name in ((cpu, "CPU"), (gpu, "GPU")) if share]  # None: no auto fits
    smallest = 1 / RAY_UNITS  # what an `auto` share that found no fit tried last
    cpu, gpu = (smallest if cpu is None else cpu), (smallest if gpu is None else gpu)
    settings = dict(zip(keys, (cpus, gpus)))
    blamed = {k: v for k, v in settings.items() if v != "auto"} or settings
    held = placeable(nodes, [(cpu, gpu)] * num_actors + [(cpu, 0.0)] * drivers)
    raise UserError(
        f"{' and '.join(f'{k}={v}' for k, v in blamed.items())}: {num_actors} actors of "
        f"{' + '.join(sizes) or 'any size'}{f' and {drivers} drivers' if drivers else ''} cannot all be "
        f"placed on the cluster's nodes ({describe(nodes)}), which hold only {held} of them at once"
    )


def describe(nodes: Sequence[Node]) -> str:
    """`3 x (4 CPU, 1 GPU) + 1 x (8 CPU, 0 GPU)`: the nodes by kind."""
    kinds = Counter((n.cpus, n.gpus) for n in nodes)
    return " + ".join(f"{count} x ({c:g} CPU, {g:g} GPU)" for (c, g), count in kinds.items()) or "none"


def actor_shares(cpus: float | str, gpus: float | str, num_actors: int, kind: str) -> tuple[float, float]:
    """`fit_shares` on the cluster's alive nodes for num_actors actors configured by
    resources.cpus_per_{kind} and resources.gpus_per_{kind} (kind: client or shard)."""
    keys = (f"resources.cpus_per_{kind}", f"resources.gpus_per_{kind}")
    return fit_shares(alive_nodes(), cpus, gpus, num_actors, keys)


def actor_device() -> torch.device:
    """The torch device inside an actor: CUDA when torch sees a GPU, else CPU (never from Ray's ids)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup_worker(threads: int) -> torch.device:
    """Per-actor torch settings: intra-op threads, cuDNN autotuning on GPU; returns the device."""
    torch.set_num_threads(threads)
    device = actor_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device
