"""The smoke sweeps, in process, on the session's faked 1-GPU Ray. fedaudit_gamma_smoke whole: trial run
directories, the sweep table, figures, best config, resources that fit two trials at a time, a resumable
checkpoint. The lambda and sisa smoke sweeps at one grid point each; the fair-FL baselines' and NegGrad+'s smoke
sweeps whole, checked against their run directories' tables."""

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rayfed.config import build_config, load_config
from rayfed.results import RunDirectory, read_table
from rayfed.stats import mean_interval

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tune_configs" / "fedaudit_gamma_smoke.yaml"

# No concurrency cap: each trial reserves 1 CPU + 0.5 GPU, so the 2-CPU, 1-GPU session fits two at a time and
# the third must wait for resources. Fed-AuditGAN only and one round, to keep the test short.
OVERRIDES = [
    "tune_config.max_concurrent_trials=null",
    "trial_resources.cpus=1",
    "trial_resources.gpus=0.5",
    "base.fl.methods=[fedauditgan]",
    "base.fl.rounds=1",
]


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory):
    from rayfed.tune.sweep import run_sweep_file

    out = tmp_path_factory.mktemp("sweep") / "out"
    table = run_sweep_file(str(SMOKE), OVERRIDES, str(out))
    return out, table


@pytest.mark.slow
def test_one_row_per_trial_with_params_metrics_and_status(sweep):
    out, table = sweep
    stored = pd.read_parquet(out / "sweep.parquet")
    assert len(stored) == 3 and sorted(stored["audit.gamma"]) == [0.5, 4, 16]
    assert set(stored["status"]) <= {"TERMINATED", "EARLY_STOPPED"}, stored[["status", "error"]]
    assert stored["trial_id"].is_unique and stored["jfi"].between(0, 1).all() and stored["val_jfi"].between(0, 1).all()
    assert (stored.loc[stored["status"] == "TERMINATED", "round"] == 1).all()
    assert list(table["trial_id"]) == list(stored["trial_id"])
    for _, row in stored.iterrows():  # the last round's report carries the final model's held-out audit
        audit = pd.read_parquet(Path(row["run_dir"]) / "audit.parquet").set_index("method")
        assert row["flip_rate"] == audit.loc["fedauditgan", "flip_rate"]
        assert row["held_out_bias"] == audit.loc["fedauditgan", "bias"]


@pytest.mark.slow
def test_each_trial_writes_a_run_directory_with_its_explicit_resources(sweep):
    out, _ = sweep
    for _, row in pd.read_parquet(out / "sweep.parquet").iterrows():
        run_dir = Path(row["run_dir"])
        assert run_dir.parent == out / "trials"
        config = build_config([yaml.safe_load((run_dir / "config.yaml").read_text())])
        assert config.audit.gamma == row["audit.gamma"]
        # one CPU, half a GPU: `auto` hosts the 3 clients on one actor; it and the server share the budget
        # with the driver: 1/3 CPU (floored to 4 places) and 0.25 GPU each
        assert config.resources.clients_per_actor == 3
        assert (config.resources.cpus_per_client, config.resources.gpus_per_client) == (0.3333, 0.25)
        rounds = read_table(run_dir / "rounds.parquet")
        assert [r["round"] for r in rounds] == list(range(1, row["round"] + 1))


@pytest.mark.slow
def test_at_most_two_trials_ran_at_once_and_the_third_waited(sweep):
    out, _ = sweep
    table = pd.read_parquet(out / "sweep.parquet").sort_values("started_at")
    spans = list(zip(table["started_at"], table["reported_at"]))
    assert spans[1][0] < spans[0][1], "the first two trials should overlap"
    assert spans[2][0] >= min(spans[0][1], spans[1][1]) - 1.0, "the third should wait for a finished trial"


