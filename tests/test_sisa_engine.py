"""SISA on Ray: shard actors survive being killed, the `rayfed sisa` driver end to end, and bad input."""

from __future__ import annotations

import time

import pandas as pd
import pytest
import torch

from rayfed.config import ResourcesConfig, build_config, load_config
from rayfed.data.datasets import load_dataset
from rayfed.results import RunDirectory
from rayfed.sisa.plan import make_layout
from rayfed.sisa.schedule import stage_samples
from rayfed.sisa.train import TrainSettings


def _settings(epochs: tuple[int, ...]) -> TrainSettings:
    return TrainSettings(
        model="cnn",
        input_shape=load_dataset("digits").shape,
        num_classes=10,
        epochs=epochs,
        lr=0.05,
        momentum=0.9,
        batch_size=32,
        seed=3,
    )


def test_a_shard_killed_mid_training_restarts_from_its_checkpoint_with_the_same_result(ray_session, tmp_path):
    from rayfed.engine.shard import ShardPool, ShardWorkers

    data = load_dataset("digits")
    x, y = data.train_x[:240], data.train_y[:240]
    layout = make_layout(len(y), shards=2, slices=3, seed=0)
    settings = _settings((1, 1, 8))
    workers = ShardWorkers(2, ResourcesConfig(torch_threads=1))

    pool = ShardPool(workers, layout, x, y, settings, tmp_path / "killed")
    refs = list(pool.submit(range(2), []))
    checkpoint = tmp_path / "killed" / "shard0" / "slice2.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert checkpoint.exists()
    ray_session.kill(workers.actors[0], no_restart=False)  # dies during the long last stage
    stats = ray_session.get(refs)
    killed = pool.states()
    assert stats[0].first_stage == 2  # the retried call resumed after checkpoint 2, not from scratch

    # the same actors (one of them restarted) train a second ensemble of the same data from scratch
    clean = ShardPool(workers, layout, x, y, settings, tmp_path / "clean")
    clean_stats, _ = clean.run(range(2), [], "clean")
    reference = clean.states()
    workers.close()
    assert [st.first_stage for st in clean_stats] == [0, 0]
    assert [st.samples for st in clean_stats] == [
        stage_samples(sizes, (1, 1, 8)) for sizes in layout.kept_slice_sizes([])
    ]
    for a, b in zip(killed, reference):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_shard_actors_run_deterministic_kernels_and_a_stalled_step_fails_naming_its_shards(ray_session, tmp_path):
    from rayfed.engine.shard import ShardPool, ShardWorkers
    from rayfed.errors import RunStalled
    from rayfed.sisa.train import kernel_settings

    data = load_dataset("digits")
    layout = make_layout(120, shards=1, slices=2, seed=0)
    workers = ShardWorkers(1, ResourcesConfig(torch_threads=1, stall_timeout=1.5), deterministic=True)
    pool = ShardPool(workers, layout, data.train_x[:120], data.train_y[:120], _settings((1, 400)), tmp_path)
    on = {
        "device": "cpu",
        "torch_version": torch.__version__,
        "deterministic": True,
        "cudnn_benchmark": False,
        "cudnn_deterministic": True,
        "cublas_workspace_config": ":4096:8",
    }
    assert workers.kernel_settings() == on
    assert ray_session.get(workers.call(lambda device: kernel_settings())) == on  # where the baselines run
    # stage 0 (1 epoch) finishes, then stage 1 (400 epochs) runs far past the 1.5 s without a checkpoint
    with pytest.raises(
        RunStalled,
        match=r"sisa: slow: shard\(s\) \[0\] finished no slice stage in 1.5 s "
        r"\(resources.stall_timeout\)",
    ):
        pool.run([0], [], "sisa: slow")
    assert (tmp_path / "shard0" / "slice1.pt").exists() and not (tmp_path / "shard0" / "slice2.pt").exists()
    workers.close()
    off = ShardWorkers(1, ResourcesConfig(torch_threads=1), deterministic=False)
    assert ray_session.get(off.call(lambda device: kernel_settings()))["deterministic"] is False
    assert off.kernel_settings()["cudnn_deterministic"] is False
    off.close()


