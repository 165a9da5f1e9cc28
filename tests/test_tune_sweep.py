"""The smoke sweeps, in process, on the session's faked 1-GPU Ray. fedaudit_gamma_smoke whole: trial run
directories, the sweep table, figures, best config, resources that fit two trials at a time, a resumable
checkpoint. The lambda and sisa smoke sweeps at one grid point each."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from rayfed.config import build_config
from rayfed.results import RunDirectory, read_table

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
    assert stored["trial_id"].is_unique and stored["jfi"].between(0, 1).all()
    assert (stored.loc[stored["status"] == "TERMINATED", "round"] == 1).all()
    assert list(table["trial_id"]) == list(stored["trial_id"])


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
    assert best.audit.gamma == table.loc[table["jfi"].idxmax(), "audit.gamma"]


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
    "sisa_grid_smoke.yaml": ["param_space.sisa.shards=2", "param_space.sisa.slices=2"],
    "fedaudit_lambda_smoke.yaml": ["param_space.audit.lambda1=10", "param_space.audit.lambda2=0.1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ONE_TRIAL))
def test_the_other_smoke_sweeps_run_one_trial_each(ray_session, tmp_path, name):
    """The sisa trainable and the lambda sweep, cut to one grid point (the full grids only add trials)."""
    from rayfed.tune.spec import load_sweep
    from rayfed.tune.sweep import run_sweep_file

    spec = load_sweep(ROOT / "tune_configs" / name)
    table = run_sweep_file(str(ROOT / "tune_configs" / name), ONE_TRIAL[name], str(tmp_path / "out"))
    [row] = table.to_dict("records")
    assert row["status"] == "TERMINATED", row["error"]
    assert row[spec.metric] > 0 and Path(row["run_dir"]).is_dir()
    if spec.run == "sisa":
        assert row["speedup_samples"] >= 1 and row["unlearned_accuracy"] > 0
        assert (tmp_path / "out" / "sisa_heatmaps.png").is_file()
        assert (Path(row["run_dir"]) / "unlearning.parquet").is_file()
    else:
        assert (row["audit.lambda1"], row["audit.lambda2"]) == (10, 0.1)


@pytest.mark.slow
def _trials(*rows):
    columns = ["trial_id", "status", "audit.gamma", "seeds", "jfi", "jfi_ci"]
    return pd.DataFrame([dict(zip(columns, row)) for row in rows])


def test_ranking_sentence_says_whether_the_sweep_separates_best_from_runner_up():
    """Best 0.90 ± 0.02 against 0.85 ± 0.02: 0.05 apart > 0.04, separated; against 0.87 ± 0.02: overlapping.
    An errored trial never ranks; one seed a trial (no _ci) is a single draw; mode min ranks the other way."""
    from rayfed.tune.sweep import ranking_sentence

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


def test_qffl_q_smoke_sweep_reports_q_ffl_beside_its_controls_over_seeds(ray_session, tmp_path, capsys):
    """qffl.q swept: each trial's metrics are q-FFL's, means over its 2 seeds with 95% half-widths, beside
    FedAvg's and uniform's; at q = 0 q-FFL is the uniform average, so its figures are uniform's. The sweep
    prints whether its intervals separate the best trial from the runner-up, from its own table."""
    from rayfed.tune.sweep import run_sweep_file

    table = run_sweep_file(str(ROOT / "tune_configs" / "qffl_q_smoke.yaml"), [], str(tmp_path / "out"))
    ranked = table.sort_values("min_accuracy", ascending=False, kind="stable")
    best, second = ranked.iloc[0], ranked.iloc[1]
    printed = capsys.readouterr().out
    stated = f"{best['min_accuracy']:.4g} ± {best['min_accuracy_ci']:.2g}"
    assert f"By min_accuracy, the best trial {best['trial_id']}'s {stated}" in printed
    assert f"runner-up {second['trial_id']} (qffl.q={second['qffl.q']})'s {second['min_accuracy']:.4g}" in printed
    table = table.set_index("qffl.q")
    assert sorted(table.index) == [0, 1, 5] and (table["status"] == "TERMINATED").all(), table["error"]
    assert (table["seeds"] == 2).all() and (table["min_accuracy_ci"] >= 0).all()
    assert (table["fairness_basis"] == "test").all()
    assert {"fedavg/jfi", "uniform/min_accuracy"} <= set(table.columns)
    assert abs(table.loc[0, "accuracy"] - table.loc[0, "uniform/accuracy"]) <= 0.5  # float rounding at most
    for q in (0, 1, 5):
        rounds = pd.read_parquet(Path(table.loc[q, "run_dir"]) / "rounds.parquet")
        assert rounds.loc[rounds.method == "qffl", "q"].unique().tolist() == [q]
        assert sorted(rounds["seed"].unique()) == [42, 43]
