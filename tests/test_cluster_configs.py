"""cluster/*.yaml pass Ray's own cluster-launcher validation (offline); launch.py hands over to the CLI."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}


def load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.mark.parametrize("name", ["cluster.yaml", "local.yaml"])
def test_ray_validates_the_cluster_file(name):
    validate_config(prepare_config(load(name)))


def test_the_validator_would_catch_a_broken_file():
    broken = copy.deepcopy(load("cluster.yaml"))
    broken["available_node_types"]["gpu_worker"]["resourcez"] = {"GPU": 1}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_aws_cluster_has_a_cpu_head_and_autoscaling_gpu_workers():
    config = load("cluster.yaml")
    nodes = config["available_node_types"]
    assert config["provider"]["type"] == "aws"
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    workers = [n for name, n in nodes.items() if name != config["head_node_type"]]
    assert all(n["resources"].get("GPU", 0) >= 1 and n["min_workers"] < n["max_workers"] for n in workers)
    assert any("pip install -e ~/rayfed" in c for c in config["setup_commands"])
    assert any("ray[default,tune]==" in c for c in config["setup_commands"]), "dependencies are pinned"
    assert "/home/ubuntu/rayfed" in config["file_mounts"]


def test_launch_runs_rayfed_commands_from_the_project_folder(tmp_path):
    """launch.py is what `ray submit` runs: a bad sweep file gives the CLI's own error and exit status."""
    result = subprocess.run(
        [sys.executable, str(CLUSTER / "launch.py"), "sweep", "tune_configs/nope.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**ENV, "RAYFED_PROJECT": str(ROOT)},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: sweep file tune_configs/nope.yaml does not exist"
    missing = subprocess.run(
        [sys.executable, str(CLUSTER / "launch.py"), "fl"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, "RAYFED_PROJECT": str(tmp_path / "absent")},
    )
    assert missing.returncode == 2 and "RAYFED_PROJECT" in missing.stderr
