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


def _assert_same_run(a, b) -> None:
    """Two `rayfed fl` run directories hold the same tables (but for wall times) and the same final weights."""
    import pandas as pd
    import torch

    for name in ("rounds.parquet", "clients.parquet", "audit.parquet"):
        left = pd.read_parquet(a / name).drop(columns=["seconds"], errors="ignore")
        right = pd.read_parquet(b / name).drop(columns=["seconds"], errors="ignore")
        pd.testing.assert_frame_equal(left, right)
    models = sorted(p.name for p in a.glob("model_*.pt"))
    assert models and models == sorted(p.name for p in b.glob("model_*.pt"))
    for name in models:
        sa, sb = torch.load(a / name, weights_only=True), torch.load(b / name, weights_only=True)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def assert_same_run():
    """The check that two fl runs computed the same thing."""
    return _assert_same_run


@pytest.fixture
def cpu_compiler():
    """For tests of audit.gan_step=compiled on CPU: skips where torch.compile cannot build here (no C++ compiler,
    an unsupported Python), where rayfed itself falls back to the eager step (tests/test_gan_step.py tests that)."""
    import torch

    from rayfed.fl.gan_audit import compile_unavailable

    reason = compile_unavailable(torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"torch.compile cannot build on this CPU: {reason}")


def _kill_session(process) -> None:
    """SIGKILL a subprocess started with start_new_session=True and everything in its session (its Ray too)."""
    import signal

    session = os.getsid(process.pid)
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            if os.getsid(pid) == session:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.wait()


class SessionKiller:
    """A thread that kills a `rayfed` subprocess the hard way (the driver and the local Ray it started) once
    `ready()` holds, so the test can do other work (its reference run) while the victim runs up to that point."""

    def __init__(self, process, ready, timeout: float = 600) -> None:
        import threading

        self.process, self.ready, self.timeout = process, ready, timeout
        self.outcome = "running"
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        import time

        deadline = time.time() + self.timeout
        while not self.ready():
            if self.process.poll() is not None:
                self.outcome = "the run ended before it could be killed"
                return
            if time.time() > deadline:
                self.outcome = f"the run did not reach the kill point in {self.timeout:.0f} s"
                _kill_session(self.process)
                return
            time.sleep(0.05)
        _kill_session(self.process)
        self.outcome = "killed"

    def join(self) -> None:
        """Wait for the kill; fail the test if the run ended or stalled before its kill point."""
        self._thread.join()
        assert self.outcome == "killed", self.outcome


@pytest.fixture(scope="session")
def kill_session_when():
    """`kill_session_when(process, ready)`: a SessionKiller watching a subprocess started with
    start_new_session=True; `.join()` waits until it has been killed."""
    return SessionKiller


@pytest.fixture(scope="session")
def rayfed_cli():
    """`rayfed` command lines forked from one process that imported rayfed once (tests/cli_runner.py): a real
    exit status and real stdout and stderr for each, without Python's and torch's start-up for each."""
    from cli_runner import RayfedCli

    cli = RayfedCli()
    yield cli
    cli.close()
