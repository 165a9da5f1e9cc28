"""Bad input through the `rayfed` command: exit 2, one `error:` line naming the problem, nothing left.

The entry point itself (`python -m rayfed`: argparse's errors, a missing config file) runs as a subprocess; the
other command lines run in processes forked from one that imported rayfed once (the `rayfed_cli` fixture)."""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

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
    (["--set", "data.batch_size=1"], "data.batch_size: must be >= 2 (BatchNorm), got 1"),
    (["--set", "audit.gan_batch_size=1"], "audit.gan_batch_size: must be >= 2 (BatchNorm), got 1"),
    (["--set", "metrics.held_out_audit=sometimes"], "metrics.held_out_audit"),
    (["--set", "data.client_test_size=most"], "data.client_test_size"),
    (["--set", "data.validation_fraction=1"], "data.validation_fraction: must be in [0, 1), got 1"),
    (["--set", "data.validation_fraction=0.9"], "data.validation_fraction: with data.audit_fraction 0.1"),
    (["--set", "data.validation_fraction=0.005"], "data.validation_fraction=0.005: 7 validation images"),
    (["--set", "qffl.lipschitz=fast"], "qffl.lipschitz"),
    (["--set", "qffl.lipschitz=0"], "qffl.lipschitz"),
    (["--set", "audit.gamma=[2,2.0]"], "audit.gamma: 2.0 and 2.0 both name the run 'gamma=2'"),
    (["--set", "audit.gamma=[1,1.0000001]"], "audit.gamma: 1.0 and 1.0000001 both name the run 'gamma=1'"),
    (["--set", "qffl.q=[1,1]"], "qffl.q: 1.0 and 1.0 both name the run 'q=1'"),
    (["--set", "term.tilt=-1"], "term.tilt: must be a finite number >= 0, got -1.0"),
    (["--set", "term.tilt=.nan"], "term.tilt: must be a finite number >= 0, got nan"),
    (["--set", "term.tilt=[]"], "term.tilt: needs at least one value"),
    (["--set", "term.tilt=[2,2.0]"], "term.tilt: 2.0 and 2.0 both name the run 'tilt=2'"),
    (["--set", "afl.lambda_lr=-0.1"], "afl.lambda_lr: must be a finite number >= 0, got -0.1"),
    (["--set", "afl.lambda_lr=.inf"], "afl.lambda_lr: must be a finite number >= 0, got inf"),
    (["--set", "afl.lambda_lr=[]"], "afl.lambda_lr: needs at least one value"),
    (["--set", "afl.lambda_lr=[0.1,0.10]"], "afl.lambda_lr: 0.1 and 0.1 both name the run 'lambda_lr=0.1'"),
    (["--set", "seed=4294967296"], "seed: must be between 0 and 4294967295"),
    (["--set", "data.partition_seed=4294967296"], "data.partition_seed: must be between 0 and 4294967295"),
    (["--set", "data.partition_seed=every"], "data.partition_seed: unknown value 'every' (choose from each)"),
    (["--set", "data.partition_seed=1.5"], "data.partition_seed"),
    (["--set", "seeds=[1, 4294967296]"], "seeds: must be between 0 and 4294967295"),
    (
        ["--set", "seed=4294967295", "--set", "seeds=2"],
        "seeds: must be between 0 and 4294967295 (2**32 - 1), got 4294967296",
    ),
    (["--set", "fl.lr=.inf"], "fl.lr: must be a finite number > 0, got inf"),
    (["--set", "audit.delta_scale=.inf"], "audit.delta_scale: must be a finite number > 0, got inf"),
    (["--set", "resources.stall_timeout=.inf"], "resources.stall_timeout"),
    (["--set", "resources.gpus_per_client=.inf"], "resources.gpus_per_client: must be a finite number >= 0"),
    (["--set", "unlearn.baselines=[scrub,scrub]"], "unlearn.baselines: repeated method"),
    (["--set", "unlearn.scrub_max_epochs=4"], "unlearn.scrub_max_epochs: must be in [0, unlearn.scrub_epochs = 3]"),
    (["--set", "unlearn.scrub_temperature=0"], "unlearn.scrub_temperature: must be a finite number > 0, got 0"),
    (["--set", "unlearn.scrub_alpha=.nan"], "unlearn.scrub_alpha: must be a finite number >= 0, got nan"),
    (["--set", "unlearn.scrub_alpha=0", "--set", "unlearn.scrub_gamma=0"], "one must be > 0 (a min-step)"),
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


def test_config_that_is_a_directory_or_not_utf8(rayfed_cli, tmp_path):
    assert_user_error(rayfed_cli.run("fl", "--config", str(tmp_path)), str(tmp_path), "is a directory")
    config = tmp_path / "bin.yaml"
    config.write_bytes(b"fl:\n  rounds: \xff\n")
    assert_user_error(rayfed_cli.run("fl", "--config", str(config), "--out", str(tmp_path / "r")), "bin.yaml", "UTF-8")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("out", ["afile/sub", "/proc/rayfed-test"])
def test_out_that_cannot_be_created(rayfed_cli, tmp_path, out):
    (tmp_path / "afile").write_text("")
    result = rayfed_cli.run("fl", "--out", out, cwd=tmp_path)
    assert_user_error(result, "cannot create the run directory", out)


