"""SISA on Ray: shard actors survive being killed, the `rayfed sisa` driver end to end, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from rayfed.config import ResourcesConfig, build_config
from rayfed.data.datasets import load_dataset
from rayfed.results import RunDirectory
from rayfed.sisa.plan import make_layout
from rayfed.sisa.train import TrainSettings


def test_a_shard_killed_mid_training_restarts_from_its_checkpoint_with_the_same_result(ray_session, tmp_path):
    from rayfed.engine.shard import ShardPool

    data = load_dataset("digits")
    x, y = data.train_x[:240], data.train_y[:240]
    layout = make_layout(len(y), shards=2, slices=3, seed=0)
    settings = TrainSettings(model="cnn", input_shape=data.shape, num_classes=10, epochs=(1, 1, 8), lr=0.05,
                             momentum=0.9, batch_size=32, seed=3)
    resources = ResourcesConfig(torch_threads=1)

    pool = ShardPool(layout, x, y, settings, tmp_path / "killed", resources)
    refs = [actor.run.remote([]) for actor in pool.actors]
    checkpoint = tmp_path / "killed" / "shard0" / "slice2.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert checkpoint.exists()
    ray_session.kill(pool.actors[0], no_restart=False)  # dies during the long last stage
    stats = ray_session.get(refs)
    killed = pool.states()
    pool.close()
    assert stats[0].first_stage == 2  # the retried call resumed after checkpoint 2, not from scratch

    clean = ShardPool(layout, x, y, settings, tmp_path / "clean", resources)
    clean.run(range(2), [], "clean")
    reference = clean.states()
    clean.close()
    for a, b in zip(killed, reference):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_sisa_end_to_end_is_exact_and_writes_every_table(ray_session, tmp_path):
    from rayfed.engine.sisa_run import run_sisa

    config = build_config([{
        "sisa": {"shards": 2, "slices": 2, "epochs": 2},
        "unlearn": {"forget": 8, "membership_size": 40},
        "backdoor": {"poison": 60},
        "resources": {"torch_threads": 1},
    }])
    run_sisa(config, RunDirectory(tmp_path))
    files = {p.name for p in tmp_path.iterdir()}
    for name in ("config.yaml", "layout.parquet", "forget.txt", "metrics.parquet", "unlearning.parquet",
                 "exactness.parquet", "membership.parquet", "backdoor.parquet", "accuracy.png",
                 "unlearning_cost.png", "membership.png", "backdoor.png"):
        assert name in files, name
    forget = [int(t) for t in (tmp_path / "forget.txt").read_text().split()]
    assert len(forget) == 8
    exact = pd.read_parquet(tmp_path / "exactness.parquet")
    assert exact["predictions_equal"].all() and exact["weights_equal"].all()
    assert (exact["max_probability_difference"] == 0).all()
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    assert set(metrics["stage"]) == {"trained", "unlearned", "retrained"}
    assert set(metrics["aggregation"]) == {"mean", "vote"}
    unlearning = pd.read_parquet(tmp_path / "unlearning.parquet")
    assert sorted(unlearning["index"]) == sorted(forget)
    layout = pd.read_parquet(tmp_path / "layout.parquet").set_index("index")
    assert (unlearning["shard"].to_numpy() == layout.loc[unlearning["index"], "shard"].to_numpy()).all()
    first = layout.loc[forget].groupby("shard")["slice"].min()
    assert (unlearning.groupby("shard")["first_slice"].first() == first).all()
    membership = pd.read_parquet(tmp_path / "membership.parquet")
    assert len(membership) == 6 and list(membership.columns[:5]) == ["stage", "comparison", "lr_cv_accuracy", "auc",
                                                                     "tpr_at_1pct_fpr"]
    backdoor = pd.read_parquet(tmp_path / "backdoor.parquet")
    assert set(backdoor["stage"]) == {"trained", "unlearned"}


@pytest.mark.parametrize("overrides, key", [
    (["sisa.shards=2000"], "sisa.shards"),
    (["sisa.slices=700"], "sisa.slices"),
    (["backdoor.target_class=10"], "backdoor.target_class"),
    (["unlearn.forget=FILE:5 5"], "unlearn.forget"),
    (["unlearn.forget=FILE:1 99999"], "unlearn.forget"),
    (["unlearn.forget=FILE:1 two"], "unlearn.forget"),
    (["unlearn.forget=/nonexistent/forget.txt"], "unlearn.forget"),
])
def test_cli_bad_input_exits_2_with_one_error_line_and_no_run_dir(tmp_path, overrides, key):
    sets = []
    for text in overrides:
        if "FILE:" in text:
            name, content = text.split("=FILE:")
            (tmp_path / "forget.txt").write_text(content.replace(" ", "\n"))
            text = f"{name}={tmp_path / 'forget.txt'}"
        sets += ["--set", text]
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "rayfed", "sisa", *sets, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0], proc.stderr
    assert not out.exists()