@pytest.mark.slow
def test_figures_and_best_config(sweep):
    out, _ = sweep
    assert (out / "fl_audit.gamma.png").stat().st_size > 10_000
    best = build_config([yaml.safe_load((out / "best_config.yaml").read_text())])
    table = pd.read_parquet(out / "sweep.parquet")
    assert best.audit.gamma == table.loc[table["val_jfi"].idxmax(), "audit.gamma"]  # chosen on validation


@pytest.mark.slow
def test_a_trial_checkpoint_restores_the_run_after_its_first_round(sweep, tmp_path):
    from ray import tune

    from rayfed.tune.trainables import _restored_progress

    out, _ = sweep
    checkpoints = sorted((out / "tune").glob("fedaudit_gamma_smoke/*/checkpoint_000000"))
    assert checkpoints, "every trial checkpoints each round"
    progress = _restored_progress(RunDirectory(tmp_path), tune.Checkpoint.from_directory(checkpoints[0]))
    assert progress.next_round == 2 and [r["round"] for r in progress.round_rows] == [1]


ONE_TRIAL = {
    "sisa_grid_smoke.yaml": ["param_space.sisa.shards=2", "param_space.sisa.slices=2", "base.seeds=2"],
    "fedaudit_lambda_smoke.yaml": [
        "param_space.audit.lambda1=10",
        "param_space.audit.lambda2=0.1",
        "base.fl.rounds=2",
        "tune_config.metric=val_flip_rate",  # measured after the last round only: NaN in round 1's report
        "tune_config.mode=min",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ONE_TRIAL))
def test_the_other_smoke_sweeps_run_one_trial_each(ray_session, tmp_path, name, capsys):
    """The sisa trainable (over 2 seeds: the means of its seeds' figures, with intervals) and the lambda sweep,
    cut to one grid point (the full grids only add trials), chosen on the held-out audit's validation flip rate
    (reported after the last round only), its best config written."""
    from rayfed.tune.spec import load_sweep
    from rayfed.tune.sweep import run_sweep_file

    spec = load_sweep(ROOT / "tune_configs" / name, ONE_TRIAL[name])
    table = run_sweep_file(str(ROOT / "tune_configs" / name), ONE_TRIAL[name], str(tmp_path / "out"))
    [row] = table.to_dict("records")
    assert row["status"] == "TERMINATED", row["error"]
    assert row[spec.metric] >= 0 and Path(row["run_dir"]).is_dir()
    assert (tmp_path / "out" / "best_config.yaml").is_file()
    if spec.run == "sisa":
        seeds = pd.read_parquet(Path(row["run_dir"]) / "seeds.parquet")
        assert row["seeds"] == 2 and seeds["seed"].tolist() == [42, 43]
        assert row["unlearned_accuracy"] == pytest.approx(seeds["unlearned_accuracy"].mean())
        assert row["unlearned_accuracy_ci"] == pytest.approx(mean_interval(seeds["unlearned_accuracy"].tolist())[1])
        assert row["speedup_samples"] >= 1 and row["unlearned_accuracy"] > 0
        exactness = pd.read_parquet(Path(row["run_dir"]) / "seed43" / "exactness.parquet")
        assert row["exact"] == 1.0 and exactness["weights_equal"].all()
        assert row["max_probability_difference"] == exactness["max_probability_difference"].max() == 0
        assert "Every trial (1) forgot exactly" in capsys.readouterr().out
        assert (tmp_path / "out" / "sisa_heatmaps.png").is_file()
        assert (Path(row["run_dir"]) / "seed42" / "unlearning.parquet").is_file()
    else:
        assert (row["audit.lambda1"], row["audit.lambda2"]) == (10, 0.1)
        [audit] = pd.read_parquet(Path(row["run_dir"]) / "audit.parquet").to_dict("records")
        assert (row["val_flip_rate"], row["flip_rate"]) == (audit["val_flip_rate"], audit["flip_rate"])


def _trials(*rows):
    columns = ["trial_id", "status", "audit.gamma", "seeds", "jfi", "jfi_ci"]
    return pd.DataFrame([dict(zip(columns, row)) for row in rows])


