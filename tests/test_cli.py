"""Bad input through the `rayfed` command: exit 2, one `error:` line naming the problem, nothing left.

The entry point itself (`python -m rayfed`: argparse's errors, a missing config file) runs as a subprocess; the
other command lines run in processes forked from one that imported rayfed once (the `rayfed_cli` fixture)."""

import subprocess
import sys

import pytest
from cli_runner import ENV


def python_m_rayfed(*args):
    return subprocess.run([sys.executable, "-m", "rayfed", *args], capture_output=True, text=True, env=ENV, timeout=300)


def assert_user_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


BAD_SETS = [
    (["--set", "fl.nonsense=1"], "fl.nonsense"),
    (["--set", "fl.rounds=many"], "fl.rounds"),
    (["--set", "fl.rounds=0"], "fl.rounds"),
    (["--set", "data.num_clients=0"], "data.num_clients"),
    (["--set", "data.num_clients=5000"], "data.num_clients"),
    (["--set", "data.dataset=imagenet"], "data.dataset"),
    (["--set", "data.partition=random"], "data.partition"),
    (["--set", "fl.methods=[fedavg,fedprox]"], "fl.methods"),
    (["--set", "model.name=vit"], "model.name"),
    (["--set", "audit.n_probes=-5"], "audit.n_probes"),
    (["--set", "audit.gamma=[2, inf]"], "audit.gamma"),
    (["--set", "audit.gan_step=fast"], "audit.gan_step"),
    (["--set", "audit.score=flips"], "audit.score"),
    (["--set", "fl.clients_per_round=0"], "fl.clients_per_round"),
    (["--set", "fl.clients_per_round=11"], "fl.clients_per_round"),
    (["--set", "tracking.wandb=maybe"], "tracking.wandb"),
    (["--set", "resources.clients_per_actor=many"], "resources.clients_per_actor"),
    (["--set", "resources.clients_per_actor=0"], "resources.clients_per_actor"),
    (["--set", "resources.audit_servers=0"], "resources.audit_servers"),
    (["--set", "resources.audit_servers=many"], "resources.audit_servers"),
    (["--set", "fl.rounds"], "fl.rounds"),
    (["--set", "fl.clients_per_round=1.0"], "fl.clients_per_round"),  # a fraction goes to fl.client_fraction
    (["--set", "fl.client_fraction=1.5"], "fl.client_fraction"),
    (["--set", "fl.client_fraction=0.5", "--set", "fl.clients_per_round=2"], "fl.client_fraction"),
    (["--set", "seeds=[1, 1]"], "seeds"),
    (["--set", "seeds=0"], "seeds"),
    (["--set", "metrics.client_accuracy=validation"], "metrics.client_accuracy"),
    (["--set", "metrics.correction=bonferroni"], "metrics.correction"),
    (["--set", "metrics.audit_epochs=0"], "metrics.audit_epochs"),
    (["--set", "metrics.audit_batch_size=1"], "metrics.audit_batch_size"),
    (["--set", "metrics.held_out_audit=sometimes"], "metrics.held_out_audit"),
    (["--set", "data.client_test_size=most"], "data.client_test_size"),
    (["--set", "data.validation_fraction=1"], "data.validation_fraction: must be in [0, 1), got 1"),
    (["--set", "data.validation_fraction=0.9"], "data.validation_fraction: with data.audit_fraction 0.1"),
    (["--set", "data.validation_fraction=0.005"], "data.validation_fraction=0.005: 7 validation images"),
    (["--set", "qffl.lipschitz=fast"], "qffl.lipschitz"),
    (["--set", "qffl.lipschitz=0"], "qffl.lipschitz"),
]


@pytest.mark.parametrize("args,needle", BAD_SETS, ids=[a[1] for a, _ in BAD_SETS])
def test_bad_values_exit_2_and_leave_no_run_dir(rayfed_cli, tmp_path, args, needle):
    out = tmp_path / "run"
    assert_user_error(rayfed_cli.run("fl", *args, "--out", str(out)), needle)
    assert not out.exists()


def test_missing_config_file(tmp_path):
    assert_user_error(
        python_m_rayfed("fl", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")), "nope.yaml"
    )
    assert not (tmp_path / "r").exists()


def test_malformed_yaml(rayfed_cli, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("fl:\n  rounds: [1,\n")
    assert_user_error(rayfed_cli.run("fl", "--config", str(config), "--out", str(tmp_path / "r")), "bad.yaml", "YAML")
    assert not (tmp_path / "r").exists()


def test_yaml_that_is_not_a_mapping(rayfed_cli, tmp_path):
    config = tmp_path / "list.yaml"
    config.write_text("- 1\n- 2\n")
    assert_user_error(rayfed_cli.run("fl", "--config", str(config)), "list.yaml")


def test_dataset_not_on_disk_names_where_it_looked(rayfed_cli, tmp_path):
    out = tmp_path / "r"
    result = rayfed_cli.run(
        "fl",
        "--set",
        "data.dataset=cifar10",
        "--set",
        f"data.root={tmp_path / 'nodata'}",
        "--set",
        "data.download=false",
        "--out",
        str(out),
    )
    assert_user_error(result, "cifar10", str(tmp_path / "nodata"))
    assert not out.exists()


def test_existing_output_is_not_overwritten(rayfed_cli, tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    assert_user_error(rayfed_cli.run("fl", "--out", str(tmp_path)), str(tmp_path))
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_unknown_subcommand_and_option():
    assert_user_error(python_m_rayfed("train"), "train")
    assert_user_error(python_m_rayfed("fl", "--bogus"), "--bogus")