def test_malformed_yaml(rayfed_cli, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("fl:\n  rounds: [1,\n")
    assert_user_error(rayfed_cli.run("fl", "--config", str(config), "--out", str(tmp_path / "r")), "bad.yaml", "YAML")
    assert not (tmp_path / "r").exists()


def test_yaml_that_is_not_a_mapping(rayfed_cli, tmp_path):
    config = tmp_path / "list.yaml"
    config.write_text("- 1\n- 2\n")
    assert_user_error(rayfed_cli.run("fl", "--config", str(config)), "list.yaml")


def _cifar_not_on_disk(tmp_path):
    """--set arguments that ask for CIFAR-10 where it is not, without downloading: bad input found only after
    the run directory and its config.yaml exist."""
    sets = ["data.dataset=cifar10", f"data.root={tmp_path / 'nodata'}", "data.download=false"]
    return [a for s in sets for a in ("--set", s)]


def test_dataset_not_on_disk_names_where_it_looked(rayfed_cli, tmp_path):
    out = tmp_path / "r"
    result = rayfed_cli.run("fl", *_cifar_not_on_disk(tmp_path), "--out", str(out))
    assert_user_error(result, "cifar10", str(tmp_path / "nodata"))
    assert not out.exists()


def test_a_failed_start_leaves_an_existing_empty_out_empty(rayfed_cli, tmp_path):
    """Bad input found after config.yaml is written (the dataset is not on disk): the --out the user made stays, empty,
    so the corrected command can use it."""
    out = tmp_path / "e"
    out.mkdir()
    args = _cifar_not_on_disk(tmp_path)
    for _ in range(2):  # the second is not refused as 'already exists and is not empty'
        assert_user_error(rayfed_cli.run("fl", *args, "--out", str(out)), "cifar10")
        assert out.is_dir() and not any(out.iterdir())


def test_run_files_get_the_mode_open_gives(tmp_path):
    """Outputs readable by teammates on a shared filesystem: 0o666 less the umask, as open() makes them."""
    from rayfed.results import run_directory

    umask = os.umask(0o027)
    try:
        with run_directory(tmp_path / "r", "fl") as run_dir:
            run_dir.write_text("a.txt", "a")
            run_dir.write_table("t.parquet", [{"x": 1}])
            run_dir.save_state("m.pt", {})
    finally:
        os.umask(umask)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in run_dir.path.iterdir()} == dict.fromkeys(
        ("a.txt", "t.parquet", "m.pt"), 0o640
    )


def test_docs_put_options_after_the_subcommand():
    """`rayfed --address ...` exits 2: every option but --help follows the subcommand."""
    root = Path(__file__).resolve().parents[1]
    for doc in (root / "README.md", root / "cluster" / "README.md"):
        options = re.findall(r"\brayfed\s+(-[-\w]*)", doc.read_text())
        assert set(options) <= {"-h", "--help"}, (doc, options)


def test_readme_lists_every_config_section():
    """The README's config paragraph names every top-level key of `Config` (it once fell behind a new method's)."""
    from dataclasses import fields

    from rayfed.config import Config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = re.search(r"Sections: (.*?)\. ", readme, re.S).group(1)
    assert re.findall(r"`(\w+)(?:\.\*)?`", listed) == [f.name for f in fields(Config)]


def test_existing_output_is_not_overwritten(rayfed_cli, tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    assert_user_error(rayfed_cli.run("fl", "--out", str(tmp_path)), str(tmp_path))
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_unknown_subcommand_and_option():
    assert_user_error(python_m_rayfed("train"), "train")
    assert_user_error(python_m_rayfed("fl", "--bogus"), "--bogus")


def test_an_address_where_no_cluster_answers_is_an_error_not_a_hang(rayfed_cli, tmp_path):
    """ray.init retries an address where nothing listens for minutes without a word; port 1 refuses at once.
    (iid: the default partition's warning that two classes are in no client's data would be a second line.)"""
    out = tmp_path / "run"
    args = ["--set", "data.partition=iid", "--address", "127.0.0.1:1", "--out", str(out)]
    assert_user_error(rayfed_cli.run("fl", *args), "127.0.0.1:1", "answers")
    assert not out.exists()


def test_a_resumed_run_may_change_where_it_runs_and_what_it_logs_but_no_figure():
    """A resumed run may change resources.address (a local run continued on a cluster), resources.stall_timeout
    (a run stopped under too short a one) and tracking.*; any other key is named with what may change, and
    fl.rounds only where the caller allows it."""
    from rayfed.config import build_config, check_resume
    from rayfed.errors import UserError

    saved = build_config([{}])
    moved = {"resources": {"address": "auto", "stall_timeout": 7200.0}, "tracking": {"wandb": "offline"}}
    check_resume(build_config([moved]), saved)
    with pytest.raises(UserError, match=r"audit.lambda1 differs .* may change only resources.address, "):
        check_resume(build_config([moved, {"audit": {"lambda1": 3.0}}]), saved)
    longer = build_config([moved, {"fl": {"rounds": 40}}])
    with pytest.raises(UserError, match="fl.rounds differs"):
        check_resume(longer, saved)
    check_resume(longer, saved, ("fl.rounds",))
    with pytest.raises(UserError, match=r"resources.torch_threads differs .*stall_timeout, tracking\.\*\)"):
        check_resume(build_config([{"resources": {"torch_threads": 4}}]), saved)  # thread counts move float sums


@pytest.mark.parametrize("command", ["fl", "sisa"])
def test_out_with_resume_is_refused_not_ignored(rayfed_cli, tmp_path, command):
    out = tmp_path / "elsewhere"
    assert_user_error(rayfed_cli.run(command, "--resume", str(tmp_path), "--out", str(out)), "--out", str(out))
    assert not out.exists()