def test_ranking_sentence_says_whether_the_sweep_separates_best_from_runner_up():
    """Best 0.90 ± 0.02 against 0.85 ± 0.02: 0.05 apart > 0.04, separated; against 0.87 ± 0.02: overlapping.
    An errored trial never ranks; one seed a trial (no _ci) is a single draw; mode min ranks the other way."""
    from rayfed.tune.findings import ranking_sentence

    apart = _trials(("a", "TERMINATED", 2.0, 3, 0.85, 0.02), ("b", "TERMINATED", 4.0, 3, 0.90, 0.02))
    errored = pd.concat([apart, _trials(("c", "ERROR", 8.0, 3, 0.99, 0.01))])
    text = ranking_sentence(errored, "jfi", "max", ["audit.gamma"])
    assert text == (
        "By jfi, the best trial b's 0.9 ± 0.02 against the runner-up a (audit.gamma=2.0)'s 0.85 ± 0.02 (95% "
        "intervals over 3 seeds): the intervals are apart, so the sweep separates them."
    )
    close = _trials(("a", "TERMINATED", 2.0, 3, 0.87, 0.02), ("b", "TERMINATED", 4.0, 3, 0.90, 0.02))
    assert ranking_sentence(close, "jfi", "max", ["audit.gamma"]).endswith(
        "the sweep does not separate them; more seeds might."
    )
    assert "runner-up b (audit.gamma=4.0)'s 0.9 ± 0.02" in ranking_sentence(close, "jfi", "min", ["audit.gamma"])
    single = _trials(("a", "TERMINATED", 2.0, 1, 0.85, None), ("b", "TERMINATED", 4.0, 1, 0.90, None))
    assert ranking_sentence(single, "jfi", "max", ["audit.gamma"]).startswith(
        "One seed a trial: the ranking by jfi is a single draw (0.9 against the runner-up a (audit.gamma=2.0)'s 0.85)"
    )
    assert ranking_sentence(apart.iloc[:1], "jfi", "max", ["audit.gamma"]) is None
    # several seeds but no interval: a sisa figure kept as its worst seed's, not a single draw
    worst = _trials(("a", "TERMINATED", 2.0, 3, 0.0, None), ("b", "TERMINATED", 4.0, 3, 1.0, None))
    assert ranking_sentence(worst, "jfi", "max", ["audit.gamma"]) == (
        "By jfi, the worst of each trial's 3 seeds, which has no interval: the best trial b's 1 against the "
        "runner-up a (audit.gamma=2.0)'s 0."
    )
    # with the federations the seeds trained on reported: one shared, or one per seed (data.partition_seed: each)
    for federations, said in ((1, "over 3 seeds on one federation)"), (3, "over 3 seeds, each on its own federation)")):
        sentence = ranking_sentence(apart.assign(federations=federations), "jfi", "max", ["audit.gamma"])
        assert f"(95% intervals {said}: the intervals are apart" in sentence
    # a trial ASHA stopped early (its figure of an earlier round) or an interrupted one never ranks either
    unfinished = _trials(("d", "EARLY_STOPPED", 8.0, 3, 0.99, 0.01), ("e", "INTERRUPTED", 16.0, 3, 0.98, 0.01))
    assert ranking_sentence(pd.concat([apart, unfinished]), "jfi", "max", ["audit.gamma"]) == text


def test_best_config_is_the_best_trial_that_ran_to_the_end():
    """ASHA stopped trial d at an earlier round with a higher jfi than the finished trials' last round: the best
    config is b's (the finished trial the ranking sentence names), not d's."""
    from types import SimpleNamespace

    from rayfed.tune.sweep import best_config

    table = _trials(
        ("a", "TERMINATED", 2.0, 3, 0.85, 0.02),
        ("b", "TERMINATED", 4.0, 3, 0.90, 0.02),
        ("d", "EARLY_STOPPED", 8.0, 3, 0.99, 0.01),
    )
    results = [
        SimpleNamespace(metrics={"trial_id": t, "jfi": j}, config={"audit.gamma": g}, error=None)
        for t, g, j in (("a", 2.0, 0.85), ("b", 4.0, 0.90), ("d", 8.0, 0.99))
    ]
    spec = SimpleNamespace(metric="jfi", mode="max", params=[SimpleNamespace(key="audit.gamma")], base={})
    best = best_config(results, spec, table)
    assert (best["trial_id"], best["jfi"], best["params"]) == ("b", 0.90, {"audit.gamma": 4.0})
    assert best["config"]["audit"]["gamma"] == 4.0
    assert best_config(results, spec, table[table["status"] != "TERMINATED"]) is None