def test_a_shard_actor_out_of_restarts_stops_the_step_with_one_error_naming_it(ray_session, tmp_path):
    """An actor that dies with no restarts left is ActorsLost (the CLI's exit status 3 and one `error:` line, the
    run directory kept for --resume) naming the step and the shard, not a RayActorError traceback."""
    from rayfed.engine.shard import ShardPool, ShardWorkers
    from rayfed.errors import ActorsLost

    data = load_dataset("digits")
    layout = make_layout(60, shards=1, slices=1, seed=0)
    workers = ShardWorkers(1, ResourcesConfig(torch_threads=1))
    pool = ShardPool(workers, layout, data.train_x[:60], data.train_y[:60], _settings((1,)), tmp_path)
    ray_session.kill(workers.actors[0], no_restart=True)
    with pytest.raises(ActorsLost, match=r"^sisa: gone: shard 0: a shard actor died with no restarts left \(3 per"):
        pool.run([0], [], "sisa: gone")
    with pytest.raises(ActorsLost, match=r"^the final states of .*: a shard actor died with no restarts left"):
        pool.states()
    workers.close()


@pytest.mark.slow
def test_run_sisa_audits_show_what_they_must_on_an_overfitting_setting(ray_session, tmp_path):
    """Two shards overfit (6 epochs on every union), 150 points forgotten in 2 requests, 60 BadNets points, and
    every approximate baseline: every table holds the values the audits promise."""
    from rayfed.engine.sisa_run import run_sisa

    config = build_config(
        [
            {
                "sisa": {"shards": 2, "slices": 2, "epochs": 6, "schedule": "union"},
                "unlearn": {
                    "forget": 150,
                    "requests": 2,
                    "baselines": ["finetune", "neggrad", "scrub", "random_label"],
                    "scrub_epochs": 2,
                    "scrub_max_epochs": 1,
                },
                "backdoor": {"poison": 60},
                "resources": {"torch_threads": 1},
            }
        ]
    )
    run_sisa(config, RunDirectory(tmp_path))
    check_audit_tables(tmp_path)


