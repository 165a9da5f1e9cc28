"""`rayfed sweep FILE`: a Ray Tune sweep of `rayfed fl` or `rayfed sisa` described by a YAML sweep file.

Sweep directory (`--out`, default runs/sweep-<time>/):
- `sweep.yaml`: the sweep file as run (overrides applied, paths absolute).
- `trials/<trial_id>/`: each trial's normal run directory (config.yaml, the contract tables, figures).
- `tune/<run_config.name>/`: Tune's experiment (results, checkpoints) unless run_config.storage_path is set.
- `sweep.parquet`: one row per trial: trial_id, status (TERMINATED, EARLY_STOPPED, INTERRUPTED, ERROR), its
  params, its final metrics, started_at/reported_at (wall clock), run_dir, error.
- `best_config.yaml`: the best trial's config (a `--config` for `rayfed fl`/`rayfed sisa`).
- figures (rayfed.tune.plots).

Running the same command again with the same `--out` continues an interrupted sweep (Tuner.restore):
finished trials are kept, unfinished ones resume from their last checkpoint, errored ones restart. An
interrupted sweep (Ctrl-C: Tune stops its trials gracefully) still writes its tables, then exits as
interrupted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from rayfed.config import build_config, nest, read_yaml_mapping
from rayfed.engine.runtime import alive_nodes, init_ray
from rayfed.errors import UserError
from rayfed.results import RunDirectory, run_directory
from rayfed.tune.findings import ranked_trials, sweep_findings
from rayfed.tune.plots import plot_sweep
from rayfed.tune.resources import budget_for
from rayfed.tune.spec import RUN_METRICS, Param, SweepSpec, load_sweep
from rayfed.tune.trainables import TRAINABLES, TrialResources, TrialSetup, trial_config

log = logging.getLogger("rayfed")

SWEEP_FILE = "sweep.yaml"
CHECKPOINTS_KEPT = 2
"""Tune checkpoints kept per trial (the last ones)."""
SAMPLER_FUNCTIONS = {"grid_search": tune.grid_search, "choice": tune.choice}
RANGE_FUNCTIONS = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}


def tune_domain(param: Param) -> Any:
    """The Tune search-space entry of one param."""
    if param.sampler is None:
        return param.values
    if param.sampler in SAMPLER_FUNCTIONS:
        return SAMPLER_FUNCTIONS[param.sampler](param.values)
    return RANGE_FUNCTIONS[param.sampler](*param.values)


def make_scheduler(spec: SweepSpec) -> TrialScheduler:
    """FIFO, or ASHA over training_iteration (= rounds for fl trials)."""
    settings = {k: v for k, v in spec.scheduler.items() if k != "type"}
    if spec.scheduler["type"] == "asha":
        return ASHAScheduler(time_attr="training_iteration", **settings)
    return FIFOScheduler()


def tracking_callbacks(spec: SweepSpec) -> list[tune.Callback]:
    """Ray's WandbLoggerCallback when the base config's tracking.wandb is offline or online."""
    tracking = spec.base_config.tracking
    if tracking.wandb == "disabled":
        return []
    from ray.air.integrations.wandb import WandbLoggerCallback

    return [WandbLoggerCallback(project=tracking.project, entity=tracking.entity, group=spec.name, mode=tracking.wandb)]


def experiment_path(spec: SweepSpec, sweep_dir: RunDirectory) -> str:
    """Where Tune keeps the experiment: storage_path/name, or tune/name in the sweep directory."""
    return f"{(spec.storage_path or str(sweep_dir.file('tune'))).rstrip('/')}/{spec.name}"


def continues_experiment(path: str, sweep_dir: RunDirectory) -> bool:
    """Whether the sweep in sweep_dir continues Tune's experiment at `path`: where it can be restored. A start
    that stopped before Tune began (Ray failed to start, Ctrl-C: sweep.yaml and no trial) starts afresh; an
    experiment gone while trials ran is a UserError, as their results cannot be continued."""
    if tune.Tuner.can_restore(path):
        return True
    trials = sweep_dir.file("trials")
    if trials.is_dir() and any(trials.iterdir()):
        raise UserError(f"--out {sweep_dir.path} holds a sweep's trials, but no Tune experiment at {path} to continue")
    log.info("no Tune experiment at %s yet (the last start stopped before it began): starting the sweep", path)
    return False


def _make_tuner(spec: SweepSpec, sweep_dir: RunDirectory, setup: TrialSetup, resume: bool) -> tune.Tuner:
    trainable = tune.with_resources(tune.with_parameters(TRAINABLES[spec.run], setup=setup), TrialResources(setup))
    path = experiment_path(spec, sweep_dir)
    if resume and continues_experiment(path, sweep_dir):
        log.info("continuing the sweep in %s", path)
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True)
    return tune.Tuner(
        trainable,
        param_space={p.key: tune_domain(p) for p in spec.params},
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            num_samples=spec.num_samples,
            max_concurrent_trials=spec.max_concurrent_trials,
            scheduler=make_scheduler(spec),
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=spec.storage_path or str(sweep_dir.file("tune")),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            callbacks=tracking_callbacks(spec),
        ),
    )


def _status(result: tune.Result, tune_status: str, setup: TrialSetup) -> str:
    """ERROR; INTERRUPTED (the sweep stopped before the trial ended: run the command again to continue);
    EARLY_STOPPED (an fl trial that ASHA stopped before fl.rounds); TERMINATED."""
    if result.error is not None or tune_status == "ERROR":
        return "ERROR"
    if tune_status != "TERMINATED":
        return "INTERRUPTED"
    if setup.run == "fl" and result.metrics.get("round", 0) < trial_config(setup, result.config)[0].fl.rounds:
        return "EARLY_STOPPED"
    return "TERMINATED"


def sweep_rows(results: tune.ResultGrid, spec: SweepSpec, setup: TrialSetup) -> list[dict[str, Any]]:
    """One row per trial: trial_id, status, params, final metrics, run_dir, error."""
    analysis = tune.ExperimentAnalysis(results.experiment_path, storage_filesystem=results.filesystem)
    trials = {trial.path: trial for trial in analysis.trials}
    rows = []
    for result in results:
        trial = trials[result.path]
        metrics = result.metrics or {}
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": _status(result, trial.status, setup)}
        row.update({p.key: result.config.get(p.key) for p in spec.params})
        for key, value in metrics.items():
            if (
                key in RUN_METRICS[spec.run]
                or "/" in key
                or key.endswith("_ci")
                or key in ("seeds", "federations", "fairness_basis", "started_at", "reported_at", "time_total_s")
            ):
                row[key] = value
        row["run_dir"] = str(Path(setup.trials_dir) / trial.trial_id)
        row["error"] = None if result.error is None else str(result.error).strip().splitlines()[-1][:300]
        rows.append(row)
    _as_one_type(rows, [p.key for p in spec.params])
    return rows


def _as_one_type(rows: list[dict[str, Any]], keys: list[str]) -> None:
    """A swept key whose values mix numbers and words (`qffl.lipschitz: [auto, 1]`) becomes a text column of
    sweep.parquet (one Parquet column holds one type); numbers alone, or words alone, are kept as they are."""
    for key in keys:
        values = [row[key] for row in rows if row.get(key) is not None]
        numeric = [isinstance(v, (int, float)) and not isinstance(v, bool) for v in values]
        if any(numeric) and not all(numeric):
            for row in rows:
                row[key] = None if row.get(key) is None else str(row[key])


def best_config(results: tune.ResultGrid, spec: SweepSpec, table: pd.DataFrame) -> dict[str, Any] | None:
    """The config (base + params) of the best trial by the sweep's metric and mode among those that ran to the
    end (`ranked_trials` of the sweep table: the trial the findings name best), None if none did."""
    ranked = ranked_trials(table, spec.metric, spec.mode)
    if ranked.empty:
        return None
    best = next(r for r in results if (r.metrics or {}).get("trial_id") == ranked.iloc[0]["trial_id"])
    params = {p.key: best.config[p.key] for p in spec.params}
    config = build_config([spec.base, *(nest(k, v) for k, v in params.items())]).to_dict()
    return {
        "params": params,
        spec.metric: best.metrics[spec.metric],
        "trial_id": best.metrics.get("trial_id"),
        "config": config,
    }


def run_sweep(spec: SweepSpec, sweep_dir: RunDirectory, resume: bool = False) -> pd.DataFrame:
    """Run (or continue) the sweep into sweep_dir; returns the sweep table."""
    if not resume:
        sweep_dir.write_text(SWEEP_FILE, yaml.safe_dump(_document(spec), sort_keys=False))
    started_ray = init_ray(spec.base_config.resources.address)
    try:
        budget = budget_for(alive_nodes(), spec.max_concurrent_trials, spec.trial_cpus, spec.trial_gpus)
        setup = TrialSetup(spec.run, spec.base, budget, str(sweep_dir.file("trials")))
        plan = trial_config(setup, {})[1]
        log.info(
            "each trial reserves up to %.4g CPU + %.4g GPU (base config: %s)",
            budget.cpus,
            budget.gpus,
            ", ".join(f"{k} {v:.4g}" for k, v in plan.total.items()),
        )
        started = time.time()
        results = _make_tuner(spec, sweep_dir, setup, resume).fit()
        wall = time.time() - started
    finally:
        if started_ray:
            ray.shutdown()
    rows = sweep_rows(results, spec, setup)
    sweep_dir.write_table("sweep.parquet", rows)
    table = pd.DataFrame(rows)
    best = best_config(results, spec, table)
    if best is None:
        print(
            f"no trial ran to the end and reported {spec.metric}; see the status and error columns of "
            f"{sweep_dir.file('sweep.parquet')}"
        )
    else:
        sweep_dir.write_text("best_config.yaml", yaml.safe_dump(best["config"], sort_keys=False))
        print(
            f"best trial {best['trial_id']}: {spec.metric}={best[spec.metric]:.4g} ({spec.mode}) with "
            f"{best['params']}; its config: {sweep_dir.file('best_config.yaml')}"
        )
    for sentence in sweep_findings(spec.run, table, spec.metric, spec.mode, [p.key for p in spec.params]):
        print(sentence)
    figures = plot_sweep(spec.run, table, [p.key for p in spec.params], sweep_dir.path)
    print(
        f"{len(rows)} trials in {wall:.0f}s; results in {sweep_dir.path} "
        f"(sweep.parquet, {', '.join(f.name for f in figures) or 'no figures'})"
    )
    unfinished = int((table["status"] == "INTERRUPTED").sum())
    if unfinished:
        print(f"{unfinished} trial(s) unfinished: run the same command with --out {sweep_dir.path} to continue")
        raise KeyboardInterrupt  # the CLI's exit for an interrupted command (status 130)
    return table


def _document(spec: SweepSpec) -> dict[str, Any]:
    return {
        "run": spec.run,
        "base": spec.base,
        "param_space": {p.key: p.values if p.sampler is None else {p.sampler: p.values} for p in spec.params},
        "tune_config": {
            "metric": spec.metric,
            "mode": spec.mode,
            "num_samples": spec.num_samples,
            "max_concurrent_trials": spec.max_concurrent_trials,
            "scheduler": spec.scheduler,
        },
        "run_config": {"name": spec.name, "storage_path": spec.storage_path},
        "trial_resources": {"cpus": spec.trial_cpus, "gpus": spec.trial_gpus},
    }


def run_sweep_file(file: str, overrides: list[str], out: str | None, config_file: str | None = None) -> pd.DataFrame:
    """`rayfed sweep FILE [--config FILE] [--set KEY=VALUE ...] [--out DIR]`: validate everything, then run the
    sweep. `--config` is laid over the sweep's base config, `--set` over both. An --out that already holds a
    sweep (sweep.yaml) is continued instead of refused."""
    spec = load_sweep(file, overrides, config_file)
    if out is not None and (Path(out) / SWEEP_FILE).is_file():
        stored = read_yaml_mapping(Path(out) / SWEEP_FILE, "sweep file")
        given = yaml.safe_load(yaml.safe_dump(_document(spec), sort_keys=False))
        changed = [key for key in given if given[key] != stored.get(key)]
        if changed:
            raise UserError(
                f"--out {out} holds a different sweep ({changed[0]} differs): continue it with the same "
                "sweep file and --set overrides, or choose a new --out"
            )
        return run_sweep(spec, RunDirectory(Path(out).resolve()), resume=True)
    with run_directory(out, "sweep") as sweep_dir:
        return run_sweep(spec, sweep_dir)
