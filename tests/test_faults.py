"""Runs that survive: dead clients (retry / drop), a dead server, corrupt updates, partial participation."""

import math
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import ray

from rayfed.config import load_config
from rayfed.engine.fl_engine import FederatedEngine
from rayfed.engine.fl_run import run_fl
from rayfed.fl.setup import build_federation, initial_model_state
from rayfed.fl.state import to_numpy
from rayfed.fl.strategies import LocalResult
from rayfed.fl.strategies.fedauditgan import FedAuditGan
from rayfed.fl.strategies.fedavg import FedAvg
from rayfed.results import RunDirectory

pytestmark = pytest.mark.slow

SEED = 3
BASE = [
    "fl.methods=[fedavg,fedauditgan]",
    "data.num_clients=3",
    "audit.gamma=[2.0]",
    "audit.n_probes=64",
    "data.client_test_size=20",
    "resources.clients_per_actor=1",  # actor i hosts client i: the tests kill or call one client's actor
    f"seed={SEED}",
    "metrics.audit_epochs=1",
]


def _engine(extra):
    config = load_config(None, BASE + list(extra))
    federation = build_federation(config)
    engine = FederatedEngine(config, federation)
    ray.get([a.pid.remote() for a in engine.actors] + [engine.servers[0].pid.remote()])  # all started
    return engine, ray.put(to_numpy(initial_model_state(config, federation, config.seed)))


def _round_while_killing(engine, run, state_ref, pid, delay):
    """engine.round in a thread; SIGKILL the process `pid` after `delay` seconds (mid-work)."""
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("result", engine.round(1, run, SEED, state_ref)))
    worker.start()
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    worker.join(timeout=600)
    assert "result" in box, "the round did not finish after the kill"
    return box["result"]


@pytest.mark.parametrize("policy", ["retry", "drop"])
def test_client_killed_mid_training(ray_session, policy, caplog):
    engine, state_ref = _engine(["fl.local_epochs=10", f"fl.on_client_failure={policy}"])  # ~3 s of training
    run = FedAvg()
    try:
        reference = engine.round(1, run, SEED, state_ref)
        victim = ray.get(engine.actors[1].pid.remote())
        result = _round_while_killing(engine, run, state_ref, victim, delay=0.7)
        after = engine.round(2, run, SEED, result.state_ref)  # on the restarted actor, nothing recomputed
    finally:
        engine.shutdown()
    assert [r["retries"] for r in after.client_rows] == [0, 0, 0] and after.round_row["participants"] == 3
    rows = {r["client"]: r for r in result.client_rows}
    if policy == "retry":  # recomputed on the restarted actor: the round equals the uninterrupted one
        assert rows[1]["retries"] == 1 and rows[1]["participated"]
        new, old = ray.get(result.state_ref), ray.get(reference.state_ref)
        assert all(np.array_equal(new[k], old[k]) for k in old)
        assert [r["weight"] for r in result.client_rows] == [r["weight"] for r in reference.client_rows]
    else:  # aggregated without it, weights renormalised over the others
        assert not rows[1]["participated"] and rows[1]["weight"] == 0.0
        assert rows[0]["weight"] + rows[2]["weight"] == pytest.approx(1.0)
        assert rows[0]["weight"] == pytest.approx(
            rows[0]["num_samples"] / (rows[0]["num_samples"] + rows[2]["num_samples"])
        )
        assert "dropped" in caplog.text
    assert result.round_row["participants"] == (3 if policy == "retry" else 2)


@pytest.mark.parametrize("victim", ["client", "server"])
def test_an_actor_out_of_restarts_stops_the_run_saying_so(ray_session, victim):
    """fl.max_retries=0: a killed actor is not restarted. A client actor's updates are dropped, but its clients
    cannot be evaluated; an audit server's scoring cannot be done elsewhere. Either way the round stops with
    ActorsLost (exit status 3, one `error:` line naming the step), not a RayActorError traceback."""
    from rayfed.errors import ActorsLost

    sets = ["fl.local_epochs=10", "audit.gan_epochs=10", "fl.on_client_failure=drop", "fl.max_retries=0"]
    engine, state_ref = _engine(sets)
    run, actor, step = {
        "client": (FedAvg(), engine.actors[1], "the clients' evaluations"),
        "server": (FedAuditGan(2.0), engine.servers[0], "the audit server's scoring and aggregation"),
    }[victim]
    failure = {}

    def round_one():
        try:
            engine.round(1, run, SEED, state_ref)
        except Exception as exc:  # the test inspects it
            failure["error"] = exc

    try:
        pid = ray.get(actor.pid.remote())
        worker = threading.Thread(target=round_one)
        worker.start()
        time.sleep(0.7)  # mid-training, mid-audit
        os.kill(pid, signal.SIGKILL)
        worker.join(timeout=600)
    finally:
        engine.shutdown()
    assert isinstance(failure.get("error"), ActorsLost), failure
    label = "FedAvg" if victim == "client" else "gamma=2"
    assert (
        f"round 1 of {label} (seed 3): an actor died with no restarts left (fl.max_retries=0) while computing {step}"
        in str(failure["error"])
    )


def test_evaluation_reaches_a_client_actor_killed_under_drop(ray_session):
    """Under `drop` an actor's calls are not retried, but the evaluation of Theta_new is: it is sent the moment
    the actor is killed (before its restart), as a round does right after dropping its updates."""
    engine, state_ref = _engine(["fl.on_client_failure=drop"])
    try:
        expected = ray.get(engine.actors[1].evaluate.remote(1, SEED, state_ref))
        os.kill(ray.get(engine.actors[1].pid.remote()), signal.SIGKILL)
        again = ray.get(engine.actors[1].evaluate.remote(1, SEED, state_ref), timeout=300)
    finally:
        engine.shutdown()
    assert again == expected and len(again) == len(engine.groups[1])