def check_audit_tables(tmp_path):
    """The assertions of the test above on its run directory."""
    files = {p.name for p in tmp_path.iterdir()}
    for name in (
        "config.yaml",
        "layout.parquet",
        "forget.txt",
        "metrics.parquet",
        "unlearning.parquet",
        "unlearning_points.parquet",
        "exactness.parquet",
        "membership.parquet",
        "backdoor.parquet",
        "baselines.parquet",
        "summary.md",
        "accuracy.png",
        "unlearning_cost.png",
        "membership.png",
        "backdoor.png",
        "baselines.png",
    ):
        assert name in files, name
    assert "wandb" not in files  # tracking off by default: no wandb run
    forget = [int(t) for t in (tmp_path / "forget.txt").read_text().split()]
    n = len(pd.read_parquet(tmp_path / "layout.parquet"))

    exact = pd.read_parquet(tmp_path / "exactness.parquet")
    assert exact["predictions_equal"].all() and exact["weights_equal"].all()
    assert (exact["max_probability_difference"] == 0).all()
    assert (exact["device"] == "cpu").all() and (exact["torch_version"] == torch.__version__).all()
    assert exact["deterministic"].all()

    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    ensemble = metrics[metrics["model"] == "ensemble"].set_index(["stage", "aggregation"])
    values = ["accuracy", "f1", "precision", "recall", "auroc", "tie_rate"]
    pd.testing.assert_frame_equal(ensemble.loc["unlearned", values], ensemble.loc["retrained", values])
    assert (ensemble["shards_used"] == 2).all()
    ties = ensemble.loc[("trained", "vote"), "tie_rate"]
    assert 0 <= ties <= 1 and ensemble["tie_rate"].isna().sum() == 3  # null for the mean rows
    unsharded = metrics[metrics["model"] == "unsharded"].set_index("stage")
    assert set(unsharded.index) == {"retrained", "trained", "finetune", "neggrad", "scrub", "random_label"}
    assert unsharded.loc["retrained", "accuracy"] > 85

    unlearning = pd.read_parquet(tmp_path / "unlearning.parquet")
    assert unlearning["request"].tolist() == [0, 1] and unlearning["points"].tolist() == [75, 75]
    assert unlearning["cumulative_samples"].tolist() == unlearning["samples_processed"].cumsum().tolist()
    assert unlearning["unsharded_retrain_samples"].tolist() == [6 * (n - 75), 6 * (n - 150)]
    assert (
        unlearning["speedup_vs_unsharded"] == unlearning["unsharded_retrain_samples"] / unlearning["samples_processed"]
    ).all()
    # 75 points hit both shards in slice 0 with near certainty: each request retrains everything, as expected
    assert (unlearning["samples_processed"] == unlearning["ensemble_retrain_samples"]).all()
    assert (abs(unlearning["expected_samples"] / unlearning["samples_processed"] - 1) < 0.02).all()
    points = pd.read_parquet(tmp_path / "unlearning_points.parquet")
    assert sorted(points["index"]) == sorted(forget) and points.groupby("request").size().tolist() == [75, 75]
    layout = pd.read_parquet(tmp_path / "layout.parquet").set_index("index")
    assert (points["shard"].to_numpy() == layout.loc[points["index"], "shard"].to_numpy()).all()
    assert (points["slice"].to_numpy() == layout.loc[points["index"], "slice"].to_numpy()).all()

    membership = pd.read_parquet(tmp_path / "membership.parquet").set_index(["stage", "comparison"])
    figures = ["n", "lr_cv_accuracy", "auc", "auc_low", "auc_high", "tpr_at_1pct_fpr"]
    pd.testing.assert_frame_equal(membership.loc["unlearned", figures], membership.loc["retrained", figures])
    assert membership.loc[("trained", "forget_vs_test"), "n"] == 150
    assert membership.loc[("trained", "train_vs_test"), "n"] == 449  # every test point
    trained, retrained = (membership.loc[(stage, "forget_vs_test")] for stage in ("trained", "retrained"))
    # the ensemble that saw the forget set leaks it more than the one that never did (0.558 vs 0.527 here: the
    # digits CNN barely overfits, and at n=150 the two intervals overlap, which the intervals say)
    assert trained["auc"] > retrained["auc"] > 0.5 and trained["auc_low"] < retrained["auc_high"]

    backdoor = pd.read_parquet(tmp_path / "backdoor.parquet").set_index(["stage", "aggregation"])
    for agg in ("mean", "vote"):
        floor = backdoor.loc[("clean", agg), "asr"]
        assert floor < 5 and backdoor.loc[("trained", agg), "asr"] > 80
        assert backdoor.loc[("unlearned", agg), "asr"] < floor + 3
    assert backdoor.loc[("unlearned", "mean"), "shards_retrained"] == 2

    baselines = pd.read_parquet(tmp_path / "baselines.parquet").set_index("method")
    assert baselines.index.tolist() == ["sisa", "finetune", "neggrad", "scrub", "random_label", "retrained"]
    # SISA served the 2 requests one after another, each baseline unlearned the whole forget set once
    assert baselines["requests"].tolist() == [2, 1, 1, 1, 1, 1] and baselines.loc["sisa", "aggregation"] == "mean"
    assert baselines.loc["sisa", "samples_processed"] == unlearning["samples_processed"].sum()
    assert baselines.loc["retrained", "samples_processed"] == 6 * (n - 150)
    assert baselines.loc["finetune", "samples_processed"] == n - 150  # one epoch over the retained data
    # SCRUB: a min-step pass over the retained data in each of its 2 epochs, the first opening with a max-step pass
    assert baselines.loc["scrub", "samples_processed"] == 2 * (n - 150) + 150
    # random labels: one epoch over the retained and the relabelled forgotten points, which it gets wrong far
    # more often than fine-tuning, which only drifts from them
    assert baselines.loc["random_label", "samples_processed"] == n
    assert baselines.loc["random_label", "forget_accuracy"] < baselines.loc["finetune", "forget_accuracy"] - 20
    assert baselines.loc["sisa", "exact"] and baselines.loc["retrained", "exact"]
    assert baselines.loc["sisa", "forget_mia_auc"] == retrained["auc"]
    assert baselines.loc["retrained", "asr_after"] < 5 and baselines.loc["retrained", "asr_before"] > 80
    summary = (tmp_path / "summary.md").read_text()
    assert (
        summary.split("\n")[2] == "## What this run shows" and "\n## Unlearning 150 points in 2 request(s)" in summary
    )
    shows = summary.split("## What this run shows")[1].split("\n## ")[0]  # its sentences say what the tables hold
    assert "\n- **Forgotten exactly**: every shard" in shows and "(cpu, deterministic kernels on)" in shows
    asr = backdoor.loc[("trained", "mean"), "asr"]
    assert f"attack success {asr:.1f}% after training on them" in shows
    assert "The 2 requests retrained 4 of 4 shards (shards x requests) from scratch" in shows
    assert "- One seed's run (seed 42): each figure is a single draw" in shows
    finetune = baselines.loc["finetune"]
    assert (
        f"finetune {finetune['samples_processed']} samples "
        f"({baselines.loc['retrained', 'samples_processed'] / finetune['samples_processed']:.1f}x fewer), "
        f"test accuracy {finetune['accuracy']:.2f}%, forget-set accuracy {finetune['forget_accuracy']:.1f}%, "
        f"attack success {finetune['asr_before']:.1f}% before unlearning the poison and {finetune['asr_after']:.1f}%"
    ) in shows
    forget_auc = membership.loc[("unlearned", "forget_vs_test")]
    assert (
        f"{forget_auc['auc']:.2f} [{forget_auc['auc_low']:.2f}, {forget_auc['auc_high']:.2f}] after unlearning" in shows
    )


