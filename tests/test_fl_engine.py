"""Fed-AuditGAN and FedAvg through real Ray actors (local Ray, 2 CPUs, one fake GPU).

The second of the two identical runs also logs to wandb (offline) and spreads its runs over two audit servers:
neither may change a number."""

import math
import re
import time

import numpy as np
import pandas as pd
import pytest
import ray
import torch
from simplex_reference import simplex_projection_by_bisection

from rayfed.config import load_config
from rayfed.engine.fl_run import FederatedEngine, run_fl
from rayfed.fl.setup import build_federation
from rayfed.results import RunDirectory
from rayfed.stats import mean_interval

pytestmark = pytest.mark.slow

SMALL = [
    "fl.methods=[fedavg,fedauditgan]",
    "data.num_clients=3",
    "fl.rounds=2",
    "fl.local_epochs=1",
    "audit.gamma=[2.0]",
    "audit.gan_epochs=2",
    "audit.n_probes=64",
    "data.client_test_size=20",
    "seed=5",
    "metrics.audit_epochs=1",
    "resources.server_threads=1",  # as many threads with one audit server as with two
]


def small_run(tmp_path, name, extra=()):
    config = load_config(None, SMALL + list(extra))
    run_dir = RunDirectory(tmp_path / name)
    run_dir.path.mkdir()
    run_fl(config, run_dir)
    return run_dir.path


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("fl")
    return small_run(tmp, "a"), small_run(tmp, "b", ["tracking.wandb=offline", "resources.audit_servers=2"])


def test_run_directory_holds_the_contract(two_runs):
    path = two_runs[0]
    for name in (
        "config.yaml",
        "rounds.parquet",
        "clients.parquet",
        "summary.md",
        "fairness.png",
        "model_fedavg.pt",
        "model_fedauditgan_gamma2.pt",
    ):
        assert (path / name).is_file(), name
    rounds = pd.read_parquet(path / "rounds.parquet")
    contract = [
        "method",
        "lambda_lr",
        "gamma",
        "q",
        "tilt",
        "seed",
        "round",
        "accuracy",
        "bias",
        "jfi",
        "max_min",
        "variance",
        "min_accuracy",
        "max_accuracy",
        "mean_accuracy",
        "gap",
        "val_accuracy",
        "val_jfi",
        "val_min_accuracy",
        "val_gap",
        "fairness_basis",
        "participants",
        "effective_clients",
        "max_weight",
        "score_spread",
        "seconds",
    ]
    assert list(rounds.columns) == contract
    assert len(rounds) == 4 and set(rounds["round"]) == {1, 2}
    assert rounds.filter(like="val_").isna().all().all()  # no validation split in this run
    fedavg, audit = rounds[rounds.method == "fedavg"], rounds[rounds.method == "fedauditgan"]
    assert fedavg["gamma"].isna().all() and fedavg["bias"].isna().all()
    assert (audit["gamma"] == 2.0).all() and (audit["bias"] > 0).all()
    assert pd.read_parquet(path / "clients.parquet")["mixture"].isna().all()  # neither method carries a mixture
    state = torch.load(path / "model_fedauditgan_gamma2.pt", weights_only=True)
    assert state["convs.0.weight"].shape[1] == 1


