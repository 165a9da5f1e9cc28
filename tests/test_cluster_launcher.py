"""What a user of cluster/local.yaml does, for real: `ray up` (head only) over SSH, `ray submit ...
cluster/launch.py -- fl`, the run directory on the head, `ray down`.

The "head" is this machine, reached through an SSH server that the test starts on 127.0.0.1 (a free port, its
own host key, a throwaway client key, everything in a temp dir T; the sessions get HOME=T/home, so `~` on the
head is T/home). The cluster file is generated from cluster/local.yaml; what differs, and why:

- auth: this user, the throwaway key, and a ProxyCommand to the server's port (Ray's auth has no port key);
- the head is 127.0.0.1 and has no workers; the project mount is T/home/rayfed;
- setup_commands: instead of a fresh venv and pip installs from the network, ~/venv links to the venv running
  the tests, and `PYTHONPATH=~/rayfed` replaces `pip install -e ~/rayfed` (the mounted copy is imported, the
  venv stays untouched); local.yaml's own ~/.bashrc line is kept;
- `ray start --head` gets a free port, 2 CPUs, no dashboard, and RAY_TMPDIR=T (its temp dir and the local
  provider's state file), so the test session's own Ray and any other Ray here are left alone;
- `ray stop` (the real one stops every Ray of the machine) stops only this head's processes: the start
  commands call a script that does that instead, and for `ray down`, which runs `ray stop` in a login shell,
  ~/.bashrc defines a `ray` shell function (it wins over PATH, even after a venv activate) that does the same.
"""

import contextlib
import getpass
import hashlib
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from cluster_support import free_port, processes_using, stop_processes

from rayfed.results import read_table

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
TINY_FL = [
    "--address",
    "auto",
    "--set",
    "data.num_clients=3",
    "--set",
    "fl.rounds=2",
    "--set",
    "fl.methods=[fedavg]",
    "--set",
    "fl.local_epochs=1",
    "--set",
    "tracking.wandb=disabled",
    "--set",
    "metrics.audit_epochs=1",
    "--out",
    "runs/launcher-test",
]

PROXY = textwrap.dedent("""
    # ssh ProxyCommand: relays stdin/stdout to HOST PORT
    import os, socket, sys, threading
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
    def up():
        while data := os.read(0, 65536):
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    threading.Thread(target=up, daemon=True).start()
    while data := s.recv(65536):
        os.write(1, data)
""")

STOP_HEAD = textwrap.dedent("""
    # `ray stop` on the test's head: only the processes of this head's temp dir
    import sys
    sys.path.insert(0, {tests!r})
    from cluster_support import stop_processes
    stop_processes({marker!r})
""")


def proxy_command(temp: Path, port: int) -> str:
    """ssh's ProxyCommand to the test's SSH server."""
    return f"{sys.executable} {temp}/proxy.py 127.0.0.1 {port}"


def run(command: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command[:3])}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture
def ssh_head():
    """An SSH server on 127.0.0.1 for this user with a throwaway key; yields (temp dir, port). Skips where
    sshd, ssh, ssh-keygen or rsync is missing or the server does not let the key in."""
    tools = [SSHD, shutil.which("ssh"), shutil.which("ssh-keygen"), shutil.which("rsync")]
    if not all(t and os.access(t, os.X_OK) for t in tools):
        pytest.skip("needs sshd, ssh, ssh-keygen and rsync (apt-get install openssh-server rsync)")
    temp = Path(tempfile.mkdtemp(prefix="rfup", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port = free_port()
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(temp / key)], check=True)
    shutil.copy(temp / "client_key.pub", temp / "authorized_keys")
    (temp / "home").mkdir()
    (temp / "sshd_config").write_text(
        textwrap.dedent(f"""
        Port {port}
        ListenAddress 127.0.0.1
        HostKey {temp}/host_key
        AuthorizedKeysFile {temp}/authorized_keys
        PidFile {temp}/sshd.pid
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        PermitRootLogin prohibit-password
        StrictModes no
        UsePAM no
        SetEnv HOME={temp}/home
    """)
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    with open(temp / "sshd.log", "w") as log:
        sshd = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(temp / "sshd_config")],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    try:
        (temp / "proxy.py").write_text(PROXY)
        probe = [
            "ssh",
            "-i",
            str(temp / "client_key"),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "BatchMode=yes",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            f"ProxyCommand={proxy_command(temp, port)}",
            f"{getpass.getuser()}@127.0.0.1",
            "echo $HOME",
        ]
        for _ in range(20):
            answer = subprocess.run(probe, capture_output=True, text=True, timeout=30)
            if answer.returncode == 0 or sshd.poll() is not None:
                break
            time.sleep(0.5)
        if answer.stdout.strip() != str(temp / "home"):
            pytest.skip(
                f"could not start an SSH server here: {(temp / 'sshd.log').read_text()[-300:]} {answer.stderr[-300:]}"
            )
        yield temp, port
    finally:
        stop_processes(str(temp), sshd.pid)  # the head's Ray and sshd with its sessions
        leftover = processes_using(str(temp))
        shutil.rmtree(temp, ignore_errors=True)
        assert not leftover, "the test's head is still running"