def test_server_killed_mid_audit_gives_the_same_round(ray_session):
    engine, state_ref = _engine(["audit.gan_epochs=10", "fl.local_epochs=1"])
    run = FedAuditGan(2.0)
    server_pid = ray.get(engine.servers[0].pid.remote())
    try:
        update_refs = [actor.train.remote(1, SEED, state_ref, [cid])[1] for cid, actor in enumerate(engine.actors)]
        ray.get(update_refs)
        probes, _ = engine.servers[0].audit.remote(1, SEED, state_ref)
        outcome, new_state = engine.servers[0].score_and_aggregate.remote(run, state_ref, update_refs, probes)
        reference, reference_state = ray.get(outcome), ray.get(new_state)
        probes, _ = engine.servers[0].audit.remote(1, SEED, state_ref)
        outcome, new_state = engine.servers[0].score_and_aggregate.remote(run, state_ref, update_refs, probes)
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
        good = ray.get(
            [actor.train.remote(1, SEED, state_ref, [cid])[1] for cid, actor in enumerate(engine.actors[:2])]
        )
        nan_delta = {k: v.copy() for k, v in good[0][0].delta.items()}
        nan_delta["fc2.weight"][0, 0] = np.nan
        wrong_shape = {k: v.copy() for k, v in good[1][0].delta.items()}
        wrong_shape["fc2.bias"] = np.zeros(3, dtype=np.float32)
        crafted = [
            LocalResult(7, 10, nan_delta, 1.0),
            LocalResult(8, 10, wrong_shape, 1.0),
            LocalResult(9, 10, good[1][0].delta, float("inf")),
        ]
        refs = [ray.put(good[0]), ray.put(good[1]), ray.put(crafted)]
        probes = engine.servers[0].audit.remote(1, SEED, state_ref)[0] if method == "fedauditgan" else None
        run = FedAuditGan(2.0) if method == "fedauditgan" else FedAvg()
        outcome, new_state = engine.servers[0].score_and_aggregate.remote(run, state_ref, refs, probes)
        outcome, new_state = ray.get(outcome), ray.get(new_state)
    finally:
        engine.shutdown()
    assert set(outcome.rejected) == {7, 8, 9}
    assert "NaN" in outcome.rejected[7] and "shape" in outcome.rejected[8] and "loss" in outcome.rejected[9]
    assert outcome.weights[2:] == [0.0, 0.0, 0.0] and sum(outcome.weights[:2]) == pytest.approx(1.0)
    assert all(np.isfinite(v).all() for v in new_state.values() if v.dtype.kind == "f")


def test_partial_participation_and_many_clients_per_actor(ray_session, tmp_path):
    common = [
        "fl.methods=[fedavg,fedauditgan]",
        "data.num_clients=4",
        "fl.clients_per_round=2",
        "fl.rounds=2",
        "fl.local_epochs=1",
        "audit.gamma=[1.0]",
        "audit.n_probes=32",
        "audit.gan_epochs=1",
        "data.client_test_size=10",
        "seed=11",
        "metrics.held_out_audit=false",  # the test compares clients.parquet; the audit is tested elsewhere
    ]
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


def test_a_wait_behind_other_runs_that_advance_is_no_stall(ray_session):
    """Seeded runs queue their updates on one client actor, as many as take twice resources.stall_timeout in
    all (at least 8): the last run waits for those before it, longer than the timeout, while a run's round
    finishes every sixth of it or so. The watchdog counts time without progress anywhere, not the length of one
    wait, so the round completes for every run."""
    timeout = 3.0  # a run's round (3 clients' updates and evaluations) takes ~0.45 s here: 6x under it
    engine, state_ref = _engine(
        ["resources.clients_per_actor=3", "fl.local_epochs=1", f"resources.stall_timeout={timeout}"]
    )
    try:
        ray.get(engine.actors[0].train.remote(1, 99, state_ref, [0])[0])  # its first step's one-off costs
        started = time.monotonic()
        engine.finish_round(engine.start_round(1, FedAvg(), 99, state_ref))
        runs = max(8, math.ceil(2 * timeout / (time.monotonic() - started)))
        started = time.monotonic()
        pending = [engine.start_round(1, FedAvg(), seed, state_ref) for seed in range(runs)]
        with ThreadPoolExecutor(len(pending)) as pool:  # as run_fl finishes the runs of a round
            results = list(pool.map(engine.finish_round, pending))
        elapsed = time.monotonic() - started
    finally:
        engine.shutdown()
    assert len(engine.actors) == 1 and elapsed > 1.5 * timeout  # the last run waited longer than the timeout
    assert [r.round_row["participants"] for r in results] == [3] * runs


def test_a_stalled_round_stops_with_an_error_naming_what_it_waited_for(rayfed_cli, tmp_path):
    """resources.stall_timeout: a wait that outlasts it ends the run with exit status 3 and one `error:` line
    naming the wait (here the audit server's scoring, behind a 5-epoch GAN), and the run directory stays."""
    out = tmp_path / "stalled"
    sets = BASE + [
        "fl.rounds=1",
        "fl.methods=[fedauditgan]",
        "audit.gan_epochs=5",
        "fl.local_epochs=1",
        "resources.stall_timeout=0.01",
    ]
    result = rayfed_cli.run("fl", "--out", str(out), *[a for s in sets for a in ("--set", s)], timeout=600)
    assert result.returncode == 3, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "waiting for" in errors[0] and "resources.stall_timeout" in errors[0], errors
    assert (out / "config.yaml").is_file()  # kept for --resume