def test_held_out_audit_of_every_final_model_is_what_the_saved_model_gives(two_runs):
    """audit.parquet: one row per method run, FedAvg's too, at the last round; each row's B and flip rate are
    what `held_out_audit` gives on the saved final weights with the seed's auditor (one thread, as the server
    runs); summary.md carries them and its verdict reads the flip rate."""
    from rayfed.fl.held_out_audit import held_out_audit
    from rayfed.fl.report import bias_sentence
    from rayfed.models import build_classifier

    path = two_runs[0]
    audit = pd.read_parquet(path / "audit.parquet")
    columns = ["method", "lambda_lr", "gamma", "q", "tilt", "seed", "round", "bias", "flip_rate", "images"]
    columns += ["val_bias", "val_flip_rate", "validation_images", "seconds"]
    assert list(audit.columns) == columns and sorted(audit["method"]) == ["fedauditgan", "fedavg"]
    assert (audit["round"] == 2).all() and (audit["seed"] == 5).all() and (audit["images"] == 449).all()
    assert audit["val_flip_rate"].isna().all() and (audit["validation_images"] == 0).all()  # no validation split
    config = load_config(None, SMALL)
    federation = build_federation(config)
    d = federation.data
    model = build_classifier(config.model.name, d.shape, d.num_classes)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for row in audit.itertuples():
            label = "fedavg" if row.method == "fedavg" else "fedauditgan_gamma2"
            state = torch.load(path / f"model_{label}.pt", weights_only=True)
            found = held_out_audit(
                model,
                state,
                d.test_x,
                d.test_y,
                config.audit,
                federation.space,
                d.num_classes,
                epochs=1,
                batch_size=64,
                run_seed=5,
            )
            assert (row.bias, row.flip_rate) == pytest.approx((found.bias, found.flip_rate), rel=1e-9), row.method
    finally:
        torch.set_num_threads(threads)
    summary = (path / "summary.md").read_text()
    assert "Held-out B and Flip rate audit each final model" in summary and "| Flip rate |" in summary
    assert bias_sentence(load_config(None, SMALL)) in summary  # what its Bias column is of
    assert "| Δ Flip rate |" in summary and "One seed: each difference above is a single draw" in summary
    flips = audit.set_index("method")["flip_rate"]
    assert f"| {flips['fedauditgan'] - flips['fedavg']:.4f} |" in summary  # the paired difference, one seed


def test_summary_names_the_classes_no_client_holds_and_no_model_learns_them(two_runs):
    """3 clients of 1-2 classes each leave digits to no one: summary.md names them, and what it says holds:
    the saved models get none of those test images right, and Global Acc stays below the other classes' share."""
    from rayfed.models import build_classifier

    config = load_config(None, SMALL)
    federation = build_federation(config)
    unheld = federation.unheld_classes
    assert unheld
    summary = (two_runs[0] / "summary.md").read_text()
    assert f"- Classes {', '.join(map(str, unheld))} are in no client's training data" in summary
    assert f"stays below about {federation.held_test_percent:.2f}%" in summary
    rounds = pd.read_parquet(two_runs[0] / "rounds.parquet")
    assert (rounds["accuracy"] < federation.held_test_percent).all()
    data = federation.data
    unheld_images = torch.isin(data.test_y, torch.tensor(unheld))
    model = build_classifier(config.model.name, data.shape, data.num_classes).eval()
    for name in ("model_fedavg.pt", "model_fedauditgan_gamma2.pt"):
        model.load_state_dict(torch.load(two_runs[0] / name, weights_only=True))
        with torch.no_grad():
            predicted = model(data.test_x[unheld_images]).argmax(1)
        assert not (predicted == data.test_y[unheld_images]).any(), name


def test_clients_table_weights_and_scores(two_runs):
    clients = pd.read_parquet(two_runs[0] / "clients.parquet")
    rounds = pd.read_parquet(two_runs[0] / "rounds.parquet")
    assert len(clients) == 2 * 2 * 3 and clients["participated"].all()
    for (method, rnd), group in clients.groupby(["method", "round"]):
        assert group["weight"].sum() == pytest.approx(1.0)
        if method == "fedavg":  # alpha_i = n_i / sum n
            assert group["weight"].tolist() == pytest.approx(
                (group["num_samples"] / group["num_samples"].sum()).tolist()
            )
            assert group["score"].isna().all()
        else:  # S_i = B_base - B_i, alpha = softmax(2 * S)
            base = rounds[(rounds.method == method) & (rounds["round"] == rnd)]["bias"].item()
            assert group["score"].tolist() == pytest.approx((base - group["bias"]).tolist())
            exp = [math.exp(2.0 * s) for s in group["score"]]
            assert group["weight"].tolist() == pytest.approx([e / sum(exp) for e in exp])
        # the fairness figures are over the clients' held-out test accuracies (metrics.client_accuracy: test)
        row = rounds[(rounds.method == method) & (rounds["round"] == rnd)].iloc[0]
        assert row["fairness_basis"] == "test"
        assert row["min_accuracy"] == group["test_accuracy"].min() and row["gap"] == pytest.approx(
            group["test_accuracy"].max() - group["test_accuracy"].min()
        )
        assert row["jfi"] == pytest.approx(
            group["test_accuracy"].sum() ** 2 / (len(group) * (group["test_accuracy"] ** 2).sum())
        )
        assert row["effective_clients"] == pytest.approx(1 / (group["weight"] ** 2).sum())
        assert row["max_weight"] == pytest.approx(group["weight"].max())
        assert (group["test_samples"] == 20).all() and (group["loss"] > 0).all()


