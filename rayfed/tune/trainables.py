"""Tune trainables: the same run functions as the CLI (run_fl, run_sisa) with a thin reporting wrapper.

Every trial builds its config from the sweep's base config + its sampled params + the explicit resource
fractions of its placement group (rayfed.tune.resources), writes a normal run directory under the sweep's
`trials/<trial_id>/`, and reports to Tune:

- fl: once per round, the figures of the round's last method run (with `fl.methods: [fedavg, fedauditgan]`,
  Fed-AuditGAN at the trial's gamma), every method run's accuracy/jfi/gap/bias under `<method label>/...`
  (at the last round also the held-out audit's `flip_rate` and `held_out_bias`, NaN before; with a validation
  split the `val_*` figures too, the audit's included, with their intervals over seeds),
  and a checkpoint (the files `rayfed fl --resume` needs, on disk when run_fl calls `on_round`), so ASHA can
  stop a trial between rounds and Tuner.restore continues a trial from its last round.
- sisa: once, at the end, its final figures read from the run's tables (over several seeds: their means, with
  `<figure>_ci` and `seeds`).

wandb inside trials is off (`tracking.wandb: disabled`): Ray's WandbLoggerCallback logs the trials instead.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from rayfed.config import Config, build_config, nest
from rayfed.engine.fl_run import CHECKPOINT, Progress, execute, load_progress, run_fl
from rayfed.engine.sisa_run import run_sisa
from rayfed.fl.rows import AUDIT_FIGURES, ROUND_METRICS, VALIDATION_FIGURES
from rayfed.fl.strategies import Strategy, strategy_for
from rayfed.results import RunDirectory
from rayfed.sisa.findings import main_aggregation
from rayfed.sisa.seeds import figures_over_seeds, run_figures, seed_rows
from rayfed.stats import mean_interval
from rayfed.tune.resources import TrialBudget, TrialPlan, plan_trial

FL_RESUME_FILES = ("config.yaml", "rounds.parquet", "clients.parquet", CHECKPOINT)
"""What an fl trial's Tune checkpoint holds: enough for the run to continue after its last round."""
PER_METHOD_METRICS = ("accuracy", "jfi", "gap", "min_accuracy", "bias", *AUDIT_FIGURES, *VALIDATION_FIGURES)
"""The figures a trial reports of each method run besides its last (the references: `fedavg/jfi`, ...)."""


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares."""

    run: str
    """fl or sisa."""
    base: dict[str, Any]
    """The base config mapping (absolute paths)."""
    budget: TrialBudget
    trials_dir: str
    """Absolute folder holding one run directory per trial."""


def trial_config(setup: TrialSetup, params: dict[str, Any]) -> tuple[Config, TrialPlan]:
    """The trial's config (base < params < explicit resource fractions; wandb off) and its resource plan."""
    mappings = [setup.base, *(nest(key, value) for key, value in params.items()), {"tracking": {"wandb": "disabled"}}]
    plan = plan_trial(setup.run, build_config(mappings), setup.budget)
    return build_config([*mappings, {"resources": plan.overrides}]), plan


class TrialResources:
    """`tune.with_resources` callable: a trial's placement group, computed from its own config."""

    def __init__(self, setup: TrialSetup):
        self.setup = setup

    def __call__(self, params: dict[str, Any]) -> tune.PlacementGroupFactory:
        return trial_config(self.setup, params)[1].placement_group()


def stamped(metrics: dict[str, Any], started_at: float) -> dict[str, Any]:
    """metrics + when the trial started and when it reported (wall clock; how long trials waited)."""
    return {**metrics, "started_at": started_at, "reported_at": time.time()}


def _trial_run_dir(setup: TrialSetup) -> RunDirectory:
    path = Path(setup.trials_dir) / tune.get_context().get_trial_id()
    path.mkdir(parents=True, exist_ok=True)
    return RunDirectory(path)


def audit_figures(config: Config) -> tuple[str, ...]:
    """The held-out audit figures (AUDIT_FIGURES) an fl run of `config` measures after its last round: none
    without `metrics.held_out_audit`, the `val_` twins only with a validation split."""
    if not config.metrics.held_out_audit:
        return ()
    return tuple(k for k in AUDIT_FIGURES if config.data.validation_fraction > 0 or not k.startswith("val_"))


