"""Shared fixtures: one local Ray per test session with a faked GPU, wandb off."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs and one fake GPU, so fractional-GPU scheduling is exercised on CPU."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()