def test_selection_sentence_says_what_the_chosen_figure_is_worth():
    """Chosen on val_jfi, trial b (0.93 against a's 0.91) is named with its test jfi 0.88 ± 0.03, the unbiased
    figure; chosen on the test jfi, the sentence warns that b's 0.9 is the best of 2 draws and names the
    validation twin (sisa's accuracy too, its f1 has none; the held-out audit's flip rate, on whichever fairness
    basis); bias (the audit split's, not the test set's), train-basis
    fairness figures (chosen on, or as the twin of val_jfi) and a single trial make no sentence."""
    from rayfed.tune.findings import selection_sentence

    columns = ["trial_id", "status", "seeds", "jfi", "jfi_ci", "val_jfi", "val_jfi_ci", "bias", "fairness_basis"]
    rows = [
        ("a", "TERMINATED", 3, 0.85, 0.02, 0.91, 0.01, 0.2, "test"),
        ("b", "TERMINATED", 3, 0.9, 0.03, 0.93, 0.01, 0.1, "test"),
    ]
    table = pd.DataFrame([dict(zip(columns, row)) for row in rows])
    table.loc[1, "jfi"] = 0.88
    assert selection_sentence("fl", table, "val_jfi", "max") == (
        "Chosen on the validation split (val_jfi 0.93 ± 0.01): the test images took no part in the choice, so "
        "the best trial's test jfi, 0.88 ± 0.03, is the unbiased figure to report for it."
    )
    table.loc[1, "jfi"] = 0.9
    assert selection_sentence("fl", table, "jfi", "max") == (
        "Chosen on the test set: the best trial's jfi, 0.9 ± 0.03, is the best of 2 trials' draws on the same test "
        "images, so it overstates what its settings give on new images; choose on validation instead (base "
        "`data.validation_fraction: 0.1`, `tune_config.metric: val_jfi`) and report the chosen trial's test figure."
    )
    sisa = table.rename(columns={"jfi": "accuracy"})
    assert "`tune_config.metric: val_accuracy`" in selection_sentence("sisa", sisa, "accuracy", "max")
    assert selection_sentence("sisa", sisa.rename(columns={"accuracy": "f1"}), "f1", "max").endswith(
        "confirm it on images the sweep did not see before reporting it."
    )
    assert selection_sentence("fl", table, "bias", "min") is None
    flips = table.assign(flip_rate=[0.05, 0.02], val_flip_rate=[0.04, 0.06], fairness_basis="train")
    assert selection_sentence("fl", flips, "val_flip_rate", "min") == (  # the held-out audit: on any basis
        "Chosen on the validation split (val_flip_rate 0.04): the test images took no part in the choice, so "
        "the best trial's test flip_rate, 0.05, is the unbiased figure to report for it."
    )
    assert "`tune_config.metric: val_flip_rate`" in selection_sentence("fl", flips, "flip_rate", "min")
    assert selection_sentence("fl", table.assign(fairness_basis="train"), "jfi", "max") is None
    assert selection_sentence("fl", table.assign(fairness_basis="train"), "val_jfi", "max") is None  # no test twin
    assert selection_sentence("fl", table.iloc[:1], "jfi", "max") is None