class RoundReporter:
    """`on_round` callback of run_fl: reports each finished round to Tune with its checkpoint."""

    def __init__(
        self, run_dir: RunDirectory, started_at: float, audit_figures: tuple[str, ...] = (), federations: int = 1
    ):
        self.run_dir, self.started_at = run_dir, started_at
        self.federations = federations
        """How many federations the seeds trained on (one per seed under data.partition_seed: each)."""
        self.audit_figures = audit_figures
        """Reported as NaN until the last round measures them, so a sweep may choose on one (Tune checks that
        every report carries the metric)."""

    def metrics(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The last method run's figures (mean over its seeds), plus the other method runs' (the references,
        e.g. `fedavg/jfi`) under their file label, `seeds` (how many each mean covers) and `federations` (on how
        many federations)."""
        by_run: dict[Strategy, list[dict[str, Any]]] = {}
        for row in rows:
            by_run.setdefault(strategy_for(row["method"], row), []).append(row)
        runs = list(by_run)

        def means(run_rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
            return {
                k: float(np.mean([r[k] for r in run_rows])) for k in keys if all(r.get(k) is not None for r in run_rows)
            }

        last = by_run[runs[-1]]
        averaged = means(last, (*ROUND_METRICS, *AUDIT_FIGURES))
        metrics: dict[str, Any] = {
            **dict.fromkeys(self.audit_figures, float("nan")),
            **averaged,
            "round": last[0]["round"],
            "seeds": len(last),
            "federations": self.federations,
            "fairness_basis": last[0]["fairness_basis"],
        }
        if len(last) > 1:  # the 95% Student-t half-widths over seeds of every mean, as in summary.md
            metrics.update({f"{k}_ci": mean_interval([r[k] for r in last])[1] for k in averaged if k != "round"})
        for run in runs[:-1]:
            metrics.update({f"{run.file_label}/{k}": v for k, v in means(by_run[run], PER_METHOD_METRICS).items()})
        return stamped(metrics, self.started_at)

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        """Report the round with a checkpoint of the run directory's resume files."""
        with tempfile.TemporaryDirectory(prefix="rayfed-ckpt-") as folder:
            for name in FL_RESUME_FILES:
                shutil.copy2(self.run_dir.file(name), folder)
            tune.report(self.metrics(rows), checkpoint=tune.Checkpoint.from_directory(folder))


def _restored_progress(run_dir: RunDirectory, checkpoint: tune.Checkpoint) -> Progress:
    """Copy a Tune checkpoint's resume files into the run directory and read where the run stood."""
    with checkpoint.as_directory() as folder:
        for name in FL_RESUME_FILES:
            shutil.copy2(Path(folder) / name, run_dir.file(name))
    return load_progress(run_dir.path)


def train_fl(params: dict[str, Any], setup: TrialSetup) -> None:
    """One fl trial: run_fl (or its continuation from the trial's Tune checkpoint), reporting every round."""
    started_at = time.time()
    config, _ = trial_config(setup, params)
    run_dir = _trial_run_dir(setup)
    reporter = RoundReporter(run_dir, started_at, audit_figures(config), len(config.partition_seeds))
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run_fl(config, run_dir, on_round=reporter)
    else:
        progress = _restored_progress(run_dir, checkpoint)
        run_dir.write_config(config)
        execute(config, run_dir, progress, on_round=reporter)


def sisa_trial_metrics(config: Config, run_dir: RunDirectory) -> dict[str, float]:
    """A sisa trial's figures (ensemble figures of `main_aggregation`): its run's, or over several seeds their
    means with `<figure>_ci` and `seeds`."""
    aggregation, seeds = main_aggregation(config.sisa.aggregation), config.seed_list
    if len(seeds) == 1:
        return run_figures(run_dir, aggregation)
    return figures_over_seeds(seed_rows(run_dir, seeds, aggregation))


def train_sisa(params: dict[str, Any], setup: TrialSetup) -> None:
    """One sisa trial: run_sisa, then one report of its final figures (`sisa_trial_metrics`)."""
    started_at = time.time()
    config, _ = trial_config(setup, params)
    run_dir = _trial_run_dir(setup)
    run_sisa(config, run_dir)
    tune.report(stamped(sisa_trial_metrics(config, run_dir), started_at))


TRAINABLES = {"fl": train_fl, "sisa": train_sisa}