@pytest.mark.slow
def test_seeds_are_whole_runs_summarised_together_and_a_killed_seed_resumes(ray_session, tmp_path):
    """seeds: 2 gives seed3/ and seed4/, each a whole run of its own seed (its own layout), seeds.parquet with
    each seed's figures as its own tables hold them, and a summary.md whose sentences state the intervals of
    those rows; wandb (offline) gets a run per seed and one over them, with their figures. A seed without its
    summary.md (killed) is run again on --resume; a finished one is kept."""
    from rayfed.engine.sisa_run import resume_sisa, run_sisa
    from rayfed.stats import mean_interval, signed_interval

    config = build_config(
        [
            {
                "seed": 3,
                "seeds": 2,
                "sisa": {"shards": 2, "slices": 2, "epochs": 1},
                "unlearn": {"forget": 6, "membership_size": 20},
                "backdoor": {"enabled": False},
                "resources": {"torch_threads": 1},
                "tracking": {"wandb": "offline"},
            }
        ]
    )
    run_sisa(config, RunDirectory(tmp_path))
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 3  # seed 3, seed 4, sisa-seeds
    assert list((tmp_path / "wandb").glob("offline-run-*/files/media/images/seeds_*.png"))
    assert len(list((tmp_path / "wandb").glob("offline-run-*/files/media/images/accuracy_*.png"))) == 2
    seeds = pd.read_parquet(tmp_path / "seeds.parquet").set_index("seed")
    assert seeds.index.tolist() == [3, 4] and (seeds["exact"] == 1).all()
    assert (tmp_path / "seeds.png").is_file()
    layouts = [pd.read_parquet(tmp_path / f"seed{k}" / "layout.parquet") for k in (3, 4)]
    assert not layouts[0].equals(layouts[1])
    for k in (3, 4):
        assert load_config(str(tmp_path / f"seed{k}" / "config.yaml"), []).seed == k
        metrics = pd.read_parquet(tmp_path / f"seed{k}" / "metrics.parquet").set_index(["model", "stage"])
        unlearned = metrics[metrics["aggregation"].isna() | (metrics["aggregation"] == "mean")]
        assert seeds.loc[k, "unlearned_accuracy"] == unlearned.loc[("ensemble", "unlearned"), "accuracy"]
        assert seeds.loc[k, "unsharded_accuracy"] == unlearned.loc[("unsharded", "retrained"), "accuracy"]
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("# rayfed sisa: digits, cnn, S=2, R=2, distributed schedule, e=1, seeds 3, 4")
    assert "- **Forgotten exactly** in all 2 seeds" in summary
    assert "Ensemble figures use the `mean` aggregation" in summary
    mean, half = mean_interval((seeds["unlearned_accuracy"] - seeds["unsharded_accuracy"]).tolist())
    assert f"({signed_interval(mean, half)} points)" in summary or f"costs {-mean:.2f} ± {half:.2f} points" in summary

    kept = (tmp_path / "seed3" / "summary.md").stat().st_mtime_ns
    (tmp_path / "seed4" / "summary.md").unlink()
    resume_sisa(str(tmp_path), None, [])
    assert (tmp_path / "seed3" / "summary.md").stat().st_mtime_ns == kept
    assert (tmp_path / "seed4" / "summary.md").is_file()
    again = pd.read_parquet(tmp_path / "seeds.parquet").set_index("seed")
    accuracy = ["accuracy", "unlearned_accuracy", "retrained_accuracy", "unsharded_accuracy", "exact"]
    pd.testing.assert_frame_equal(again[accuracy], seeds[accuracy])