def test_a_key_swept_over_words_and_numbers_is_a_text_column_of_the_sweep_table(tmp_path):
    """`qffl.lipschitz: {grid_search: [auto, 1]}` (qffl_q.yaml's suggestion) gave a column Parquet could not
    hold, and the sweep died writing sweep.parquet after its trials had run; numbers alone stay numbers."""
    from rayfed.tune.sweep import _as_one_type

    rows = [
        {"trial_id": "a", "qffl.lipschitz": "auto", "qffl.q": 1, "jfi": 0.9},
        {"trial_id": "b", "qffl.lipschitz": 1, "qffl.q": 5, "jfi": 0.8},
        {"trial_id": "c", "qffl.lipschitz": None, "qffl.q": 0.5, "jfi": 0.7},
    ]
    _as_one_type(rows, ["qffl.lipschitz", "qffl.q"])
    RunDirectory(tmp_path).write_table("sweep.parquet", rows)
    stored = pd.read_parquet(tmp_path / "sweep.parquet")
    assert stored["qffl.lipschitz"].tolist()[:2] == ["auto", "1"] and pd.isna(stored["qffl.lipschitz"][2])
    assert stored["qffl.q"].tolist() == [1.0, 5.0, 0.5]


def _sisa_trials(*rows):
    columns = ["trial_id", "status", "sisa.shards", "sisa.slices", "unlearned_accuracy", "speedup_samples"]
    columns += ["exact", "max_probability_difference"]
    return pd.DataFrame([dict(zip(columns, row)) for row in rows])


def test_sisa_sweep_names_the_trials_that_trade_accuracy_for_unlearning_speedup():
    """a (96%, 1.02x), b (90%, 3x) and d (75%, 51.8x) each beat the others on one figure: the front, from the
    most accurate; c (89%, 2.5x) trails b on both; e ties d on both, so neither beats the other; an errored
    trial with better figures is no trial. Alone on the front: no trade-off."""
    from rayfed.tune.findings import tradeoff_sentence

    trials = _sisa_trials(
        ("a", "TERMINATED", 5, 5, 96.0, 1.02, 1.0, 0.0),
        ("b", "TERMINATED", 10, 5, 90.0, 3.0, 1.0, 0.0),
        ("c", "TERMINATED", 10, 10, 89.0, 2.5, 1.0, 0.0),
        ("d", "TERMINATED", 20, 5, 75.0, 51.8, 1.0, 0.0),
        ("x", "ERROR", 20, 20, 99.0, 99.0, None, None),
    )
    assert tradeoff_sentence(trials, ["sisa.shards", "sisa.slices"]) == (
        "Accuracy after unlearning against unlearning speedup (samples, over retraining the ensemble): 3 of 4 "
        "trials trade one for the other, no trial beating them on both: a (sisa.shards=5, sisa.slices=5) 96.00% "
        "at 1.02x; b (sisa.shards=10, sisa.slices=5) 90.00% at 3x; d (sisa.shards=20, sisa.slices=5) 75.00% at "
        "51.8x; the other trial is beaten on both by one of these (one run a trial: each accuracy is a single draw)."
    )
    tie = pd.concat([trials, _sisa_trials(("e", "TERMINATED", 20, 10, 75.0, 51.8, 1.0, 0.0))])
    assert "4 of 5 trials" in tradeoff_sentence(tie, ["sisa.shards"]) and "e (sisa.shards=20) 75.00% at 51.8x" in (
        tradeoff_sentence(tie, ["sisa.shards"])
    )
    dominant = _sisa_trials(("a", "TERMINATED", 5, 5, 96.0, 4.0, 1.0, 0.0), ("b", "TERMINATED", 10, 5, 90.0, 3.0, 1, 0))
    assert tradeoff_sentence(dominant, ["sisa.shards"]).startswith(
        "a (sisa.shards=5) has both the highest accuracy after unlearning (96.00%) and the highest unlearning "
        "speedup (4x over retraining the ensemble): no trade-off in this sweep"
    )
    assert tradeoff_sentence(trials.iloc[:1], ["sisa.shards"]) is None


