"""The two small runs whose tables are kept in tests/golden/ (see make_golden.py there)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

from rayfed.config import load_config  # noqa: E402
from rayfed.results import RunDirectory  # noqa: E402

GOLDEN_SETTINGS = {
    "fl": [
        "seed=3",
        "data.num_clients=3",
        "fl.rounds=2",
        "fl.local_epochs=1",
        "fl.methods=[fedavg,fedauditgan]",
        "audit.gamma=[2.0]",
        "audit.gan_epochs=1",
        "audit.n_probes=64",
        "audit.gan_batch_size=128",
        "data.client_test_size=20",
        "resources.server_threads=1",
        "resources.clients_per_actor=3",
        "metrics.client_accuracy=train",
        "metrics.audit_epochs=1",
    ],
    "sisa": [
        "seed=3",
        "sisa.shards=2",
        "sisa.slices=2",
        "sisa.epochs=2",
        "unlearn.forget=6",
        "unlearn.membership_size=20",
        "backdoor.poison=20",
        "resources.torch_threads=1",
    ],
}
"""Explicit settings, so that a later change of a default does not move these runs."""

GOLDEN_TABLES = {
    "fl": ["rounds.parquet", "clients.parquet"],
    "sisa": ["layout.parquet", "metrics.parquet", "membership.parquet", "backdoor.parquet"],
}
"""The tables compared (wall-time columns dropped)."""


def run_golden(command: str, tmp: Path) -> Path:
    """Run the golden `command` (fl or sisa) into tmp/command and return its run directory."""
    config = load_config(None, GOLDEN_SETTINGS[command])
    run_dir = RunDirectory(tmp / command)
    run_dir.path.mkdir(parents=True)
    if command == "fl":
        from rayfed.engine.fl_run import run_fl

        run_fl(config, run_dir)
    else:
        from rayfed.engine.sisa_run import run_sisa

        run_sisa(config, run_dir)
    return run_dir.path
