"""Actor shares that fit node by node (rayfed.engine.runtime.fit_shares), hand-computed, and a real `rayfed fl`
run on a simulated cluster of one-GPU nodes with more actors than fit on one node."""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest
from cluster_support import stop_processes

from rayfed.config import build_config
from rayfed.engine.runtime import Node, fit_shares, placeable
from rayfed.errors import UserError
from rayfed.results import read_table
from rayfed.tune.resources import TrialBudget, plan_trial

CLIENT_KEYS = ("resources.cpus_per_client", "resources.gpus_per_client")
G5_WORKERS = (Node(4, 1),) * 5  # five g5.xlarge workers of cluster.yaml: 4 vCPU, 1 GPU each


def test_eleven_actors_on_five_one_gpu_nodes_get_a_third_of_a_gpu():
    # 1/3 GPU: floor(1 / 0.3333) = 3 per node, 15 >= 11; one unit more (0.3334) leaves 2 per node, 10 < 11.
    # CPU: 3 actors per 4-CPU node may take 4/3 each, capped at one.
    assert fit_shares(G5_WORKERS, "auto", "auto", 11, CLIENT_KEYS) == (1.0, 0.3333)
    assert placeable(G5_WORKERS, [(1.0, 0.3333)] * 11) == 11
    assert placeable(G5_WORKERS, [(1.0, 0.3334)] * 11) == 10
    assert fit_shares((Node(0, 0), *G5_WORKERS), "auto", "auto", 11, CLIENT_KEYS) == (1.0, 0.3333)  # + CPU-0 head


def test_the_whole_cluster_divided_would_leave_an_actor_unplaced():
    # The case: two 1-GPU nodes, 11 actors. 2/11 = 0.1818 fits five to a node (0.909): ten placed.
    # Per node: floor(1 / s) * 2 >= 11 needs six to a node, s = floor(10000 / 6) / 10000 = 0.1666.
    two = (Node(4, 1), Node(4, 1))
    assert placeable(two, [(0.0, 0.1818)] * 11) == 10
    assert fit_shares(two, "auto", "auto", 11, CLIENT_KEYS) == (0.6666, 0.1666)  # 6 to a node: 4/6 CPU each
    with pytest.raises(UserError) as caught:
        fit_shares(two, "auto", 0.1818, 11, CLIENT_KEYS)
    message = str(caught.value)
    assert message.startswith("resources.gpus_per_client=0.1818: 11 actors of ")
    assert "2 x (4 CPU, 1 GPU)" in message and message.endswith("hold only 10 of them at once")


def test_fractions_come_out_of_one_gpu_each():
    # 0.3 GPU: three per GPU (0.9), so a 4-GPU node holds 12, not floor(4 / 0.3) = 13.
    assert placeable((Node(16, 4),), [(0.0, 0.3)] * 13) == 12
    assert placeable((Node(16, 4),), [(0.0, 2.0)] * 3) == 2  # whole GPUs: two per 4-GPU node
    assert placeable((Node(16, 4),), [(0.0, 2.0), (0.0, 0.5), (0.0, 0.5), (0.0, 0.5)]) == 4  # 2 + 0.5, 0.5 + ..


def test_gpu_actors_stay_off_a_cpu_only_head():
    # A 16-CPU head without GPU and two (4 CPU, 1 GPU) workers: the GPU share puts 6 actors on each worker
    # (0.1666 GPU), so their CPU share is 4/6 of a worker's CPUs, not 24 CPUs / 11.
    nodes = (Node(16, 0), Node(4, 1), Node(4, 1))
    assert fit_shares(nodes, "auto", "auto", 11, CLIENT_KEYS) == (0.6666, 0.1666)


def test_cpu_only_cluster_shares_cpus_per_node():
    # 10 actors on three 2-CPU nodes: 6/10 = 0.6 CPU fits 3 to a node (9); 0.5 fits 4 to a node (12).
    nodes = (Node(2, 0),) * 3
    assert placeable(nodes, [(0.6, 0.0)] * 10) == 9
    assert fit_shares(nodes, "auto", "auto", 10, CLIENT_KEYS) == (0.5, 0.0)


def test_explicit_numbers_are_kept_and_checked():
    assert fit_shares(G5_WORKERS, 0.5, 0.25, 20, CLIENT_KEYS) == (0.5, 0.25)  # 4 per node
    with pytest.raises(UserError, match=r"^resources.cpus_per_client=1: 25 actors of 1 CPU"):
        fit_shares(G5_WORKERS, 1, "auto", 25, CLIENT_KEYS)  # 4 CPUs: at most 4 per node, 20 in all
    with pytest.raises(UserError, match=r"^resources.cpus_per_shard=0.5 and resources.gpus_per_shard=0.5: "):
        fit_shares((Node(2, 0),), 0.5, 0.5, 2, ("resources.cpus_per_shard", "resources.gpus_per_shard"))


