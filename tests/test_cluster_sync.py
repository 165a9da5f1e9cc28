"""The file mounts of cluster/*.yaml ship the whole package: real rsync with each file's rsync_exclude and
rsync_filter, as Ray's updater passes them (`rsync -avz` + SSHCommandRunner's filter arguments, `SRC/ DST/`),
from a copy of this checkout (plus the data, runs, venv and git folders a user's checkout has) into a temp dir."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.command_runner import SSHCommandRunner

ROOT = Path(__file__).resolve().parents[1]
NOT_COPIED = {".git", ".venv", ".venv-ci", "runs", "data", "wandb", ".pytest_cache", "build", "dist"}
"""Top-level folders left out of the checkout copy (the test plants small ones of its own)."""
PLANTED = [
    "data/digits/train.npz",
    "runs/fl-1/rounds.parquet",
    ".venv/bin/python",
    ".git/HEAD",
    "rayfed/__pycache__/cli.cpython-311.pyc",
]

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")


def sync(options: dict, source: Path, target: Path) -> None:
    """What Ray's updater runs for a folder mount, without the ssh part."""
    command = ["rsync", "-avz", *SSHCommandRunner._create_rsync_filter_args(None, options), f"{source}/", f"{target}/"]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """This checkout's files (top-level junk folders aside) plus the folders a user's checkout holds."""
    copy = tmp_path_factory.mktemp("checkout") / "rayfed"
    shutil.copytree(
        ROOT,
        copy,
        ignore=lambda folder, names: (
            NOT_COPIED & set(names)
            if Path(folder) == ROOT
            else {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        ),
    )
    for name in PLANTED:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(b"x")
    return copy


def relative_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", ["cluster.yaml", "local.yaml"])
def test_the_mount_ships_every_module_and_no_data(name, checkout, tmp_path):
    config = yaml.safe_load((ROOT / "cluster" / name).read_text())
    assert list(config["file_mounts"].values()) == ["."]
    sync({"rsync_exclude": config["rsync_exclude"], "rsync_filter": config["rsync_filter"]}, checkout, tmp_path)
    arrived = relative_files(tmp_path)
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "rayfed").rglob("*.py")}
    assert {"rayfed/data/__init__.py", "rayfed/data/datasets.py", "rayfed/cli.py"} <= modules
    assert modules <= arrived, sorted(modules - arrived)
    sweeps = {str(p.relative_to(ROOT)) for p in (ROOT / "tune_configs").glob("*.yaml")}
    assert sweeps and sweeps <= arrived
    assert {"pyproject.toml", "cluster/launch.py"} <= arrived
    assert not {"data", "runs", ".venv", ".git"} & {Path(f).parts[0] for f in arrived}
    assert not [f for f in arrived if "__pycache__" in f]


def test_unanchored_excludes_would_drop_rayfed_data(checkout, tmp_path):
    """The excludes the cluster files had: `data` matches rayfed/data/ too, so the package arrived broken."""
    sync(
        {"rsync_exclude": [".git", ".venv", "runs", "data", "**/__pycache__"], "rsync_filter": [".gitignore"]},
        checkout,
        tmp_path,
    )
    assert (tmp_path / "rayfed" / "cli.py").is_file() and not (tmp_path / "rayfed" / "data").exists()
