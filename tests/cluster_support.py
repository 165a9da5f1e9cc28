"""Helpers for the tests that start Ray heads, SSH servers and simulated clusters of their own: find free ports
and stop exactly the processes a test started (by its unique temp dir or its session), nothing else."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_using(marker: str) -> list[int]:
    """PIDs (but this one) whose command line mentions marker (a test's unique temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def stop_processes(marker: str, session: int | None = None) -> None:
    """SIGTERM, then SIGKILL, the process group `session` (a Popen with start_new_session=True) and every
    process whose command line mentions marker, waiting up to `patience` seconds after each signal (a head's
    gcs_server and autoscaler monitor outlive SIGTERM by more than 15 s: the test's head needs no clean exit)."""
    for sig, patience in ((signal.SIGTERM, 2), (signal.SIGKILL, 15)):
        if session is not None:
            try:
                os.killpg(session, sig)
            except ProcessLookupError:
                pass
        for pid in processes_using(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + patience
        while processes_using(marker) and time.time() < deadline:
            time.sleep(0.5)