def test_a_tune_trial_fits_its_driver_and_actors_on_the_nodes():
    # fl trial, 11 clients + the server = 12 actors, one trial on a CPU-0 head + five g5 workers: budget 20 CPUs,
    # 5 GPUs. Divided: 20/13 = 1.5384 CPU and 5/12 = 0.4166 GPU: 2 actors to a node, 10 of 13 bundles placed.
    # Per node: GPU floor(1/s) * 5 >= 12 -> 3 to a node, 0.3333; CPU: 3 actors to a node need <= 4/3 each, and
    # the driver goes to the fifth node: 1.3333.
    nodes = (Node(0, 0), *G5_WORKERS)
    assert placeable(nodes, [(1.5384, 0.0)] + [(1.5384, 0.4166)] * 12) == 10
    resources = {"audit_servers": 1, "clients_per_actor": 1}  # the placement of 12 actors, not auto's grouping
    config = build_config([{"data": {"num_clients": 11}, "resources": resources}])
    plan = plan_trial("fl", config, TrialBudget(20.0, 5.0, nodes))
    assert plan.driver_cpus == 1.3333 and plan.actors == ((1.3333, 0.3333),) * 12
    # Two trials at once (10 CPUs, 2.5 GPUs each): 24 actors + 2 drivers. GPU: floor(1/s) * 5 >= 24 -> 5 to a
    # node, 0.2. CPU: actors go 5, 5, 5, 5, 4; a driver beside 5 actors needs 6c <= 4, or both beside the 4:
    # 6c <= 4 again, so c = 0.6666 (10/13 = 0.7692 would leave one driver unplaced).
    two = plan_trial("fl", config, TrialBudget(10.0, 2.5, nodes, trials=2))
    assert two.actors[0][1] == 0.2 and placeable(nodes, [(two.driver_cpus, 0.0), *two.actors] * 2) == 26


def test_a_tune_trial_whose_numbers_cannot_be_placed_is_refused():
    config = build_config([{"data": {"num_clients": 11}, "resources": {"gpus_per_client": 0.5, "audit_servers": 1}}])
    explicit = r"^resources.gpus_per_client=0.5 and resources.audit_servers=1: "
    with pytest.raises(UserError, match=explicit + r"a trial's 13 bundles .* hold only 11$"):
        plan_trial("fl", config, TrialBudget(20.0, 5.0, (Node(0, 0), *G5_WORKERS)))


SIMULATED_CLUSTER = textwrap.dedent("""
    import sys
    from ray.cluster_utils import Cluster
    from rayfed.cli import main

    # a CPU-0 head (as cluster.yaml's) and two nodes of 2 CPUs and one (fake) GPU
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=2, num_gpus=1)
    status = main(["fl", "--address", cluster.address, *sys.argv[1:]])
    cluster.shutdown()
    sys.exit(status)
""")


@pytest.mark.slow
def test_fl_on_two_one_gpu_nodes_places_more_actors_than_fit_on_one(tmp_path):
    """4 clients + the server on two 1-GPU nodes: the whole cluster divided, 2/5 = 0.4 GPU, fits 2 to a node
    (4 of 5); per node they get 1/3 and all five run, across both nodes (5/3 GPU > one node's GPU)."""
    assert placeable((Node(2, 1),) * 2, [(0.4, 0.4)] * 5) == 4
    out = tmp_path / "run"
    temp = tempfile.mkdtemp(prefix="rfsim", dir="/tmp")  # this cluster's own Ray temp dir and address file
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", "RAY_TMPDIR": temp}
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SIMULATED_CLUSTER,
            "--set",
            "data.num_clients=4",
            "--set",
            "fl.rounds=1",
            "--set",
            "fl.methods=[fedavg]",
            "--set",
            "fl.local_epochs=1",
            "--set",
            "metrics.audit_epochs=1",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=420)
    finally:
        stop_processes(temp, process.pid)  # whatever of the simulated cluster outlived it
        shutil.rmtree(temp, ignore_errors=True)
    assert process.returncode == 0, stderr[-3000:]
    assert "4 client actors (0.6666 CPU, 0.3333 GPU each) + 1 audit server(s)" in stderr
    rounds = read_table(out / "rounds.parquet")
    assert [(r["method"], r["round"]) for r in rounds] == [("fedavg", 1)]
    assert 0 < rounds[0]["accuracy"] <= 100
    clients = read_table(out / "clients.parquet")
    assert sorted(r["client"] for r in clients) == [0, 1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize("command, key", [("fl", "gpus_per_client"), ("sisa", "gpus_per_shard")])
def test_actors_that_cannot_be_placed_are_an_error_not_a_wait(tmp_path, command, key):
    """64 actors of 0.6 GPU need 64 GPUs (one to a GPU): refused at once, one `error:` line, no run directory."""
    count = {"fl": "data.num_clients=63", "sisa": "sisa.shards=64"}[command]  # fl: 63 clients + the server
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", "RAY_ADDRESS": ""}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rayfed",
            command,
            "--set",
            count,
            "--set",
            f"resources.{key}=0.6",
            "--set",
            "resources.clients_per_actor=1",
            "--set",
            "resources.audit_servers=1",
            "--set",
            "fl.rounds=1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: resources.{key}=0.6: 64 actors of "), result.stderr
    assert "cannot all be placed" in errors[0]
    assert not out.exists()