def test_sisa_sweep_says_whether_every_trial_forgot_exactly():
    """All exact; one trial's weights differ (named, with its probability difference); a finished trial without
    `exact` did not verify; an interrupted or errored trial is not counted."""
    from rayfed.tune.findings import exactness_sentence

    exact = _sisa_trials(
        ("a", "TERMINATED", 5, 5, 96.0, 1.0, 1.0, 0.0),
        ("b", "TERMINATED", 10, 5, 90.0, 3.0, 1.0, 0.0),
        ("x", "ERROR", 20, 5, None, None, None, None),
        ("y", "INTERRUPTED", 20, 10, None, None, None, None),
    )
    assert exactness_sentence(exact, ["sisa.shards"]) == (
        "Every trial (2) forgot exactly: its unlearned ensemble has, bit for bit, the weights of an ensemble "
        "retrained from scratch without the forgotten points."
    )
    mixed = pd.concat(
        [
            exact,
            _sisa_trials(("c", "TERMINATED", 20, 5, 75.0, 50.0, 0.0, 0.062)),
            _sisa_trials(("d", "TERMINATED", 20, 20, 75.0, 50.0, None, None)),
        ]
    )
    assert exactness_sentence(mixed, ["sisa.shards"]) == (
        "**Not exact** in 1 of 3 checked trials: c (sisa.shards=20): class probabilities differ by up to 0.062; "
        "each trial's summary.md says what fixes it (1 trial(s) did not check it)."
    )
    unverified = _sisa_trials(("d", "TERMINATED", 20, 20, 75.0, 50.0, None, None))
    assert exactness_sentence(unverified, ["sisa.shards"]) == (
        "Exactness not checked in any trial (`unlearn.verify: false`)."
    )
    assert exactness_sentence(exact.iloc[2:], ["sisa.shards"]) is None


FAIR_BASELINES = {  # smoke sweep -> (its key, the method, the column naming its value in rounds.parquet, a grid)
    "qffl_q_smoke.yaml": ("qffl.q", "qffl", "q", [0, 5]),
    "term_tilt_smoke.yaml": ("term.tilt", "term", "tilt", [0, 5]),
    "afl_lambda_smoke.yaml": ("afl.lambda_lr", "afl", "lambda_lr", [0, 1]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAIR_BASELINES))
def test_a_fair_baseline_s_smoke_sweep_reports_it_beside_its_controls_over_seeds(ray_session, tmp_path, name, capsys):
    """q-FFL's q, TERM's tilt and AFL's step swept: each trial's metrics are that method's, means over its 2 seeds
    with 95% half-widths, beside FedAvg's and uniform's; at 0 each method is the uniform average, so its figures
    are uniform's, and above 0 it weighs the clients otherwise. The sweep ranks on the validation split and
    prints, from its own table, whether its intervals separate the best trial from the runner-up, and the best
    trial's test figure to report."""
    from rayfed.tune.sweep import run_sweep_file

    key, method, column, values = FAIR_BASELINES[name]
    grid = [f"param_space.{key}={{grid_search: {values}}}"]  # the file's grid less one trial: two run at once
    table = run_sweep_file(str(ROOT / "tune_configs" / name), grid, str(tmp_path / "out"))
    ranked = table.sort_values("val_min_accuracy", ascending=False, kind="stable")
    best, second = ranked.iloc[0], ranked.iloc[1]
    printed = capsys.readouterr().out
    stated = f"{best['val_min_accuracy']:.4g} ± {best['val_min_accuracy_ci']:.2g}"
    assert f"By val_min_accuracy, the best trial {best['trial_id']}'s {stated}" in printed
    assert f"runner-up {second['trial_id']} ({key}={second[key]})'s {second['val_min_accuracy']:.4g}" in printed
    test = f"{best['min_accuracy']:.4g} ± {best['min_accuracy_ci']:.2g}"
    assert f"the best trial's test min_accuracy, {test}, is the unbiased figure to report" in printed
    table = table.set_index(key)
    assert sorted(table.index) == values and (table["status"] == "TERMINATED").all(), table["error"]
    assert (table["seeds"] == 2).all() and (table["min_accuracy_ci"] >= 0).all()
    assert (table["federations"] == 1).all() and "(95% intervals over 2 seeds on one federation)" in printed
    assert (table["fairness_basis"] == "test").all()
    assert {"fedavg/jfi", "uniform/min_accuracy"} <= set(table.columns)
    for value in values:
        run_dir = Path(table.loc[value, "run_dir"])
        rounds, clients = (pd.read_parquet(run_dir / f"{t}.parquet") for t in ("rounds", "clients"))
        assert rounds.loc[rounds.method == method, column].unique().tolist() == [value]
        assert sorted(rounds["seed"].unique()) == [42, 43]
        last = rounds[(rounds.method == method) & (rounds["round"] == rounds["round"].max())]
        assert table.loc[value, "min_accuracy"] == pytest.approx(last["min_accuracy"].mean())  # the method's own
        weights = clients[(clients.method == method) & (clients["round"] == clients["round"].max())]["weight"].tolist()
        uniform = weights == pytest.approx([1 / 3] * 6, abs=1e-6)  # the last round's, 3 clients in 2 seeds
        assert uniform if value == 0 else not uniform, weights
    zero = table.loc[0]
    assert abs(zero["accuracy"] - zero["uniform/accuracy"]) <= 0.5  # float rounding at most


