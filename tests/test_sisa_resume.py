"""A killed `rayfed sisa` resumes in its own directory and ends with the same ensembles, metrics and audits."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from rayfed.config import load_config
from rayfed.engine.sisa_run import resume_sisa, run_sisa
from rayfed.results import RunDirectory

pytestmark = pytest.mark.slow

SETS = [
    "sisa.shards=2",
    "sisa.slices=3",
    "sisa.epochs=2",
    "sisa.schedule=union",
    "unlearn.forget=6",
    "unlearn.membership_size=20",
    "backdoor.poison=30",
    "seed=4",
]
ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
RESULTS = ("metrics.parquet", "exactness.parquet", "membership.parquet", "backdoor.parquet", "layout.parquet")


def test_killed_sisa_run_resumes_to_the_same_results(tmp_path, ray_session, kill_session_when):
    victim = tmp_path / "victim"
    args = [arg for s in SETS for arg in ("--set", s)]
    process = subprocess.Popen(
        [sys.executable, "-m", "rayfed", "sisa", *args, "--out", str(victim)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    first_checkpoint = victim / "checkpoints" / "main" / "shard0" / "slice1.pt"
    killer = kill_session_when(process, first_checkpoint.exists)
    reference = RunDirectory(tmp_path / "reference")  # uninterrupted, in process, while the victim runs
    reference.path.mkdir()
    run_sisa(load_config(None, SETS), reference)
    killer.join()
    assert not (victim / "metrics.parquet").exists()  # killed mid-training

    resume_sisa(str(victim), None, [])  # in process, on the session's Ray
    for name in RESULTS:
        pd.testing.assert_frame_equal(pd.read_parquet(victim / name), pd.read_parquet(reference.file(name)))
    assert pd.read_parquet(victim / "exactness.parquet")["weights_equal"].all()


@pytest.mark.parametrize("config", ["seed: 1\n", "seeds: 3\n"])
def test_resume_of_something_else_exits_2_and_changes_nothing(rayfed_cli, tmp_path, config):
    (tmp_path / "config.yaml").write_text(config)  # an fl run (over seeds too) has no layout.parquet
    result = rayfed_cli.run("sisa", "--resume", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "not a `rayfed sisa` run" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