@pytest.mark.slow
def test_a_forget_set_that_empties_a_shard_takes_it_out_of_the_ensemble(ray_session, tmp_path):
    from rayfed.engine.sisa_run import run_sisa

    layout = make_layout(len(load_dataset("digits").train_y), shards=3, slices=1, seed=42)
    (tmp_path / "forget.txt").write_text("\n".join(str(i) for i in layout.shard_indices(0)))
    config = build_config(
        [
            {
                "sisa": {"shards": 3, "slices": 1, "epochs": 1},
                "unlearn": {"forget": str(tmp_path / "forget.txt")},
                "backdoor": {"enabled": False},
                "resources": {"torch_threads": 1},
            }
        ]
    )
    run = tmp_path / "run"
    run.mkdir()
    run_sisa(config, RunDirectory(run))
    metrics = pd.read_parquet(run / "metrics.parquet")
    used = metrics[metrics["model"] == "ensemble"].groupby("stage")["shards_used"].first().to_dict()
    assert used == {"trained": 3, "unlearned": 2, "retrained": 2}
    assert pd.read_parquet(run / "unlearning.parquet")["emptied_shards"].tolist() == [1]
    assert pd.read_parquet(run / "exactness.parquet")["predictions_equal"].all()
    assert "empties shard(s) [0]: they leave the ensemble" in (run / "summary.md").read_text()


@pytest.mark.slow
def test_a_vote_only_run_compares_its_votes_and_neggrad_forgets_a_single_point(ray_session, tmp_path):
    """`sisa.aggregation: [vote]`: the price of sharding and SISA's row of baselines.parquet are the majority
    vote's figures (they read the mean softmax's, which the run does not have). NegGrad+ runs on a forget set of
    one point (its batch of one, on the digits CNN's 1x1 maps, gives BatchNorm no batch statistics) and, ascending
    on that one point for a whole epoch, diverges to NaN weights: its row says so and has no figures (an argmax
    over NaN would have scored it as a model that always predicts class 0, the backdoor's target)."""
    from rayfed.engine.sisa_run import run_sisa

    config = build_config(
        [
            {
                "sisa": {"shards": 2, "slices": 1, "epochs": 1, "aggregation": ["vote"]},
                "unlearn": {"forget": 1, "baselines": ["neggrad"]},
                "backdoor": {"poison": 20},
                "resources": {"torch_threads": 1},
            }
        ]
    )
    run_sisa(config, RunDirectory(tmp_path))
    metrics = pd.read_parquet(tmp_path / "metrics.parquet").set_index(["model", "stage"])
    assert set(metrics["aggregation"].dropna()) == {"vote"}
    voted = metrics.loc[("ensemble", "unlearned"), "accuracy"]
    baselines = pd.read_parquet(tmp_path / "baselines.parquet").set_index("method")
    assert baselines.index.tolist() == ["sisa", "neggrad", "retrained"]
    assert baselines.loc["sisa", "aggregation"] == "vote" and baselines.loc["sisa", "accuracy"] == voted
    backdoor = pd.read_parquet(tmp_path / "backdoor.parquet").set_index("stage")
    assert baselines.loc["sisa", "asr_after"] == backdoor.loc["unlearned", "asr"]
    assert baselines.loc["sisa", "asr_before"] == backdoor.loc["trained", "asr"]
    assert baselines["diverged"].tolist() == [False, True, False]
    assert baselines.loc[["neggrad"], ["accuracy", "forget_accuracy", "forget_mia_auc"]].isna().all(axis=None)
    assert baselines.loc["retrained", "forget_mia_n"] == 1 and baselines.loc["neggrad", "samples_processed"] > 0
    assert "neggrad" not in metrics.loc["unsharded"].index
    summary = (tmp_path / "summary.md").read_text()
    assert "unlearn.baselines: neggrad diverged (non-finite outputs), so it has no figures" in summary
    assert "neggrad " in summary and "**diverged** (no figures)" in summary
    assert f"- price of sharding: ensemble (majority vote) accuracy {voted:.2f}% vs" in summary
    assert (tmp_path / "baselines.png").is_file()


