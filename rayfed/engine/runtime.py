"""Connecting to Ray and sizing actors. The device an actor uses is whatever torch sees inside it."""

from __future__ import annotations

import logging
import os

import ray
import torch

log = logging.getLogger("rayfed")


def init_ray(address: str | None = None) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), or start a local Ray; no-op inside a running Ray
    (a Tune trial, a test session). Returns True when this call started or joined Ray."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(**kwargs)
    return True


def cluster_gpus() -> float:
    """GPUs Ray can schedule in the whole cluster (fakes included, as `ray.init(num_gpus=1)`)."""
    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_cpus() -> float:
    """CPUs Ray can schedule in the whole cluster."""
    return float(ray.cluster_resources().get("CPU", 0.0))


def _share(setting: float | str, total: float, num_actors: int) -> float:
    if setting != "auto":
        return float(setting)
    if total == 0:
        return 0.0
    share = min(1.0, total / max(1, num_actors))
    return max(0.0001, int(share * 10_000) / 10_000)  # Ray accepts four decimals


def gpu_share(setting: float | str, num_actors: int) -> float:
    """GPU fraction per actor: a number as given, or `auto` = the cluster's GPUs shared by num_actors
    (at most one GPU each; 0 without GPUs)."""
    return _share(setting, cluster_gpus(), num_actors)


def cpu_share(setting: float | str, num_actors: int) -> float:
    """CPU fraction per actor: a number as given, or `auto` = the cluster's CPUs shared by num_actors
    (at most one CPU each), so that all of them can run at once."""
    return _share(setting, cluster_cpus(), num_actors)


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
