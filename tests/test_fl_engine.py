"""Fed-AuditGAN and FedAvg through real Ray actors (local Ray, 2 CPUs, one fake GPU).

The second of the two identical runs also logs to wandb (offline): tracking must not change a number."""

import math

import pandas as pd
import pytest
import ray
import torch

from rayfed.config import load_config
from rayfed.engine.fl_run import FederatedEngine, run_fl
from rayfed.fl.setup import build_federation
from rayfed.results import RunDirectory

pytestmark = pytest.mark.slow

SMALL = ["data.num_clients=3", "fl.rounds=2", "fl.local_epochs=1", "audit.gamma=[2.0]", "audit.gan_epochs=2",
         "audit.n_probes=64", "data.client_test_size=20", "seed=5"]


def small_run(tmp_path, name, extra=()):
    config = load_config(None, SMALL + list(extra))
    run_dir = RunDirectory(tmp_path / name)
    run_dir.path.mkdir()
    run_fl(config, run_dir)
    return run_dir.path


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("fl")
    return small_run(tmp, "a"), small_run(tmp, "b", ["tracking.wandb=offline"])


def test_run_directory_holds_the_contract(two_runs):
    path = two_runs[0]
    for name in ("config.yaml", "rounds.parquet", "clients.parquet", "summary.md", "fairness.png",
                 "model_fedavg.pt", "model_fedauditgan_gamma2.pt"):
        assert (path / name).is_file(), name
    rounds = pd.read_parquet(path / "rounds.parquet")
    assert list(rounds.columns[:13]) == ["method", "gamma", "round", "accuracy", "bias", "jfi", "max_min", "variance",
                                         "min_accuracy", "max_accuracy", "mean_accuracy", "gap", "participants"]
    assert len(rounds) == 4 and set(rounds["round"]) == {1, 2}
    fedavg, audit = rounds[rounds.method == "fedavg"], rounds[rounds.method == "fedauditgan"]
    assert fedavg["gamma"].isna().all() and fedavg["bias"].isna().all()
    assert (audit["gamma"] == 2.0).all() and (audit["bias"] > 0).all()
    state = torch.load(path / "model_fedauditgan_gamma2.pt", weights_only=True)
    assert state["convs.0.weight"].shape[1] == 1


def test_clients_table_weights_and_scores(two_runs):
    clients = pd.read_parquet(two_runs[0] / "clients.parquet")
    rounds = pd.read_parquet(two_runs[0] / "rounds.parquet")
    assert len(clients) == 2 * 2 * 3 and clients["participated"].all()
    for (method, rnd), group in clients.groupby(["method", "round"]):
        assert group["weight"].sum() == pytest.approx(1.0)
        if method == "fedavg":  # alpha_i = n_i / sum n
            assert group["weight"].tolist() == pytest.approx((group["num_samples"] / group["num_samples"].sum()).tolist())
            assert group["score"].isna().all()
        else:  # S_i = B_base - B_i, alpha = softmax(2 * S)
            base = rounds[(rounds.method == method) & (rounds["round"] == rnd)]["bias"].item()
            assert group["score"].tolist() == pytest.approx((base - group["bias"]).tolist())
            exp = [math.exp(2.0 * s) for s in group["score"]]
            assert group["weight"].tolist() == pytest.approx([e / sum(exp) for e in exp])
        # the fairness figures are over the per-client accuracies
        row = rounds[(rounds.method == method) & (rounds["round"] == rnd)].iloc[0]
        assert row["min_accuracy"] == group["accuracy"].min() and row["gap"] == pytest.approx(
            group["accuracy"].max() - group["accuracy"].min())


def test_wandb_offline_logs_every_method_and_the_summary(two_runs):
    runs = sorted((two_runs[1] / "wandb").glob("offline-run-*"))
    assert len(runs) == 3  # FedAvg, gamma=2, Summary-Comparison
    assert not (two_runs[0] / "wandb").exists()  # disabled by default


def test_same_seed_gives_identical_tables(two_runs, assert_same_run):
    assert_same_run(*two_runs)


@ray.remote(num_cpus=0)
def _device_inside_actor_process():
    return str(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def test_client_actors_share_the_fake_gpu_by_fractions(ray_session):
    config = load_config(None, SMALL)
    engine = FederatedEngine(config, build_federation(config))
    try:
        ray.get([a.pid.remote() for a in engine.actors])  # all 3 clients + server scheduled at once
        assert ray.available_resources().get("GPU", 0.0) == pytest.approx(0.0, abs=1e-3)  # 4 x 0.25 of one GPU
        assert ray.get(_device_inside_actor_process.remote()) == "cpu"  # device from torch, not Ray's GPU id
    finally:
        engine.shutdown()