def test_decision_scores_are_shares_of_the_probe_pairs_and_weigh_by_their_standardised_softmax(ray_session, tmp_path):
    """audit.score=decisions with audit.normalize_scores: B_base and every B_i are shares of the 64 probe pairs
    (a logit distance would not be), S_i = B_base - B_i, alpha = softmax(2 S / std(S)), and summary.md says how
    the clients were scored. On this tiny federation the 2-epoch GAN's probes flip no decision, so the shares
    are 0 and the weights uniform; tests/test_audit.py checks nonzero shares against the model itself."""
    path = small_run(
        tmp_path, "decisions", ["fl.methods=[fedauditgan]", "audit.score=decisions", "audit.normalize_scores=true"]
    )
    rounds = pd.read_parquet(path / "rounds.parquet")
    clients = pd.read_parquet(path / "clients.parquet")
    for rnd, group in clients.groupby("round"):
        base = rounds.loc[rounds["round"] == rnd, "bias"].item()
        for share in [base, *group["bias"]]:
            assert 0 <= share <= 1 and share * 64 == pytest.approx(round(share * 64), abs=1e-9)
        scores = (base - group["bias"]).to_numpy()
        assert group["score"].tolist() == pytest.approx(scores.tolist())
        standardised = scores / scores.std() if scores.std() > 0 else scores
        exp = [math.exp(2.0 * s) for s in standardised]
        assert group["weight"].tolist() == pytest.approx([e / sum(exp) for e in exp])
    summary = (path / "summary.md").read_text()
    assert "share of the round's 64 probe pairs whose predicted class differs" in summary
    assert "softmax(gamma * S / std(S))" in summary
    assert clients["score"].eq(0).all()  # as the docstring says: so the uniform-weights note names the cause
    assert "every client scored the same in every round, so no gamma" in summary and "raise gamma" not in summary


def test_wandb_offline_logs_every_method_and_the_summary(two_runs):
    runs = sorted((two_runs[1] / "wandb").glob("offline-run-*"))
    assert len(runs) == 3  # FedAvg seed 5, gamma=2 seed 5, Summary-Comparison
    assert not (two_runs[0] / "wandb").exists()  # disabled by default


def test_wandb_gets_each_client_s_weight_and_afl_s_mixture_where_there_is_one():
    """A round's wandb log: every client's accuracies and weight, its score where the audit scored it, its share
    of AFL's lambda where the method carries one; nothing null is logged."""
    from rayfed.engine.fl_run import _log_round

    class Logged:
        def log(self, data):
            self.data = data

    row = dict.fromkeys(["round", "accuracy", "jfi", "max_min", "variance", "min_accuracy", "max_accuracy"], 1.0)
    row |= {"effective_clients": 2.0, "max_weight": 0.6, "score_spread": None, "gap": 5.0, "bias": None}
    row["fairness_basis"] = "test"
    clients = [
        {"client": k, "accuracy": 90.0, "test_accuracy": 80.0, "score": None, "weight": w, "mixture": m}
        for k, w, m in ((0, 0.6, 0.5), (1, 0.4, 0.3), (2, 0.0, 0.2))
    ]
    afl, fedavg = Logged(), Logged()
    _log_round(afl, row, clients)
    _log_round(fedavg, row, [c | {"mixture": None} for c in clients])
    assert [afl.data[f"client_{k}_mixture"] for k in range(3)] == [0.5, 0.3, 0.2]
    assert afl.data["client_2_weight"] == 0.0 and "client_0_score" not in afl.data and "bias" not in afl.data
    assert fedavg.data.keys() == {k for k in afl.data if not k.endswith("_mixture")}


