"""A real head node on loopback (`ray start --head`, token authentication on) and a `rayfed fl` run that joins
it by address. Only this test's head is stopped: its process group, then any process of its temp dir."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rayfed.results import read_table

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_using(marker: str) -> list[int]:
    """PIDs whose command line mentions marker (this test's unique temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return [pid for pid in pids if pid != os.getpid()]


def stop_head(process: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM this head's process group and every process of its temp dir; SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        for pid in processes_using(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 15
        while processes_using(temp_dir) and time.time() < deadline:
            time.sleep(0.5)


@pytest.fixture
def head():
    """A 2-CPU head on 127.0.0.1 with its own port, temp dir and auth token; yields (address, env, temp dir)."""
    temp_dir = tempfile.mkdtemp(prefix="rfhead", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = free_port()
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(
        [RAY, "start", "--head", "--port", str(port), "--temp-dir", temp_dir, "--num-cpus", "2",
         "--include-dashboard=false", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=180)
        assert process.returncode == 0, output
        yield f"127.0.0.1:{port}", env, Path(temp_dir)
    finally:
        stop_head(process, temp_dir)
        assert not processes_using(temp_dir), "the test's head node is still running"


@pytest.mark.slow
def test_fl_joins_a_head_node_by_address(head, tmp_path):
    address, env, temp_dir = head
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "rayfed", "fl", "--address", address, "--set", "fl.rounds=1",
         "--set", "data.num_clients=2", "--set", "fl.methods=[fedavg]", "--set", "fl.local_epochs=1",
         "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=420)
    assert result.returncode == 0, result.stderr[-3000:]
    rounds = read_table(out / "rounds.parquet")
    assert [(r["method"], r["round"]) for r in rounds] == [("fedavg", 1)]
    assert len(read_table(out / "clients.parquet")) == 2
    assert (out / "summary.md").is_file()
    worker_logs = (temp_dir / "session_latest" / "logs").glob("worker-*.out")
    assert any(":actor_name:ClientActor" in log.read_text(errors="replace") for log in worker_logs), \
        "the client actors should have run on this head"
