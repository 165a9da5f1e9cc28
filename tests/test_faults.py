"""Runs that survive: dead clients (retry / drop), a dead server, corrupt updates, partial participation."""

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest
import ray
import torch

from rayfed.config import load_config
from rayfed.engine.client import ClientUpdate
from rayfed.engine.fl_run import FederatedEngine, MethodRun, run_fl
from rayfed.fl.setup import build_federation
from rayfed.fl.state import to_numpy
from rayfed.results import RunDirectory

pytestmark = pytest.mark.slow

BASE = ["data.num_clients=3", "audit.gamma=[2.0]", "audit.n_probes=64", "data.client_test_size=20", "seed=3"]


def _engine(extra):
    config = load_config(None, BASE + list(extra))
    federation = build_federation(config)
    engine = FederatedEngine(config, federation)
    ray.get([a.pid.remote() for a in engine.actors] + [engine.server.pid.remote()])  # all started
    return engine, ray.put(to_numpy(federation.initial_state))


def _round_while_killing(engine, run, state_ref, pid, delay):
    """engine.round in a thread; SIGKILL the process `pid` after `delay` seconds (mid-work)."""
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("result", engine.round(1, run, state_ref)))
    worker.start()
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    worker.join(timeout=600)
    assert "result" in box, "the round did not finish after the kill"
    return box["result"]


@pytest.mark.parametrize("policy", ["retry", "drop"])
def test_client_killed_mid_training(ray_session, policy, caplog):
    engine, state_ref = _engine(["fl.local_epochs=25", f"fl.on_client_failure={policy}"])
    run = MethodRun("fedavg", None)
    try:
        reference = engine.round(1, run, state_ref)
        victim = ray.get(engine.actors[1].pid.remote())
        result = _round_while_killing(engine, run, state_ref, victim, delay=0.7)
    finally:
        engine.shutdown()
    rows = {r["client"]: r for r in result.client_rows}
    if policy == "retry":  # recomputed on the restarted actor: the round equals the uninterrupted one
        assert rows[1]["retries"] == 1 and rows[1]["participated"]
        new, old = ray.get(result.state_ref), ray.get(reference.state_ref)
        assert all(np.array_equal(new[k], old[k]) for k in old)
        assert [r["weight"] for r in result.client_rows] == [r["weight"] for r in reference.client_rows]
    else:  # aggregated without it, weights renormalised over the others
        assert not rows[1]["participated"] and rows[1]["weight"] == 0.0
        assert rows[0]["weight"] + rows[2]["weight"] == pytest.approx(1.0)
        assert rows[0]["weight"] == pytest.approx(rows[0]["num_samples"] / (rows[0]["num_samples"] + rows[2]["num_samples"]))
        assert "dropped" in caplog.text
    assert result.round_row["participants"] == (3 if policy == "retry" else 2)


def test_server_killed_mid_audit_gives_the_same_round(ray_session):
    engine, state_ref = _engine(["audit.gan_epochs=10", "fl.local_epochs=1"])
    run = MethodRun("fedauditgan", 2.0)
    server_pid = ray.get(engine.server.pid.remote())
    try:
        update_refs = [actor.train.remote(1, state_ref, [cid])[1] for cid, actor in enumerate(engine.actors)]
        ray.get(update_refs)
        probes, _ = engine.server.audit.remote(1, state_ref)
        outcome, new_state = engine.server.aggregate.remote(1, run.method, run.gamma, state_ref, update_refs, probes)
        reference, reference_state = ray.get(outcome), ray.get(new_state)
        probes, _ = engine.server.audit.remote(1, state_ref)
        outcome, new_state = engine.server.aggregate.remote(1, run.method, run.gamma, state_ref, update_refs, probes)
        time.sleep(1.0)  # inside GAN training
        os.kill(server_pid, signal.SIGKILL)
        retried, retried_state = ray.get(outcome, timeout=900), ray.get(new_state, timeout=900)
    finally:
        engine.shutdown()
    assert retried.bias_base == reference.bias_base and retried.scores == reference.scores
    assert retried.weights == reference.weights
    assert all(np.array_equal(retried_state[k], reference_state[k]) for k in reference_state)


@pytest.mark.parametrize("method", ["fedavg", "fedauditgan"])
def test_corrupt_updates_are_rejected_and_the_rest_renormalised(ray_session, method):
    engine, state_ref = _engine(["fl.local_epochs=1"])
    try:
        good = ray.get([actor.train.remote(1, state_ref, [cid])[1] for cid, actor in enumerate(engine.actors[:2])])
        nan_delta = {k: v.copy() for k, v in good[0][0].delta.items()}
        nan_delta["fc2.weight"][0, 0] = np.nan
        wrong_shape = {k: v.copy() for k, v in good[1][0].delta.items()}
        wrong_shape["fc2.bias"] = np.zeros(3, dtype=np.float32)
        crafted = [ClientUpdate(7, 10, nan_delta), ClientUpdate(8, 10, wrong_shape)]
        refs = [ray.put(good[0]), ray.put(good[1]), ray.put(crafted)]
        probes = engine.server.audit.remote(1, state_ref)[0] if method == "fedauditgan" else None
        outcome, new_state = engine.server.aggregate.remote(1, method, 2.0, state_ref, refs, probes)
        outcome, new_state = ray.get(outcome), ray.get(new_state)
    finally:
        engine.shutdown()
    assert set(outcome.rejected) == {7, 8}
    assert "NaN" in outcome.rejected[7] and "shape" in outcome.rejected[8]
    assert outcome.weights[2:] == [0.0, 0.0] and sum(outcome.weights[:2]) == pytest.approx(1.0)
    assert all(np.isfinite(v).all() for v in new_state.values() if v.dtype.kind == "f")


def test_partial_participation_and_many_clients_per_actor(ray_session, tmp_path):
    common = ["data.num_clients=4", "fl.clients_per_round=2", "fl.rounds=2", "fl.local_epochs=1",
              "audit.gamma=[1.0]", "audit.n_probes=32", "audit.gan_epochs=1", "data.client_test_size=10", "seed=11"]
    tables = []
    for per_actor in (1, 2):
        config = load_config(None, common + [f"resources.clients_per_actor={per_actor}"])
        run_dir = RunDirectory(tmp_path / f"per_actor_{per_actor}")
        run_dir.path.mkdir()
        run_fl(config, run_dir)
        tables.append(pd.read_parquet(run_dir.file("clients.parquet")))
    clients = tables[0]
    for (_, _), group in clients.groupby(["method", "round"]):
        chosen = group[group.participated]
        assert len(chosen) == 2 and chosen["weight"].sum() == pytest.approx(1.0)
        assert (group[~group.participated]["weight"] == 0).all()
    audit = clients[(clients.method == "fedauditgan") & ~clients.participated]
    assert audit["score"].isna().all()  # only the selected updates are scored
    # one actor per client or two clients per actor: the same numbers
    pd.testing.assert_frame_equal(tables[0], tables[1])
