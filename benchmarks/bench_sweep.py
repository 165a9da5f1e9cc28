"""Sweep throughput: tune_configs/fedaudit_gamma_smoke.yaml with max_concurrent_trials 1 vs 2, one local Ray
(started once, not timed) holding every CPU of this machine. Prints, per setting, the sweep's wall time and
the fraction of trial time spent waiting for resources (trial start minus sweep start, over trial start
minus sweep start plus the trial's own run time, summed over trials); `speedup: X.Xx` (1 vs 2) last.

    python benchmarks/bench_sweep.py [--concurrency 1 2] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray

from rayfed.tune.sweep import run_sweep_file

SMOKE = Path(__file__).resolve().parents[1] / "tune_configs" / "fedaudit_gamma_smoke.yaml"


def wait_fraction(table: pd.DataFrame, sweep_start: float) -> float:
    """Share of the trials' time (from the sweep's start to each trial's end) spent before they started."""
    waited = (table["started_at"] - sweep_start).clip(lower=0)
    ran = table["reported_at"] - table["started_at"]
    return float(waited.sum() / (waited + ran).sum())


def timed_sweep(concurrency: int, overrides: list[str], out: Path) -> tuple[float, float, int]:
    """(wall seconds, wait fraction, trials) of one smoke sweep at the given max_concurrent_trials."""
    start = time.time()
    table = run_sweep_file(str(SMOKE), [*overrides, f"tune_config.max_concurrent_trials={concurrency}"], str(out))
    wall = time.time() - start
    return wall, wait_fraction(table, start), len(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs=2, default=[1, 2], metavar=("BASE", "CONCURRENT"))
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the sweep file (as rayfed sweep --set)",
    )
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False)
    print(f"machine: {cpus} CPUs, load average {os.getloadavg()[0]:.1f}; sweep: {SMOKE.name} {args.overrides}")
    walls = {}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as folder:
        for concurrency in args.concurrency:
            wall, waiting, trials = timed_sweep(concurrency, args.overrides, Path(folder) / f"c{concurrency}")
            walls[concurrency] = wall
            print(
                f"max_concurrent_trials={concurrency}: {trials} trials, wall {wall:.1f}s, "
                f"waiting for resources {waiting:.0%} of trial time"
            )
    ray.shutdown()
    base, concurrent = args.concurrency
    print(f"speedup: {walls[base] / walls[concurrent]:.1f}x")


if __name__ == "__main__":
    main()
