"""A run killed between rounds resumes from its last round with the same final numbers; bad resumes exit 2."""

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from rayfed.config import load_config
from rayfed.engine.fl_run import resume_fl, run_fl
from rayfed.results import RunDirectory

pytestmark = pytest.mark.slow

SETS = [
    "fl.methods=[fedavg,fedauditgan,afl]",  # AFL: its lambda, carried from round to round, must be checkpointed
    "afl.lambda_lr=[0.05]",
    "data.num_clients=3",
    "fl.rounds=3",
    "fl.local_epochs=1",
    "audit.gamma=[2.0]",
    "audit.gan_epochs=2",
    "audit.n_probes=64",
    "audit.warm_start=true",
    "data.client_test_size=20",
    "seed=9",
    "metrics.audit_epochs=1",
]
ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}


def rayfed(*args):
    """`python -m rayfed *args` in its own session (so that it and its Ray can be killed together)."""
    return subprocess.Popen(
        [sys.executable, "-m", "rayfed", *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _sets():
    return [arg for s in SETS for arg in ("--set", s)]


def _checkpointed_round(path):
    try:
        return torch.load(path / "checkpoint.pt", weights_only=True)["next_round"] - 1
    except Exception:  # not written yet
        return 0


@pytest.fixture(scope="module")
def resumed_and_reference(tmp_path_factory, ray_session, kill_session_when, rayfed_cli):
    """A run killed (driver and its Ray, SIGKILL) after its first or second round's checkpoint and resumed through
    the CLI, beside the same run uninterrupted (in process, after the kill: two Rays training at once on two
    cores take longer than one after the other)."""
    tmp = tmp_path_factory.mktemp("resume")
    victim = tmp / "victim"
    kill_session_when(rayfed("fl", *_sets(), "--out", str(victim)), lambda: _checkpointed_round(victim) >= 1).join()
    assert _checkpointed_round(victim) < 3
    reference = RunDirectory(tmp / "reference")
    reference.path.mkdir()
    run_fl(load_config(None, SETS), reference)
    resumed = rayfed_cli.run("fl", "--resume", str(victim), timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return victim, reference.path


def test_resumed_run_equals_uninterrupted_run(resumed_and_reference, assert_same_run):
    assert_same_run(*resumed_and_reference)


def test_resume_can_extend_fl_rounds(resumed_and_reference, tmp_path):
    victim, _ = resumed_and_reference
    longer = tmp_path / "longer"
    shutil.copytree(victim, longer)
    resume_fl(str(longer), None, ["fl.rounds=4"])  # in process: the fixture resumed through the CLI
    rounds = pd.read_parquet(longer / "rounds.parquet")
    assert sorted(set(rounds["round"])) == [1, 2, 3, 4] and len(rounds) == 3 * 4  # 3 method runs x 4 rounds
    assert pd.read_parquet(longer / "audit.parquet")["round"].tolist() == [4, 4, 4]  # the extended models audited


def test_a_run_killed_after_its_last_round_resumes_with_the_held_out_audit(
    resumed_and_reference, tmp_path, assert_same_run
):
    """Killed after the last round's checkpoint, before the held-out audit and the outputs: --resume trains no
    round, audits the checkpointed final models and writes what the uninterrupted run wrote."""
    _, reference = resumed_and_reference
    late = tmp_path / "late"
    shutil.copytree(reference, late)
    for name in ["audit.parquet", "summary.md", "fairness.png", *(p.name for p in late.glob("model_*.pt"))]:
        (late / name).unlink()
    resume_fl(str(late), None, [])
    assert_same_run(reference, late)


def test_a_run_killed_in_its_first_round_resumes_from_round_1(resumed_and_reference, tmp_path, assert_same_run):
    """Killed before its first checkpoint, a run directory holds only config.yaml (and maybe half a round's
    wandb files): --resume starts it again from round 1 and ends with the uninterrupted run's numbers."""
    victim, reference = resumed_and_reference
    early = tmp_path / "early"
    early.mkdir()
    shutil.copy(victim / "config.yaml", early / "config.yaml")
    resume_fl(str(early), None, [])
    assert_same_run(early, reference)


def _snapshot(path):
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.read_bytes()) for p in path.rglob("*") if p.is_file()}


def _assert_user_error(result, needle):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.stderr


@pytest.mark.parametrize(
    "damage,needle",
    [
        ("config_change", "audit.lambda1"),
        ("corrupt_checkpoint", "checkpoint.pt"),
        ("truncated_table", "rounds.parquet"),
        ("not_a_run", "not a `rayfed fl` run"),
        ("sisa_run", "not a `rayfed fl` run"),
        ("sisa_seeds_run", "not a `rayfed fl` run"),
        ("fewer_rounds", "fl.rounds=1"),
    ],
)
def test_bad_resume_exits_2_and_leaves_the_directory_as_it_was(
    rayfed_cli, resumed_and_reference, tmp_path, damage, needle
):
    victim, _ = resumed_and_reference
    target = tmp_path / "run"
    shutil.copytree(victim, target)
    extra = []
    if damage == "config_change":
        extra = ["--set", "audit.lambda1=3.0"]
    elif damage == "corrupt_checkpoint":
        (target / "checkpoint.pt").write_bytes(b"not a checkpoint")
    elif damage == "truncated_table":
        data = (target / "rounds.parquet").read_bytes()
        (target / "rounds.parquet").write_bytes(data[: len(data) // 2])
    elif damage == "not_a_run":
        target = tmp_path / "empty"
        target.mkdir()
    elif damage == "sisa_run":  # a sisa run directory: a config.yaml, its layout, no fl checkpoint
        (target / "checkpoint.pt").unlink()
        (target / "layout.parquet").write_bytes((target / "rounds.parquet").read_bytes())
    elif damage == "sisa_seeds_run":  # a sisa run over seeds: config.yaml on top, each seed's layout in seed<k>/
        target = tmp_path / "seeds"
        (target / "seed3").mkdir(parents=True)
        shutil.copy(victim / "config.yaml", target / "config.yaml")
        (target / "seed3" / "layout.parquet").write_bytes((victim / "rounds.parquet").read_bytes())
    elif damage == "fewer_rounds":
        extra = ["--set", "fl.rounds=1"]
    before = _snapshot(target)
    _assert_user_error(rayfed_cli.run("fl", "--resume", str(target), *extra), needle)
    assert _snapshot(target) == before