def test_same_seed_gives_identical_tables(two_runs, assert_same_run):
    assert_same_run(*two_runs)


@ray.remote(num_cpus=0)
def _device_inside_actor_process():
    return str(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def test_client_actors_share_the_fake_gpu_by_fractions(ray_session):
    config = load_config(None, SMALL + ["resources.audit_servers=2"])
    engine = FederatedEngine(config, build_federation(config))
    try:
        assert len(engine.servers) == 2
        assert sorted(engine.server_of.values()) == [0, 1]  # gamma=2 on one server, FedAvg on the other
        ray.get([a.pid.remote() for a in [*engine.actors, *engine.servers]])  # 3 clients + 2 servers at once
        deadline = time.time() + 30  # available_resources() follows the scheduler with a delay under load
        while ray.available_resources().get("GPU", 0.0) > 1e-3 and time.time() < deadline:
            time.sleep(0.5)
        assert ray.available_resources().get("GPU", 0.0) == pytest.approx(0.0, abs=1e-3)  # 5 x 0.2 of one GPU
        assert ray.get(_device_inside_actor_process.remote()) == "cpu"  # device from torch, not Ray's GPU id
    finally:
        engine.shutdown()


def test_saved_model_is_theta_old_plus_weighted_client_deltas(ray_session, tmp_path):
    """model_*.pt after one round = Theta_0 + sum alpha_i dw_i, with dw_i recomputed here from each client's data
    by the plain Phase 1 function and alpha_i read from clients.parquet."""
    from rayfed.fl.round import LocalTraining, client_update
    from rayfed.fl.setup import initial_model_state
    from rayfed.models import build_classifier

    path = small_run(tmp_path, "one", ["fl.rounds=1", "fl.methods=[fedauditgan]"])
    config = load_config(None, SMALL + ["fl.rounds=1", "fl.methods=[fedauditgan]"])
    federation = build_federation(config)
    theta = initial_model_state(config, federation, config.seed)
    fl = config.fl
    training = LocalTraining(
        fl.local_epochs, fl.lr, fl.momentum, fl.weight_decay, config.data.batch_size, config.data.eval_batch_size
    )
    model = build_classifier(config.model.name, federation.data.shape, federation.data.num_classes)
    torch.set_num_threads(1)  # as the actors (resources.torch_threads)
    deltas = [
        client_update(
            model, c, theta, training, run_seed=config.seed, round_index=1, augment_pad=federation.augment_pad
        ).delta
        for c in federation.clients
    ]
    weights = pd.read_parquet(path / "clients.parquet").sort_values("client")["weight"].tolist()
    saved = torch.load(path / "model_fedauditgan_gamma2.pt", weights_only=True)
    for key, value in theta.items():
        if value.is_floating_point():
            expected = value + sum(w * d[key] for w, d in zip(weights, deltas))
            torch.testing.assert_close(saved[key], expected, rtol=1e-5, atol=1e-6, msg=key)
        else:  # BatchNorm's num_batches_tracked: the rounded weighted sum, kept integer
            assert saved[key].dtype == value.dtype
            assert saved[key] == value + round(sum(w * float(d[key]) for w, d in zip(weights, deltas)))
    assert max(weights) - min(weights) > 0  # a weighting that differs per client was applied


def test_seeds_run_side_by_side_on_one_partition(ray_session, tmp_path):
    """seeds: 2 runs every method once per seed: a seed column, its own Theta_0 and SGD order, one partition;
    summary.md gives intervals, the paired differences against FedAvg and Fed-AuditGAN's against uniform."""
    methods = "fl.methods=[fedavg,uniform,fedauditgan]"
    path = small_run(tmp_path, "seeds", ["seeds=2", "fl.rounds=1", "audit.gan_epochs=1", methods])
    rounds = pd.read_parquet(path / "rounds.parquet")
    clients = pd.read_parquet(path / "clients.parquet")
    assert sorted(rounds["seed"].unique()) == [5, 6] and len(rounds) == 6
    by_seed = clients[clients.method == "fedavg"].groupby("seed")
    assert by_seed["num_samples"].apply(list).map(tuple).nunique() == 1  # the same partition for both seeds
    assert rounds[rounds.method == "fedavg"]["accuracy"].nunique() == 2  # different init and SGD order
    assert {p.name for p in path.glob("model_*.pt")} == {
        "model_fedavg_seed5.pt",
        "model_fedavg_seed6.pt",
        "model_uniform_seed5.pt",
        "model_uniform_seed6.pt",
        "model_fedauditgan_gamma2_seed5.pt",
        "model_fedauditgan_gamma2_seed6.pt",
    }
    summary = (path / "summary.md").read_text()
    assert "95% Student-t interval" in summary and "Paired differences" in summary and " ± " in summary
    final = rounds.set_index(["method", "seed"])
    assert "## The audit against the controls" in summary
    assert "p-values are Holm-adjusted over the 10 figures tested in this table" in summary  # 2 rows x 5 figures
    for reference, label in (("fedavg", "FedAvg"), ("uniform", "Uniform")):
        start = f"- gamma=2 vs {label} (2 paired seeds): "
        verdict = next(line for line in summary.splitlines() if line.startswith(start))
        for name, column in (("worst client", "min_accuracy"), ("JFI", "jfi")):  # it reads the run's own table
            pairs = [final.loc[("fedauditgan", s), column] - final.loc[(reference, s), column] for s in (5, 6)]
            stated = re.search(rf"{name} ([+-][\d.]+) ± ([\d.]+)", verdict)
            assert [float(stated[1]), float(stated[2])] == pytest.approx(list(mean_interval(pairs)), abs=1e-4), name
        audit = pd.read_parquet(path / "audit.parquet").set_index(["method", "seed"])["flip_rate"]
        pairs = [audit.loc[("fedauditgan", s)] - audit.loc[(reference, s)] for s in (5, 6)]
        stated = re.search(r"held-out audit: [^(]*\(flip rate ([+-][\d.]+) ± ([\d.]+)", verdict)
        assert [float(stated[1]), float(stated[2])] == pytest.approx(list(mean_interval(pairs)), abs=1e-4)
    assert not any(line.startswith("- Uniform vs Uniform") for line in summary.splitlines())
    assert "interval, over seeds on one federation (partition seed 5), so it covers training's randomness" in summary


def test_each_seed_can_draw_its_own_federation_and_trains_as_a_run_of_that_seed_alone(ray_session, tmp_path):
    """data.partition_seed: each: seed 6's clients hold the data of partition 6 (their own audit split, validation
    split and test subsets), so its rows are those of a run of seed 6 alone, while seed 5 keeps partition 5; the
    summary says the interval covers the federation's draw, and names each seed's federation in its notes."""
    extra = ["fl.rounds=1", "data.validation_fraction=0.2", "data.partition=dirichlet"]  # 2 GAN epochs: the
    # second sees the first's D, trained on the audit split's images
    both = small_run(tmp_path, "each", extra + ["seeds=[5,6]", "data.partition_seed=each"])
    alone = small_run(tmp_path, "alone", extra + ["seed=6"])
    config = load_config(None, SMALL + extra)
    clients = pd.read_parquet(both / "clients.parquet")
    for seed in (5, 6):
        federation = build_federation(config, partition_seed=seed)
        held = clients[(clients.seed == seed) & (clients.method == "fedavg")].sort_values("client")
        assert held["num_samples"].tolist() == federation.num_samples
        assert held["test_samples"].tolist() == [len(c.test_index) for c in federation.clients]
    sizes = clients[clients.method == "fedavg"].groupby("seed")["num_samples"].apply(tuple)
    assert sizes[5] != sizes[6]  # two federations
    for table in ("rounds.parquet", "clients.parquet", "audit.parquet"):
        mine = pd.read_parquet(both / table).query("seed == 6").drop(columns=["seconds"], errors="ignore")
        reference = pd.read_parquet(alone / table).drop(columns=["seconds"], errors="ignore")
        pd.testing.assert_frame_equal(mine.reset_index(drop=True), reference.reset_index(drop=True))
    summary = (both / "summary.md").read_text()
    assert "seeds that each drew their own federation (`data.partition_seed: each`" in summary
    for seed in (5, 6):
        assert f"- Seed {seed}'s federation: A validation split of" in summary


def test_qffl_and_term_report_losses_before_training_and_weight_by_them(ray_session, tmp_path):
    """q-FFL and TERM through the actors, the held-out audit off (no audit.parquet, no held-out columns): each
    client's `loss` is F_k(Theta_0) (measured here on the client's data with the initial weights: a loss taken
    after local training would be far lower), its weight F_k^q / sum F^q under q-FFL, exp(t F_k) / sum exp(t F)
    under TERM."""
    from rayfed.fl.round import training_loss
    from rayfed.fl.setup import initial_model_state
    from rayfed.fl.strategies.qffl import heavy_ball_displacement
    from rayfed.models import build_classifier
    from rayfed.training import steps_per_epoch

    extra = ["fl.rounds=1", "fl.methods=[uniform,qffl,term]", "qffl.q=[2.0]", "term.tilt=[2.0]"]
    extra += ["metrics.held_out_audit=false"]
    path = small_run(tmp_path, "qffl", extra)
    assert not (path / "audit.parquet").exists() and "Flip rate" not in (path / "summary.md").read_text()
    config = load_config(None, SMALL + extra)
    federation = build_federation(config)
    model = build_classifier(config.model.name, federation.data.shape, federation.data.num_classes)
    model.load_state_dict(initial_model_state(config, federation, config.seed))
    table = pd.read_parquet(path / "clients.parquet")
    assert table.loc[table.method == "uniform", "weight"].tolist() == pytest.approx([1 / 3] * 3)
    clients = table[table.method == "qffl"].sort_values("client")
    before = [training_loss(model, c.x, c.y, 1024) for c in federation.clients]
    assert clients["loss"].tolist() == pytest.approx(before, rel=1e-4)
    shares = [f**2 for f in before]
    assert clients["weight"].tolist() == pytest.approx([s / sum(shares) for s in shares], rel=1e-4)
    rounds = pd.read_parquet(path / "rounds.parquet").set_index("method")
    tilted = table[table.method == "term"].sort_values("client")
    assert tilted["loss"].tolist() == pytest.approx(before, rel=1e-4)
    exp = [math.exp(2.0 * f) for f in before]
    assert tilted["weight"].tolist() == pytest.approx([e / sum(exp) for e in exp], rel=1e-4)
    assert rounds.loc["qffl", "q"] == 2.0 and rounds["gamma"].isna().all() and rounds["bias"].isna().all()
    assert rounds.loc["term", "tilt"] == 2.0 and rounds.loc[["uniform", "qffl"], "tilt"].isna().all()
    assert rounds.loc["uniform", "effective_clients"] == pytest.approx(3.0)
    assert rounds.loc["qffl", "effective_clients"] == pytest.approx(1 / sum((s / sum(shares)) ** 2 for s in shares))
    # the summary states the L it stepped with: auto's, over these clients' local steps (1 epoch, batch 16)
    displacements = [heavy_ball_displacement(steps_per_epoch(len(c.y), 16), 0.9) for c in federation.clients]
    lipschitz = 1 / (0.01 * sum(displacements) / len(displacements))
    assert f"q-FFL's L = {lipschitz:.4g} (`qffl.lipschitz: auto`" in (path / "summary.md").read_text()


def test_afl_carries_its_mixture_from_round_to_round_through_the_actors(ray_session, tmp_path):
    """AFL through the actors, 2 of 3 clients a round: round 1 averages its two clients evenly (lambda = 1/3
    each), and each later round's weights are the mixture the earlier rounds' losses led to, recomputed here from
    clients.parquet by the formula (v = (3/2) F over the round's two clients, projected onto the simplex by a
    bisection, not by rayfed's code): the server carried lambda across rounds instead of starting afresh. The
    `mixture` column is that lambda after each round, for the client left out of the round too; the summary
    reports the last round's."""
    extra = ["fl.methods=[afl]", "afl.lambda_lr=[0.05]", "fl.rounds=3", "fl.clients_per_round=2"]
    path = small_run(tmp_path, "afl", [*extra, "metrics.held_out_audit=false"])
    clients = pd.read_parquet(path / "clients.parquet").sort_values(["round", "client"])
    mixture = np.full(3, 1 / 3)
    for _, rnd in clients.groupby("round"):
        ids = rnd.loc[rnd.participated, "client"].to_numpy()
        assert len(ids) == 2
        assert rnd.set_index("client").loc[ids, "weight"].tolist() == pytest.approx(
            mixture[ids] / mixture[ids].sum(), rel=1e-9
        )
        ascent = np.zeros(3)
        ascent[ids] = 3 / 2 * rnd.set_index("client").loc[ids, "loss"].to_numpy()
        mixture = simplex_projection_by_bisection(mixture + 0.05 * ascent)
        assert rnd["mixture"].tolist() == pytest.approx(mixture.tolist(), abs=1e-9)
    later = clients[clients["round"] > 1]
    assert not np.allclose(later.loc[later.participated, "weight"], 0.5)  # lambda moved: the check has teeth
    assert (pd.read_parquet(path / "rounds.parquet")["lambda_lr"] == 0.05).all()
    spread = 1 / np.sum(mixture**2)
    assert f"lambda_lr=0.05 spreads over {spread:.1f} of the 3 clients" in (path / "summary.md").read_text()


def test_compiled_gan_step_on_the_audit_server_matches_the_eager_run(two_runs, tmp_path, cpu_compiler):
    """audit.gan_step=compiled: the audit server actor trains its GAN through torch.compile, keeping one pair
    across rounds. FedAvg does not audit and is bit-identical; Fed-AuditGAN's round-1 audit (G and D trained
    by the compiled step, then the probes' B_base and B_i) agrees with the eager run's to 1e-3 relative, the
    float rounding of reordered sums carried through two Adam steps, and is not bit-identical to it (the key
    reached the actor: an eager run repeats the same seed exactly)."""
    compiled = pd.read_parquet(small_run(tmp_path, "compiled", ["audit.gan_step=compiled"]) / "rounds.parquet")
    eager = pd.read_parquet(two_runs[0] / "rounds.parquet")
    fedavg = [r[r.method == "fedavg"].drop(columns="seconds").reset_index(drop=True) for r in (eager, compiled)]
    pd.testing.assert_frame_equal(fedavg[0], fedavg[1])
    first = [r[(r.method == "fedauditgan") & (r["round"] == 1)] for r in (eager, compiled)]
    assert first[1]["bias"].item() == pytest.approx(first[0]["bias"].item(), rel=1e-3)
    assert first[1]["bias"].item() != first[0]["bias"].item()  # inductor's kernels ran: eager is bit-identical
    e_clients, c_clients = (pd.read_parquet(p / "clients.parquet") for p in (two_runs[0], tmp_path / "compiled"))
    pick = [c[(c.method == "fedauditgan") & (c["round"] == 1)].sort_values("client") for c in (e_clients, c_clients)]
    assert pick[1]["bias"].tolist() == pytest.approx(pick[0]["bias"].tolist(), rel=1e-3)