def remove_ssh_control_path(cluster_name: str) -> None:
    """The folder of SSH control sockets that Ray's SSHCommandRunner keeps for a cluster under /tmp."""
    user, cluster = (hashlib.sha256(name.encode()).hexdigest()[:10] for name in (getpass.getuser(), cluster_name))
    shutil.rmtree(f"/tmp/ray_ssh_{user}/{cluster}", ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(f"/tmp/ray_ssh_{user}")  # only if no other cluster's sockets are left there


def cluster_file(temp: Path, ssh_port: int, ray_port: int) -> dict:
    """cluster/local.yaml adapted to the test's head (see the module docstring)."""
    config = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
    home = temp / "home"
    config["cluster_name"] = f"rayfed-test-{secrets.token_hex(3)}"
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config.update(min_workers=0, max_workers=0)
    config["auth"] = {
        "ssh_user": getpass.getuser(),
        "ssh_private_key": str(temp / "client_key"),
        "ssh_proxy_command": proxy_command(temp, ssh_port),
    }
    (mount,) = config["file_mounts"].values()
    config["file_mounts"] = {str(home / "rayfed"): mount}
    setup = config["setup_commands"]
    assert any("pip install -e ~/rayfed" in c for c in setup), "local.yaml installs rayfed from the mount"
    bashrc = [c for c in setup if "bashrc" in c]
    assert len(bashrc) == 1 and "source ~/venv/bin/activate" in bashrc[0]
    (temp / "stop_head.py").write_text(STOP_HEAD.format(tests=str(ROOT / "tests"), marker=f"{temp}/ray/"))
    stop_head = f"{sys.executable} {temp}/stop_head.py"
    ray_function = f'ray() {{ if [ "$1" = stop ]; then {stop_head}; else command ray "$@"; fi; }}'
    config["setup_commands"] = [
        f"ln -sfn {sys.prefix} ~/venv",
        *bashrc,
        f"echo 'export PYTHONPATH=~/rayfed RAY_TMPDIR={temp}' >> ~/.bashrc",
        f"echo {shlex.quote(ray_function)} >> ~/.bashrc",
    ]
    start = config["head_start_ray_commands"]
    assert any("ray start --head --port=6379" in c for c in start)
    config["head_start_ray_commands"] = [
        c.replace(
            "--port=6379",
            f"--port={ray_port} --num-cpus=2 --include-dashboard=false "
            "--node-ip-address=127.0.0.1 --disable-usage-stats",
        ).replace("ray stop", stop_head)
        for c in start
    ]
    config["worker_start_ray_commands"] = []  # no workers
    assert not [c for c in yaml.safe_dump(config).splitlines() if "ray stop" in c]
    return config


@pytest.mark.slow
def test_ray_up_submit_down_on_a_head_reached_over_ssh(ssh_head):
    temp, ssh_port = ssh_head
    config = cluster_file(temp, ssh_port, free_port())
    path = temp / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    (temp / "launcher").mkdir()
    # the launcher's side in T too: its home, Ray's config cache (TMPDIR), the local provider's state (RAY_TMPDIR)
    env = {
        **os.environ,
        "HOME": str(temp / "launcher"),
        "TMPDIR": str(temp),
        "RAY_TMPDIR": str(temp),
        "PYTHONWARNINGS": "ignore",
    }
    env.pop("RAY_ADDRESS", None)
    head_home = temp / "home"
    try:
        run([RAY, "up", "-y", "--no-config-cache", str(path)], env, timeout=300)
        # every module of the package imports from the mount (the venv's editable install would hide a gap)
        modules = sorted(
            ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for p in (ROOT / "rayfed").rglob("*.py")
            if p.name != "__main__.py"
        )  # that one runs the CLI
        where = "import importlib, sys; [print('FILE', importlib.import_module(m).__file__) for m in sys.argv[1:]]"
        origin = run([RAY, "exec", str(path), f'python -c "{where}" {" ".join(modules)}'], env, timeout=180)
        files = [line.split()[1] for line in origin.stdout.splitlines() if line.startswith("FILE ")]
        assert len(files) == len(modules) and "rayfed.data" in modules, origin.stdout[-2000:]
        outside = [f for f in files if not f.startswith(f"{head_home}/rayfed/rayfed/")]
        assert not outside, f"imported from outside the mount: {outside}"
        submit = run([RAY, "submit", str(path), "cluster/launch.py", "--", "fl", *TINY_FL], env, timeout=420)
        run_dir = head_home / "rayfed" / "runs" / "launcher-test"
        assert f"results in {run_dir}" in submit.stdout + submit.stderr
    finally:
        down = subprocess.run(
            [RAY, "down", "-y", str(path)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
        )
        remove_ssh_control_path(config["cluster_name"])
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    assert not processes_using(f"{temp}/ray/"), "ray down left the head's Ray running"
    rounds = read_table(run_dir / "rounds.parquet")
    assert [(r["method"], r["round"]) for r in rounds] == [("fedavg", 1), ("fedavg", 2)]
    assert all(0 < r["accuracy"] <= 100 for r in rounds)
    clients = read_table(run_dir / "clients.parquet")
    assert sorted({r["client"] for r in clients}) == [0, 1, 2] and len(clients) == 3 * 2
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["fl"]["rounds"] == 2
    assert (head_home / "rayfed" / "rayfed" / "data" / "datasets.py").is_file()
    assert not (head_home / "rayfed" / ".git").exists()