def test_an_fl_trial_reports_the_held_out_audit_at_its_last_round_beside_its_references():
    """The reporter's figures by hand over two seeds: gamma=2's flip rates 0.04 and 0.06 give flip_rate 0.05 with
    its 95% half-width (t(0.975, 1) x 0.01 = 0.127), FedAvg's 0.10 and 0.20 give fedavg/flip_rate 0.15, and the
    validation auditor's 0.02 and 0.08 give val_flip_rate 0.05; a round whose rows carry no audit reports the
    figures the trial will measure as NaN (Tune checks that every report carries the sweep's metric), and
    without any to measure, none."""
    from rayfed.fl.rows import ROUND_METRICS
    from rayfed.tune.trainables import RoundReporter, audit_figures

    def row(method, gamma, seed, flips=None, val_flips=None):
        values = {k: 1.0 for k in ROUND_METRICS} | {"bias": None if gamma is None else 0.5}
        audit = {} if flips is None else {"flip_rate": flips, "held_out_bias": 2.0}
        audit |= {} if val_flips is None else {"val_flip_rate": val_flips, "val_held_out_bias": 1.0}
        return {"method": method, "gamma": gamma, "q": None, "seed": seed, "fairness_basis": "test"} | values | audit

    measured = audit_figures(load_config(None, ["data.validation_fraction=0.1"]))
    assert measured == ("held_out_bias", "flip_rate", "val_held_out_bias", "val_flip_rate")
    assert audit_figures(load_config(None, [])) == ("held_out_bias", "flip_rate")
    assert audit_figures(load_config(None, ["metrics.held_out_audit=false"])) == ()
    rows = [row("fedavg", None, 1, 0.10, 0.3), row("fedavg", None, 2, 0.20, 0.1)]
    rows += [row("fedauditgan", 2.0, 1, 0.04, 0.02), row("fedauditgan", 2.0, 2, 0.06, 0.08)]
    metrics = RoundReporter(None, 0.0, measured).metrics(rows)
    assert metrics["flip_rate"] == pytest.approx(0.05) and metrics["held_out_bias"] == 2.0
    assert metrics["flip_rate_ci"] == pytest.approx(mean_interval([0.04, 0.06])[1]) == pytest.approx(0.127062, rel=1e-5)
    assert metrics["val_flip_rate"] == pytest.approx(0.05) and metrics["val_held_out_bias"] == 1.0
    assert metrics["val_flip_rate_ci"] == pytest.approx(mean_interval([0.02, 0.08])[1])
    assert metrics["fedavg/flip_rate"] == pytest.approx(0.15) and "fedavg/bias" not in metrics
    # every mean over seeds has its interval, whatever figure a sweep ranks on (here all 1.0: half-width 0)
    assert {f"{k}_ci" for k in ROUND_METRICS if k != "round"} <= {k for k, v in metrics.items() if v == 0}
    assert metrics["fedavg/val_flip_rate"] == pytest.approx(0.2)
    first = [row("fedavg", None, 1), row("fedauditgan", 2.0, 1)]
    earlier = RoundReporter(None, 0.0, measured).metrics(first)
    assert all(math.isnan(earlier[k]) for k in measured) and "fedavg/flip_rate" not in earlier
    assert "flip_rate" not in RoundReporter(None, 0.0).metrics(first)