@pytest.mark.slow
def test_nothing_to_forget_trains_and_measures_the_ensemble_over_seeds(ray_session, tmp_path):
    """`unlearn.forget: 0`: each seed trains and measures its ensemble, nothing is unlearned, audited or
    compared (the baselines asked for say so), and the summary over seeds says so instead of calling exactness
    unchecked."""
    from rayfed.engine.sisa_run import run_sisa
    from rayfed.sisa.findings import NOTHING_FORGOTTEN

    config = build_config(
        [
            {
                "seeds": 2,
                "sisa": {"shards": 2, "slices": 1, "epochs": 1},
                "unlearn": {"forget": 0, "baselines": ["finetune"]},
                "backdoor": {"enabled": False},
                "resources": {"torch_threads": 1},
            }
        ]
    )
    run_sisa(config, RunDirectory(tmp_path))
    assert (
        "unlearn.baselines: nothing to forget, so no approximate method ran"
        in (tmp_path / "seed42" / "summary.md").read_text()
    )
    for seed in (42, 43):
        files = {p.name for p in (tmp_path / f"seed{seed}").iterdir()}
        assert {"metrics.parquet", "summary.md"} <= files
        assert not files & {"unlearning.parquet", "exactness.parquet", "membership.parquet"}
        assert NOTHING_FORGOTTEN in (tmp_path / f"seed{seed}" / "summary.md").read_text()
    seeds = pd.read_parquet(tmp_path / "seeds.parquet").set_index("seed")
    trained = pd.read_parquet(tmp_path / "seed43" / "metrics.parquet").query("aggregation == 'mean'")
    assert seeds.loc[43, "accuracy"] == trained["accuracy"].item()
    summary = (tmp_path / "summary.md").read_text()
    assert f"- {NOTHING_FORGOTTEN}" in summary and "Paired differences" not in summary
    assert not (tmp_path / "seeds.png").exists()


