"""Sweep files without running a sweep: parsing, overrides, validation before Ray, trial resources, plots."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rayfed.config import ResourcesConfig, build_config
from rayfed.engine.runtime import Node
from rayfed.errors import UserError
from rayfed.tune.resources import TrialBudget, budget_for, plan_trial
from rayfed.tune.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]
TUNE_CONFIGS = sorted((ROOT / "tune_configs").glob("*.yaml"))
ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}

MINIMAL = {"run": "fl", "base": {"fl": {"rounds": 2}}, "param_space": {"audit.gamma": {"grid_search": [1, 2]}}}


def write_sweep(tmp_path, document, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("path", TUNE_CONFIGS, ids=[p.name for p in TUNE_CONFIGS])
def test_bundled_sweep_files_validate(path):
    spec = load_sweep(path)
    assert spec.params and spec.run in ("fl", "sisa")
    assert Path(spec.base["data"]["root"]).is_absolute()


def test_every_sweep_has_a_smoke_twin_on_digits():
    full = [p for p in TUNE_CONFIGS if not p.stem.endswith("_smoke")]
    fair_baselines = {"qffl_q", "term_tilt", "afl_lambda"}
    unlearning = {"sisa_grid", "neggrad_alpha", "scrub_max_epochs"}
    assert {p.stem for p in full} == {"fedaudit_gamma", "fedaudit_lambda"} | fair_baselines | unlearning
    for path in full:
        twin = path.with_name(f"{path.stem}_smoke.yaml")
        spec, smoke = load_sweep(path), load_sweep(twin)
        assert spec.base_config.data.dataset == "cifar10" and smoke.base_config.data.dataset == "digits"
        assert [p.key for p in spec.params] == [p.key for p in smoke.params]


def test_notebook_settings_of_the_full_sweeps():
    gamma = load_sweep(ROOT / "tune_configs" / "fedaudit_gamma.yaml")
    c = gamma.base_config
    assert (c.data.num_clients, c.fl.rounds, c.fl.local_epochs, c.data.batch_size, c.fl.lr) == (20, 50, 3, 512, 0.01)
    assert (c.audit.gan_epochs, c.audit.n_probes, c.data.partition, c.model.name) == (20, 2000, "extreme", "cnn")
    assert gamma.params[0].values == [0.5, 1, 2, 4, 8, 16] and c.fl.methods == ["fedavg", "fedauditgan"]
    names = ("fedaudit_gamma", "fedaudit_lambda", "qffl_q", "term_tilt", "afl_lambda", "sisa_grid")
    names += ("neggrad_alpha", "scrub_max_epochs")
    for name in names:  # chosen on validation, reported on test
        for sweep in (load_sweep(ROOT / "tune_configs" / f"{name}{twin}.yaml") for twin in ("", "_smoke")):
            assert (
                sweep.metric.rpartition("/")[2].startswith("val_") and sweep.base_config.data.validation_fraction == 0.1
            )
    grids = {"qffl_q": ("qffl.q", [0, 0.1, 1, 5]), "term_tilt": ("term.tilt", [0.25, 0.5, 1, 2, 5])}
    grids["afl_lambda"] = ("afl.lambda_lr", [0.003, 0.01, 0.03, 0.1, 0.3])
    for name, (key, values) in grids.items():  # a fair-FL baseline's sweep: the method last (the trial reports
        # its figures), FedAvg, uniform and gamma = 2 beside it, 3 seeds, the gamma sweep's notebook settings
        sweep = load_sweep(ROOT / "tune_configs" / f"{name}.yaml")
        c, method = sweep.base_config, key.split(".")[0]
        assert [(p.key, p.values) for p in sweep.params] == [(key, values)] and sweep.metric == "val_min_accuracy"
        assert c.fl.methods == ["fedavg", "uniform", "fedauditgan", method] and c.seed_list == [42, 43, 44]
        assert (c.data, c.model) == (gamma.base_config.data, gamma.base_config.model)
        assert (c.fl.rounds, c.fl.local_epochs, c.fl.lr) == (50, 3, 0.01)
        assert (c.audit.gamma, c.audit.gan_epochs, c.audit.n_probes) == (2.0, 20, 2000)
    sisa = load_sweep(ROOT / "tune_configs" / "sisa_grid.yaml").base_config
    assert (sisa.model.name, sisa.sisa.epochs, sisa.sisa.schedule, sisa.sisa.lr) == ("resnet18", 5, "union", 0.001)
    grids = {"neggrad_alpha": ("unlearn.neggrad_alpha", [0.5, 0.9, 0.95, 0.99, 0.999])}
    grids["scrub_max_epochs"] = ("unlearn.scrub_max_epochs", [0, 1, 2, 3])
    for name, (key, values) in grids.items():  # an unlearning baseline's sweep: sisa_grid's settings, 3 seeds,
        # ranked on the method's gap to the model retrained from scratch
        sweep = load_sweep(ROOT / "tune_configs" / f"{name}.yaml")
        c, method = sweep.base_config, name.split("_")[0]
        assert (c.data, c.model, c.sisa) == (sisa.data, sisa.model, sisa.sisa) and c.seed_list == [42, 43, 44]
        assert c.unlearn.baselines == [method] and (sweep.metric, sweep.mode) == (f"{method}/val_retrain_gap", "min")
        assert [(p.key, p.values) for p in sweep.params] == [(key, values)]


def test_overrides_address_the_sweep_file_and_config_keys_are_base_shorthand(tmp_path):
    path = write_sweep(tmp_path, MINIMAL)
    spec = load_sweep(
        path,
        [
            "tune_config.num_samples=3",
            "base.fl.rounds=4",
            "data.num_clients=3",
            "param_space.audit.lambda1={choice: [0.5, 2]}",
            "resources.address=auto",
        ],
    )
    assert spec.num_samples == 3
    config = spec.base_config
    assert (config.fl.rounds, config.data.num_clients, config.resources.address) == (4, 3, "auto")
    assert [(p.key, p.sampler, p.values) for p in spec.params] == [
        ("audit.gamma", "grid_search", [1, 2]),
        ("audit.lambda1", "choice", [0.5, 2]),
    ]


def test_base_may_be_a_path_next_to_the_sweep_file(tmp_path):
    (tmp_path / "base.yaml").write_text("fl: {rounds: 7}\ndata: {root: mydata}\n")
    spec = load_sweep(write_sweep(tmp_path, {**MINIMAL, "base": "base.yaml"}), ["base.fl.local_epochs=2"])
    assert (spec.base_config.fl.rounds, spec.base_config.fl.local_epochs) == (7, 2)
    assert spec.base["data"]["root"] == str(Path("mydata").resolve())


BAD = [
    ({"runn": "fl"}, "runn"),
    ({"run": "train"}, "run"),
    ({"base": {"fl": {"nonsense": 1}}}, "fl.nonsense"),
    ({"base": {"fl": {"rounds": "many"}}}, "fl.rounds"),
    ({"param_space": {"audit.gama": {"grid_search": [1]}}}, "audit.gama"),
    ({"param_space": {"audit.gamma": {"grid_search": [1, -2]}}}, "audit.gamma"),
    ({"param_space": {"fl.rounds": {"grid_search": [1, "x"]}}}, "fl.rounds"),
    ({"param_space": {"audit.gamma": {"normal": [0, 1]}}}, "audit.gamma"),
    ({"param_space": {"audit.gamma": {"uniform": [2, 1]}}}, "audit.gamma"),
    ({"param_space": {"audit.lambda1": {"loguniform": [0, 1]}}}, "audit.lambda1"),
    ({"param_space": {"fl.rounds": {"randint": [1, 2.5]}}}, "fl.rounds"),
    (
        {"param_space": {"fl.local_epochs": {"uniform": [1, 5]}}},  # Tune would draw 4.43 inside a trial
        "param_space.fl.local_epochs: fl.local_epochs: expected an integer, got 1.0 \\(uniform draws real",
    ),
    ({"tune_config": {"metrc": "jfi"}}, "tune_config.metrc"),
    ({"tune_config": {"metric": "f1"}}, "tune_config.metric"),
    ({"tune_config": {"metric": "val_jfi"}}, "tune_config.metric: val_jfi is measured on the validation split"),
    (
        {"tune_config": {"metric": "flip_rate", "scheduler": {"type": "asha"}}},
        "tune_config.scheduler: flip_rate is measured once, after a trial's last round",
    ),
    (
        {"base": {"metrics": {"held_out_audit": False}}, "tune_config": {"metric": "flip_rate"}},
        "tune_config.metric: flip_rate is the held-out audit's, which the base config does not run",
    ),
    ({"tune_config": {"mode": "up"}}, "tune_config.mode"),
    ({"tune_config": {"num_samples": 0}}, "tune_config.num_samples"),
    ({"tune_config": {"scheduler": {"type": "pbt"}}}, "tune_config.scheduler"),
    ({"tune_config": {"scheduler": {"type": "asha", "grace": 1}}}, "tune_config.scheduler.grace"),
    ({"tune_config": {"scheduler": {"type": "asha", "grace_period": 5}}}, "grace_period"),
    ({"tune_config": {"scheduler": {"type": "asha", "reduction_factor": 1}}}, "reduction_factor: must be > 1, got 1"),
    ({"tune_config": {"scheduler": {"type": "asha", "brackets": 2.5}}}, "brackets: expected an integer >= 1"),
    ({"tune_config": {"metric": 5}}, "tune_config.metric: expected the name of a figure, got 5"),
    (  # the base measures validation figures, but a swept value of 0 would not: those trials never report one
        {
            "base": {"fl": {"rounds": 2}, "data": {"validation_fraction": 0.1}},
            "param_space": {"data.validation_fraction": {"grid_search": [0.0, 0.1]}},
            "tune_config": {"metric": "val_jfi"},
        },
        "val_jfi is measured on the validation split, which some trials of param_space do not hold",
    ),
    (
        {
            "param_space": {"metrics.held_out_audit": {"grid_search": [True, False]}},
            "tune_config": {"metric": "flip_rate"},
        },
        "flip_rate is the held-out audit's, which some trials of param_space do not run",
    ),
    ({"run_config": {"path": "x"}}, "run_config.path"),
    ({"trial_resources": {"gpu": 1}}, "trial_resources.gpu"),
    ({"trial_resources": {"cpus": 0}}, "trial_resources.cpus"),
    ({"trial_resources": {"cpus": float("inf")}}, "trial_resources.cpus: expected a finite number"),
    ({"trial_resources": {"gpus": float("nan")}}, "trial_resources.gpus: expected a finite number"),
]


@pytest.mark.parametrize("change,needle", BAD, ids=[n for _, n in BAD])
def test_bad_sweep_files_name_the_key(tmp_path, change, needle):
    path = write_sweep(tmp_path, {**MINIMAL, **change})
    with pytest.raises(UserError, match=needle.replace(".", r"\.")) as info:
        load_sweep(path)
    assert "sweep.yaml" in str(info.value)


SISA_MINIMAL = {
    "run": "sisa",
    "base": {"data": {"validation_fraction": 0.1}, "unlearn": {"baselines": ["neggrad"]}},
    "param_space": {"unlearn.neggrad_alpha": {"grid_search": [0.9, 0.99]}},
    "tune_config": {"metric": "neggrad/val_retrain_gap", "mode": "min"},
}
BAD_BASELINE_METRICS = [
    ({"unlearn": {"baselines": ["scrub"]}}, "needs neggrad in unlearn.baselines, which the base config does not have"),
    ({"unlearn": {"baselines": ["neggrad"], "forget": 0}}, "needs a forget set \\(unlearn.forget\\), which the base"),
    ({"data": {"validation_fraction": 0.0}}, "neggrad/val_retrain_gap is measured on the validation split"),
]


def test_a_sisa_sweep_may_rank_on_an_approximate_baseline_s_figure(tmp_path):
    """`<method>/<figure>` of a method the base runs is a sisa metric (the retrained reference's too); one the
    trials would not report is refused before Ray starts, naming what the base config lacks."""
    spec = load_sweep(write_sweep(tmp_path, SISA_MINIMAL))
    assert (spec.metric, spec.mode) == ("neggrad/val_retrain_gap", "min")
    reference = {**SISA_MINIMAL, "tune_config": {"metric": "retrained/val_accuracy"}}
    assert load_sweep(write_sweep(tmp_path, reference)).metric == "retrained/val_accuracy"
    with pytest.raises(UserError, match="'neggrad/nonsense' is not reported by sisa trials"):
        load_sweep(write_sweep(tmp_path, {**SISA_MINIMAL, "tune_config": {"metric": "neggrad/nonsense"}}))
    for base, needle in BAD_BASELINE_METRICS:
        document = {**SISA_MINIMAL, "base": {**SISA_MINIMAL["base"], **base}}
        with pytest.raises(UserError, match=needle):
            load_sweep(write_sweep(tmp_path, document))


def test_what_param_space_sets_decides_which_figures_the_trials_report(tmp_path):
    """A validation split (or a forget file) that param_space gives every trial counts as the base's would: a
    val_ metric is then accepted and chosen by default, and relative paths in param_space become absolute, as
    the base's do, before the trials change directory; a sisa sweep's metric that is not a name is one error."""
    swept = {**MINIMAL, "param_space": {"data.validation_fraction": {"grid_search": [0.1, 0.2]}}}
    assert load_sweep(write_sweep(tmp_path, swept)).metric == "val_jfi"
    forget = {
        "run": "sisa",
        "param_space": {"unlearn.forget": {"grid_search": ["a.txt", "b.txt"]}, "data.root": "here"},
    }
    params = {p.key: p for p in load_sweep(write_sweep(tmp_path, forget)).params}
    files, root = params["unlearn.forget"], params["data.root"]
    assert files.values == [str(Path("a.txt").resolve()), str(Path("b.txt").resolve())]
    assert root.values == str(Path("here").resolve())
    with pytest.raises(UserError, match="tune_config.metric: expected the name of a figure, got None"):
        load_sweep(write_sweep(tmp_path, {**SISA_MINIMAL, "tune_config": {"metric": None}}))


def test_an_fl_sweep_with_a_validation_split_selects_on_validation_unless_told_otherwise(tmp_path):
    path = write_sweep(tmp_path, MINIMAL)
    assert load_sweep(path).metric == "jfi"
    assert load_sweep(path, ["base.data.validation_fraction=0.1"]).metric == "val_jfi"
    assert load_sweep(path, ["base.data.validation_fraction=0.1", "tune_config.metric=accuracy"]).metric == "accuracy"
    chosen = load_sweep(path, ["base.data.validation_fraction=0.1", "tune_config.metric=val_flip_rate"])
    assert (chosen.metric, chosen.scheduler["type"]) == ("val_flip_rate", "fifo")  # the held-out audit's twin
    sisa = write_sweep(tmp_path, {**MINIMAL, "run": "sisa", "param_space": {"sisa.shards": {"grid_search": [1, 2]}}})
    assert load_sweep(sisa, ["base.data.validation_fraction=0.1"]).metric == "val_accuracy"
    with pytest.raises(UserError, match="val_unlearned_accuracy is measured on the validation split"):
        load_sweep(sisa, ["tune_config.metric=val_unlearned_accuracy"])


@pytest.mark.parametrize(
    "value,needle",
    [("3", "base: expected a mapping or a path, got 3"), ("x.yaml", "base config .*x.yaml does not exist")],
)
def test_base_replaced_by_an_override_is_checked_as_in_the_file(tmp_path, value, needle):
    with pytest.raises(UserError, match=needle):
        load_sweep(write_sweep(tmp_path, MINIMAL), [f"base={value}"])


def test_base_override_may_name_a_file_or_none(tmp_path):
    (tmp_path / "other.yaml").write_text("fl: {rounds: 7}\n")
    path = write_sweep(tmp_path, MINIMAL)
    assert load_sweep(path, ["base=other.yaml"]).base_config.fl.rounds == 7
    assert load_sweep(path, ["base=null"]).base_config.fl.rounds == build_config([]).fl.rounds


def test_unknown_override_is_refused(tmp_path):
    with pytest.raises(UserError, match="fl.nonsense"):
        load_sweep(write_sweep(tmp_path, MINIMAL), ["fl.nonsense=1"])


def test_cli_reports_a_bad_sweep_file_in_one_line_and_leaves_nothing(tmp_path):
    """One `error:` line even on a machine where matplotlib has no font cache yet (an empty MPLCONFIGDIR: it
    logs 'generated new fontManager' at INFO on import, which rayfed's logging must not let through)."""
    path = write_sweep(tmp_path, {**MINIMAL, "param_space": {"audit.gama": {"grid_search": [1]}}})
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "rayfed", "sweep", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        env={**ENV, "MPLCONFIGDIR": str(tmp_path / "matplotlib")},
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "audit.gama" in lines[0], result.stderr
    assert not out.exists()


SESSION_NODE = (Node(2, 1),)
"""The test session's Ray: one node, 2 CPUs, a fake GPU (as the two concurrent trials of test_tune_sweep see it)."""


def test_fl_trial_shares_its_budget_among_driver_and_actors():
    config = build_config([{"data": {"num_clients": 3}, "resources": {"clients_per_actor": 1}}])
    plan = plan_trial("fl", config, TrialBudget(1.0, 0.5, SESSION_NODE, trials=2))
    assert plan.driver_cpus == 0.2 and plan.actors == ((0.2, 0.125),) * 4  # 3 clients + the server
    assert plan.total["CPU"] == pytest.approx(1.0) and plan.total["GPU"] == pytest.approx(0.5)
    assert plan.overrides == {
        "cpus_per_client": 0.2,
        "gpus_per_client": 0.125,
        "server_cpus": 0.2,
        "server_gpus": 0.125,
        "clients_per_actor": 1,
        "audit_servers": 1,  # two audited runs (gamma 2, 8), but half a GPU: one server
    }
    bundles = plan.placement_group().bundles
    assert bundles[0] == {"CPU": 0.2} and bundles[1:] == [{"CPU": 0.2, "GPU": 0.125}] * 4


def test_gpu_trial_with_auto_clients_per_actor_hosts_them_on_one_actor_per_cpu_of_its_budget():
    """One CPU and half a GPU per trial: `auto` puts the 3 clients on one actor (one CPU to drive it)."""
    plan = plan_trial("fl", build_config([{"data": {"num_clients": 3}}]), TrialBudget(1.0, 0.5, SESSION_NODE))
    assert plan.overrides["clients_per_actor"] == 3 and len(plan.actors) == 1 + 1  # one client actor + the server
    assert plan.driver_cpus == 0.3333 and plan.actors == ((0.3333, 0.25),) * 2  # 1/3 CPU floored to 4 places


def test_explicit_fractions_are_kept_and_cpu_only_bundles_have_no_gpu():
    resources = {"clients_per_actor": 2, "server_cpus": 0.5, "audit_servers": 1}
    config = build_config([{"data": {"num_clients": 4}, "resources": resources}])
    plan = plan_trial("fl", config, TrialBudget(2.0, 0.0, (Node(2, 0),)))
    assert plan.actors == ((0.5, 0.0), (0.5, 0.0), (0.5, 0.0))  # 2 client actors + the server
    assert plan.overrides["audit_servers"] == 1
    assert all("GPU" not in b for b in plan.placement_group().bundles)


def test_cpu_only_trial_hosts_its_clients_on_one_actor_per_cpu():
    config = build_config([{"data": {"num_clients": 10}}])
    plan = plan_trial("fl", config, TrialBudget(3.0, 0.0, (Node(3, 0),)))
    assert len(plan.actors) == 3 + 2  # ceil(10 / 3) = 4 clients per actor: 4 + 4 + 2, and a server per gamma
    assert plan.overrides["clients_per_actor"] == 4


def test_clients_per_actor_auto():
    auto = ResourcesConfig()
    assert auto.actor_capacity(10, cpus=2, gpus=0) == 5  # one actor per CPU: 5 + 5
    assert auto.actor_capacity(10, cpus=3, gpus=0) == 4  # 4 + 4 + 2
    assert auto.actor_capacity(3, cpus=16, gpus=0) == 1  # never more actors than clients
    assert auto.actor_capacity(10, cpus=0.5, gpus=0) == 10  # less than a CPU: one actor
    assert auto.actor_capacity(20, cpus=16, gpus=1) == 5  # 4 actors per GPU (CLIENT_ACTORS_PER_GPU): 4 x 5
    assert auto.actor_capacity(20, cpus=64, gpus=8) == 1  # 32 actor slots on 8 GPUs: one actor per client
    assert auto.actor_capacity(20, cpus=16, gpus=0.5) == 10  # half a GPU: 2 actors
    assert auto.actor_capacity(20, cpus=2, gpus=1) == 10  # 2 CPUs beside the GPU: 2 actors
    assert auto.actor_capacity(1000, cpus=32, gpus=4) == 63  # 16 actors, not a CUDA context per client
    assert ResourcesConfig(clients_per_actor=3).actor_capacity(10, cpus=2, gpus=0) == 3


def test_audit_servers_auto():
    auto = ResourcesConfig()
    assert auto.server_count(10, cpus=2, gpus=0) == 2  # five seeds x two gammas on 2 CPUs: one server per CPU
    assert auto.server_count(2, cpus=16, gpus=0) == 2  # never more servers than audited runs
    assert auto.server_count(0, cpus=16, gpus=0) == 1  # FedAvg alone still aggregates on one server
    assert auto.server_count(10, cpus=16, gpus=1) == 1  # one per GPU: GAN steps would time-slice one GPU
    assert auto.server_count(10, cpus=64, gpus=4) == 4
    assert auto.server_count(4, cpus=0.5, gpus=0) == 1  # less than a CPU: one server
    assert ResourcesConfig(audit_servers=3).server_count(1, cpus=2, gpus=0) == 3


def test_sisa_trial_reserves_one_pool_of_shards():
    # run_sisa closes each shard pool (trained, retrained from scratch, backdoor) before it starts the next
    for verify in (True, False):
        config = build_config([{"sisa": {"shards": 3}, "unlearn": {"verify": verify}}])
        plan = plan_trial("sisa", config, TrialBudget(1.0, 1.0, SESSION_NODE))
        assert plan.actors == ((0.25, 0.3333),) * 3 and plan.overrides["gpus_per_shard"] == 0.3333


def test_budget_defaults_to_the_cluster_shared_by_concurrent_trials():
    nodes = (Node(4, 1), Node(4, 1))
    assert budget_for(nodes, 4, None, None) == TrialBudget(2, 0.5, nodes, 4)
    assert budget_for((Node(8, 0),), None, 3, None) == TrialBudget(3, 0, (Node(8, 0),), 1)
    with pytest.raises(UserError, match="trial_resources.cpus"):
        plan_trial(
            "fl",
            build_config([{"data": {"num_clients": 50}, "resources": {"clients_per_actor": 1}}]),
            TrialBudget(0.001, 0, (Node(8, 0),)),
        )


def test_sweep_figures(tmp_path):
    from rayfed.tune.plots import plot_sweep

    fl = pd.DataFrame(
        {
            "status": "TERMINATED",
            "audit.lambda1": [0.1, 0.1, 10, 10],
            "audit.lambda2": [0.1, 10, 0.1, 10],
            "accuracy": [50.0, 52, 49, 55],
            "jfi": [0.9, 0.92, 0.95, 0.91],
            "fedavg/accuracy": 51.0,
            "fedavg/jfi": 0.9,
        }
    )
    paths = plot_sweep("fl", fl, ["audit.lambda1", "audit.lambda2"], tmp_path)
    assert [p.name for p in paths] == ["fl_audit.lambda1.png", "fl_audit.lambda2.png"]
    sisa = pd.DataFrame(
        {
            "status": "TERMINATED",
            "sisa.shards": [5, 5, 10, 10],
            "sisa.slices": [5, 10, 5, 10],
            "accuracy": [0.5, 0.6, 0.4, 0.45],
            "speedup_samples": [3.0, 4, 6, 8],
        }
    )
    paths = plot_sweep("sisa", sisa, ["sisa.shards", "sisa.slices"], tmp_path)
    assert [p.name for p in paths] == ["sisa_heatmaps.png"]
    assert all(p.stat().st_size > 10_000 for p in tmp_path.glob("*.png"))


def test_params_become_tune_search_spaces(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    from rayfed.tune.sweep import tune_domain

    space = {
        "audit.gamma": {"grid_search": [1, 2]},
        "audit.lambda1": {"choice": [1, 3]},
        "audit.lambda2": {"loguniform": [0.1, 10]},
        "fl.rounds": {"randint": [1, 4]},
        "fl.lr": 0.05,
    }
    document = {**MINIMAL, "param_space": space}
    domains = {p.key: tune_domain(p) for p in load_sweep(write_sweep(tmp_path, document)).params}
    assert domains["audit.gamma"] == {"grid_search": [1, 2]} and domains["fl.lr"] == 0.05
    assert isinstance(domains["audit.lambda1"], Categorical) and domains["audit.lambda1"].categories == [1, 3]
    lam2 = domains["audit.lambda2"]
    assert isinstance(lam2, Float) and (lam2.lower, lam2.upper) == (0.1, 10)
    assert isinstance(domains["fl.rounds"], Integer) and domains["fl.rounds"].upper == 4


def test_numbers_yaml_reads_as_strings_are_numbers_in_a_sweep(tmp_path):
    """PyYAML reads 1e-4 (no dot) as a string; a range needs numbers and a grid's column must stay numeric."""
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "run: fl\nbase: {fl: {rounds: 2}}\n"
        "param_space:\n  audit.lambda2: {loguniform: [1e-4, 1e-1]}\n  fl.lr: {grid_search: [1e-3, 1e-2]}\n"
    )
    params = {p.key: p for p in load_sweep(path).params}
    assert params["audit.lambda2"].values == [1e-4, 1e-1] and params["fl.lr"].values == [1e-3, 1e-2]


def test_wandb_tracking_adds_rays_logger_callback(tmp_path):
    from ray.air.integrations.wandb import WandbLoggerCallback

    from rayfed.tune.sweep import tracking_callbacks

    assert tracking_callbacks(load_sweep(write_sweep(tmp_path, MINIMAL))) == []
    spec = load_sweep(write_sweep(tmp_path, MINIMAL), ["tracking.wandb=offline", "tracking.project=p"])
    [callback] = tracking_callbacks(spec)
    assert isinstance(callback, WandbLoggerCallback) and callback.project == "p"