def test_a_sweep_whose_start_stopped_before_tune_began_starts_afresh(tmp_path):
    """--out holding only sweep.yaml (Ray failed to start, Ctrl-C) is no experiment to continue: the sweep starts
    there afresh; trials without their experiment cannot be continued and say so."""
    from rayfed.errors import UserError
    from rayfed.results import RunDirectory
    from rayfed.tune.sweep import continues_experiment

    sweep_dir = RunDirectory(tmp_path)
    (tmp_path / "sweep.yaml").write_text("run: fl\n")
    assert continues_experiment(str(tmp_path / "tune" / "x"), sweep_dir) is False
    (tmp_path / "trials" / "t1").mkdir(parents=True)
    with pytest.raises(UserError, match="holds a sweep's trials, but no Tune experiment"):
        continues_experiment(str(tmp_path / "tune" / "x"), sweep_dir)


@pytest.mark.slow
def test_neggrad_s_smoke_sweep_ranks_its_alpha_on_the_gap_to_retraining(ray_session, tmp_path):
    """neggrad_alpha_smoke.yaml: each trial's metric is its run's baselines.parquet NegGrad+ row's
    val_retrain_gap, which is the mean |difference| to the retrained row's forget-set, retained-sample and
    validation accuracies (0 for the retrained row itself); SISA's validation accuracy there is the unlearned
    ensemble's in validation.parquet; each alpha reached NegGrad+ (two alphas, two models) and the best config
    holds the alpha of the smallest gap."""
    from rayfed.tune.sweep import run_sweep_file

    table = run_sweep_file(str(ROOT / "tune_configs" / "neggrad_alpha_smoke.yaml"), [], str(tmp_path / "out"))
    assert table["status"].tolist() == ["TERMINATED"] * 2, table["error"].tolist()
    models = []
    for trial in table.to_dict("records"):
        run = Path(trial["run_dir"])
        rows = pd.read_parquet(run / "baselines.parquet").set_index("method")
        assert rows.index.tolist() == ["sisa", "neggrad", "retrained"]
        gaps = [
            sum(
                abs(rows.loc[m, f] - rows.loc["retrained", f])
                for f in ("forget_accuracy", "retained_accuracy", "val_accuracy")
            )
            / 3
            for m in ("sisa", "neggrad")
        ]
        assert rows["val_retrain_gap"].tolist() == pytest.approx([*gaps, 0.0])
        assert trial["neggrad/val_retrain_gap"] == rows.loc["neggrad", "val_retrain_gap"] > 0
        validation = pd.read_parquet(run / "validation.parquet").set_index(["stage", "aggregation"])
        assert rows.loc["sisa", "val_accuracy"] == validation.loc[("unlearned", "mean"), "accuracy"]
        models.append(tuple(rows.loc["neggrad", ["accuracy", "forget_accuracy", "retained_accuracy", "val_accuracy"]]))
    assert sorted(table["unlearn.neggrad_alpha"]) == [0.9, 0.999] and models[0] != models[1]
    best = table.loc[table["neggrad/val_retrain_gap"].idxmin(), "unlearn.neggrad_alpha"]
    chosen = yaml.safe_load((tmp_path / "out" / "best_config.yaml").read_text())
    assert chosen["unlearn"]["neggrad_alpha"] == best