@pytest.mark.slow
def test_a_validation_split_is_held_out_of_every_shard_and_measures_each_stage(ray_session, tmp_path):
    """data.validation_fraction: the shards train on the rest (the layout covers exactly it), validation.parquet
    holds each stage's ensemble on the held-out images (the unlearned one recomputed here from the final
    checkpoints), the run's val_* figures come from it, and the test metrics are still on the test set."""
    from rayfed.engine.sisa_run import ShardEnsemble, make_setup, run_sisa
    from rayfed.sisa.ensemble import classification_metrics, combine_shards
    from rayfed.sisa.seeds import run_figures

    config = build_config(
        [
            {
                "data": {"validation_fraction": 0.2},
                "sisa": {"shards": 2, "slices": 1, "epochs": 1},
                "unlearn": {"forget": 3},
                "backdoor": {"enabled": False},
                "resources": {"torch_threads": 1},
            }
        ]
    )
    setup = make_setup(config)
    full = len(load_dataset("digits").train_y)
    validation_x, validation_y = setup.validation
    assert len(validation_y) == round(0.2 * full) and len(setup.data.train_y) == full - len(validation_y)
    assert sorted(i for s in range(2) for i in setup.layout.shard_indices(s)) == list(range(len(setup.data.train_y)))
    run_sisa(config, RunDirectory(tmp_path))

    validation = pd.read_parquet(tmp_path / "validation.parquet").set_index(["stage", "aggregation"])
    assert set(validation.index.get_level_values("stage")) == {"trained", "unlearned", "retrained"}
    states = [
        torch.load(tmp_path / "checkpoints" / "main" / f"shard{s}" / "slice1.pt", weights_only=True)["model"]
        for s in range(2)
    ]
    probs = ShardEnsemble(setup.settings, states, 256).probs(validation_x)
    unlearned = classification_metrics(validation_y, *combine_shards(probs, "mean"))["accuracy"]
    assert validation.loc[("unlearned", "mean"), "accuracy"] == pytest.approx(unlearned)
    figures = run_figures(RunDirectory(tmp_path), "mean")
    assert figures["val_unlearned_accuracy"] == pytest.approx(unlearned)
    assert figures["val_accuracy"] == validation.loc[("trained", "mean"), "accuracy"]
    test = (
        pd.read_parquet(tmp_path / "metrics.parquet").query("model == 'ensemble'").set_index(["stage", "aggregation"])
    )
    on_test = ShardEnsemble(setup.settings, states, 256).probs(setup.data.test_x)
    expected = classification_metrics(setup.data.test_y, *combine_shards(on_test, "mean"))["accuracy"]
    assert test.loc[("unlearned", "mean"), "accuracy"] == pytest.approx(expected)
    assert expected != pytest.approx(unlearned)  # two image sets, two figures
    assert "## Validation metrics" in (tmp_path / "summary.md").read_text()


def test_a_trigger_too_large_for_the_images_is_refused_before_anything_trains():
    """make_setup, which checks every input before a shard trains, refuses a trigger larger than digits' 8x8
    images (it used to surface only at the backdoor audit, after the whole run had trained); without the audit
    the size does not matter."""
    from rayfed.engine.sisa_run import make_setup
    from rayfed.errors import UserError

    with pytest.raises(UserError, match=r"^backdoor.trigger_size: 9 does not fit in 8x8 images$"):
        make_setup(build_config([{"backdoor": {"trigger_size": 9}}]))
    assert make_setup(build_config([{"backdoor": {"trigger_size": 9, "enabled": False}}])).poison is None


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["sisa.shards=2000"], "sisa.shards"),
        (["sisa.slices=700"], "sisa.slices"),
        (["backdoor.target_class=10"], "backdoor.target_class"),
        (["backdoor.trigger_size=9"], "backdoor.trigger_size: 9 does not fit in 8x8 images"),
        (["sisa.batch_size=1"], "sisa.batch_size: must be >= 2 (BatchNorm), got 1"),
        (["unlearn.forget=FILE:5 5"], "unlearn.forget"),
        (["unlearn.forget=FILE:1 99999"], "unlearn.forget"),
        (["unlearn.forget=FILE:1 two"], "unlearn.forget"),
        (["unlearn.forget=/nonexistent/forget.txt"], "unlearn.forget"),
        (["backdoor.poison=0.5"], "backdoor.poison"),  # a count; the fraction has its own key
        (["sisa.slices=20", "sisa.epochs=5"], "sisa.epochs"),  # the distributed schedule never trains slice 19
        (["unlearn.baselines=[retrain]"], "unlearn.baselines"),
        (["unlearn.requests=21"], "unlearn.requests"),
        (["data.validation_fraction=0.005"], "data.validation_fraction=0.005: 7 validation images"),
    ],
)
def test_cli_bad_input_exits_2_with_one_error_line_and_no_run_dir(rayfed_cli, tmp_path, overrides, key):
    sets = []
    for text in overrides:
        if "FILE:" in text:
            name, content = text.split("=FILE:")
            (tmp_path / "forget.txt").write_text(content.replace(" ", "\n"))
            text = f"{name}={tmp_path / 'forget.txt'}"
        sets += ["--set", text]
    out = tmp_path / "run"
    proc = rayfed_cli.run("sisa", *sets, "--out", str(out), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0], proc.stderr
    assert not out.exists()
