"""A real head node on loopback (`ray start --head`, token authentication on) and a `rayfed fl` run that joins
it by address. Only this test's head is stopped: its process group, then any process of its temp dir."""

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cluster_support import free_port, processes_using, stop_processes

from rayfed.results import read_table

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture
def head():
    """A 2-CPU head on 127.0.0.1 with its own port, temp dir and auth token; yields (address, env, temp dir)."""
    temp_dir = tempfile.mkdtemp(prefix="rfhead", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = free_port()
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "PYTHONWARNINGS": "ignore",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--port",
            str(port),
            "--temp-dir",
            temp_dir,
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--node-ip-address",
            "127.0.0.1",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=180)
        assert process.returncode == 0, output
        yield f"127.0.0.1:{port}", env, Path(temp_dir)
    finally:
        stop_processes(temp_dir, process.pid)
        leftover = processes_using(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftover, "the test's head node is still running"


@pytest.mark.slow
def test_fl_joins_a_head_node_by_address(head, tmp_path):
    address, env, temp_dir = head
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rayfed",
            "fl",
            "--address",
            address,
            "--set",
            "fl.rounds=1",
            "--set",
            "data.num_clients=2",
            "--set",
            "fl.methods=[fedavg]",
            "--set",
            "fl.local_epochs=1",
            "--set",
            "metrics.audit_epochs=1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=420,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rounds = read_table(out / "rounds.parquet")
    assert [(r["method"], r["round"]) for r in rounds] == [("fedavg", 1)]
    assert len(read_table(out / "clients.parquet")) == 2
    assert (out / "summary.md").is_file()
    worker_logs = (temp_dir / "session_latest" / "logs").glob("worker-*.out")
    assert any(":actor_name:ClientActor" in log.read_text(errors="replace") for log in worker_logs), (
        "the client actors should have run on this head"
    )
