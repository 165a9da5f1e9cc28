"""`rayfed fl`: every method run x seed to fl.rounds on one FederatedEngine, round-major, a checkpoint after
each round, and `--resume` from the last one. Tables and figures are written by `rayfed.fl.report`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from tqdm.auto import tqdm

from rayfed.config import Config, build_config, check_resume, read_yaml_mapping
from rayfed.engine.fl_engine import FederatedEngine
from rayfed.engine.runtime import init_ray
from rayfed.errors import UserError
from rayfed.fl.report import unheld_classes_sentence, validation_sentence, write_outputs
from rayfed.fl.rows import AUDIT_FIGURES, AuditRow, ClientRow, RoundRow, schema, with_held_out
from rayfed.fl.setup import Federation, build_federations, initial_model_state
from rayfed.fl.state import NumpyState, to_numpy, to_torch
from rayfed.fl.strategies import Strategy, seeded_runs
from rayfed.fl.strategies.qffl import lipschitz_sentence
from rayfed.results import RunDirectory, Tracker, read_table

log = logging.getLogger("rayfed")

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class SeededRun:
    """One method run under one seed."""

    run: Strategy
    seed: int

    @property
    def key(self) -> str:
        """Its name in checkpoints: `fedauditgan_gamma2@42`."""
        return f"{self.run.file_label}@{self.seed}"


@dataclass
class Progress:
    """Where a run stands: rounds before `next_round` are done for every seeded run."""

    next_round: int
    states: dict[str, NumpyState]
    """Each seeded run's Theta after round next_round - 1 (key -> state)."""
    gans: dict[str, dict[str, Any]]
    """Each warm-started seeded run's G, D and optimizer states."""
    round_rows: list[dict[str, Any]]
    client_rows: list[dict[str, Any]]
    carried: dict[str, list[float]] = field(default_factory=dict)
    """What each seeded run's strategy carries into round next_round (AFL's lambda); absent for the others."""


def _save_checkpoint(run_dir: RunDirectory, progress: Progress) -> None:
    """Tables first, then the checkpoint that points past them: a crash in between only repeats a round."""
    run_dir.write_table("rounds.parquet", progress.round_rows, schema(RoundRow))
    run_dir.write_table("clients.parquet", progress.client_rows, schema(ClientRow))
    run_dir.save_state(
        CHECKPOINT,
        {
            "command": "fl",
            "next_round": progress.next_round,
            "states": {key: to_torch(state) for key, state in progress.states.items()},
            "gans": progress.gans,
            "carried": progress.carried,
            "rows": len(progress.round_rows),
            "client_rows": len(progress.client_rows),
        },
    )


def _log_round(tracker: Tracker, row: dict[str, Any], client_rows: list[dict[str, Any]]) -> None:
    data = {
        k: row[k]
        for k in (
            "round",
            "accuracy",
            "jfi",
            "max_min",
            "variance",
            "min_accuracy",
            "max_accuracy",
            "effective_clients",
            "max_weight",
            "score_spread",
        )
    }
    data.update({"accuracy_gap": row["gap"], "bias": row["bias"], f"fairness_basis/{row['fairness_basis']}": 1})
    for c in client_rows:
        data[f"client_{c['client']}_accuracy"] = c["accuracy"]
        data[f"client_{c['client']}_test_accuracy"] = c["test_accuracy"]
        if c["score"] is not None:
            data[f"client_{c['client']}_score"] = c["score"]
        data[f"client_{c['client']}_weight"] = c["weight"]
        data[f"client_{c['client']}_mixture"] = c["mixture"]  # AFL's lambda_i; None (left out below) elsewhere
    tracker.log({k: v for k, v in data.items() if v is not None})


RoundCallback = Callable[[list[dict[str, Any]]], None]
"""Called after each round's checkpoint is written, with that round's rows (one per seeded run); at the last
round each row also carries its model's held-out audit (`held_out_bias`, `flip_rate`, and with a validation
split `val_held_out_bias`, `val_flip_rate`) when one ran."""


def _held_out_audit(
    config: Config,
    run_dir: RunDirectory,
    engine: FederatedEngine,
    runs: list[SeededRun],
    state_refs: dict[str, ray.ObjectRef],
    trackers: dict[str, Tracker],
) -> list[dict[str, Any]]:
    """With metrics.held_out_audit, audit every seeded run's final model and write audit.parquet."""
    if not config.metrics.held_out_audit:
        return []
    log.info("held-out audit of %d final models", len(runs))
    rows = engine.held_out_audits([(r.run, r.seed) for r in runs], [state_refs[r.key] for r in runs], config.fl.rounds)
    run_dir.write_table("audit.parquet", rows, schema(AuditRow))
    for seeded, row in zip(runs, rows):
        trackers[seeded.key].log({k: row[v] for k, v in AUDIT_FIGURES.items() if row[v] is not None})
    return rows


def model_file(seeded: SeededRun, config: Config) -> str:
    """model_<run>.pt, or model_<run>_seed<s>.pt when the run has several seeds."""
    suffix = f"_seed{seeded.seed}" if len(config.seed_list) > 1 else ""
    return f"model_{seeded.run.file_label}{suffix}.pt"


def execute(
    config: Config, run_dir: RunDirectory, progress: Progress, on_round: RoundCallback | None = None
) -> list[dict[str, Any]]:
    """Run (or continue) every seeded run to fl.rounds, round-major (round r of every run, then r + 1),
    checkpointing after each round; then write the outputs.

    In each round every seeded run's updates and audit are submitted before any is collected, and the runs are
    collected concurrently, so the seeds and methods run side by side as far as the actors allow. `on_round`
    receives each round's rows once its checkpoint is on disk (Ray Tune trials report through it). Returns the
    summary rows.
    """
    federations = build_federations(config)
    notes = federation_notes(config, federations)
    for note in notes["unheld"]:
        log.warning(note)
    runs = [SeededRun(run, seed) for run, seed in seeded_runs(config)]
    started_ray = init_ray(config.resources.address)
    engine = FederatedEngine(config, federations)
    initial = {seed: to_numpy(initial_model_state(config, federations[seed], seed)) for seed in config.seed_list}
    state_refs = {r.key: ray.put(progress.states.get(r.key, initial[r.seed])) for r in runs}
    trackers = {
        r.key: Tracker(config, f"{r.run.label} seed {r.seed}", run_dir.path, group=run_dir.path.name) for r in runs
    }
    finishing = ThreadPoolExecutor(len(runs), thread_name_prefix="finish-round")
    audit_rows: list[dict[str, Any]] | None = None
    try:
        with tqdm(
            total=len(runs) * config.fl.rounds, initial=len(runs) * (progress.next_round - 1), unit="round"
        ) as bar:
            for round_index in range(progress.next_round, config.fl.rounds + 1):
                bar.set_description(f"round {round_index}")
                pending = [
                    engine.start_round(
                        round_index,
                        r.run,
                        r.seed,
                        state_refs[r.key],
                        progress.gans.get(r.key),
                        progress.carried.get(r.key),
                    )
                    for r in runs
                ]
                # Each run's round is finished in its own thread (they wait on Ray), so a run whose updates are in
                # is scored and evaluated while the others' audits still train; rows are kept in run order.
                futures = [finishing.submit(engine.finish_round, started) for started in pending]
                for future in as_completed(futures):
                    row = future.result().round_row
                    bar.update(1)
                    bar.set_postfix(acc=f"{row['accuracy']:.1f}", jfi=f"{row['jfi']:.3f}")
                for seeded, future in zip(runs, futures):
                    result = future.result()
                    state_refs[seeded.key] = result.state_ref
                    progress.round_rows.append(result.round_row)
                    progress.client_rows += result.client_rows
                    _log_round(trackers[seeded.key], result.round_row, result.client_rows)
                    if result.gan_state is not None:
                        progress.gans[seeded.key] = result.gan_state
                    if result.carried is not None:
                        progress.carried[seeded.key] = result.carried
                progress.next_round = round_index + 1
                progress.states = {
                    key: engine.wait_for(ref, f"round {round_index}", "the new weights to checkpoint")
                    for key, ref in state_refs.items()
                }
                _save_checkpoint(run_dir, progress)
                if round_index == config.fl.rounds:  # before the last report, so Tune sees the audit too
                    audit_rows = _held_out_audit(config, run_dir, engine, runs, state_refs, trackers)
                if on_round is not None:
                    on_round(with_held_out(progress.round_rows[-len(runs) :], audit_rows or []))
        if audit_rows is None:  # resumed after the last round's checkpoint
            audit_rows = _held_out_audit(config, run_dir, engine, runs, state_refs, trackers)
        for seeded in runs:
            run_dir.save_state(model_file(seeded, config), to_torch(progress.states[seeded.key]))
    finally:
        finishing.shutdown(wait=False, cancel_futures=True)  # after a failure, the other runs' waits end with Ray
        for tracker in trackers.values():
            tracker.finish()
        engine.shutdown()
        if started_ray:
            ray.shutdown()
    return write_outputs(
        config, run_dir, progress.round_rows, progress.client_rows, audit_rows, [n for ns in notes.values() for n in ns]
    )


def federation_notes(config: Config, federations: dict[int, Federation]) -> dict[str, list[str]]:
    """summary.md's sentences about the federations (each kind, in order: `unheld` classes, q-FFL's `lipschitz`
    constant, the `validation` split), one per distinct federation, each naming its seed when the seeds drew
    their own."""
    distinct: dict[int, tuple[int, Federation]] = {}  # each federation, with the first seed that trains on it
    for seed, federation in federations.items():
        distinct.setdefault(id(federation), (seed, federation))
    notes: dict[str, list[str]] = {"unheld": [], "lipschitz": [], "validation": []}
    for seed, federation in distinct.values():
        split = federation.split
        sentences = {
            "unheld": unheld_classes_sentence(config, federation.unheld_classes, federation.held_test_percent),
            "lipschitz": lipschitz_sentence(config, federation.num_samples),
            "validation": validation_sentence(
                config, len(split.validation), [len(i) for i in split.client_validation or []]
            ),
        }
        prefix = f"Seed {seed}'s federation: " if len(distinct) > 1 else ""
        for kind, sentence in sentences.items():
            if sentence is not None:
                notes[kind].append(prefix + sentence)
    return notes


def run_fl(config: Config, run_dir: RunDirectory, on_round: RoundCallback | None = None) -> list[dict[str, Any]]:
    """`rayfed fl`: every method of config.fl.methods, once per seed, for fl.rounds rounds, results in run_dir."""
    run_dir.write_config(config)
    return execute(config, run_dir, Progress(1, {}, {}, [], []), on_round)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unpickling errors all mean the same to the user
        raise UserError(f"{path} is not a readable rayfed checkpoint ({' '.join(str(exc).split())[:100]})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("command") != "fl":
        raise UserError(f"{path} is not a `rayfed fl` checkpoint")
    return checkpoint


def load_progress(directory: Path) -> Progress:
    """Where the `rayfed fl` run in `directory` stands (its checkpoint and the table rows it covers); a run
    killed before its first checkpoint stands at round 1. UserError naming the file when one is unreadable."""
    if not (directory / CHECKPOINT).is_file():
        return Progress(1, {}, {}, [], [])
    checkpoint = _load_checkpoint(directory / CHECKPOINT)
    rounds = read_table(directory / "rounds.parquet")[: checkpoint["rows"]]
    clients = read_table(directory / "clients.parquet")[: checkpoint["client_rows"]]
    return Progress(
        checkpoint["next_round"],
        {k: to_numpy(v) for k, v in checkpoint["states"].items()},
        checkpoint["gans"],
        rounds,
        clients,
        checkpoint.get("carried", {}),  # absent from the checkpoints of runs before AFL
    )


def resume_fl(path: str, config_file: str | None, overrides: list[str]) -> list[dict[str, Any]]:
    """`rayfed fl --resume RUN_DIR`: continue an interrupted run to fl.rounds (raising it extends a finished
    run), the only key that may change besides `RESUME_MAY_CHANGE` (the cluster, the stall timeout, tracking);
    a run killed during its first round starts again from round 1.
    Everything is validated before the run directory is touched."""
    directory = Path(path).resolve()
    sisa = [directory / "layout.parquet", *directory.glob("seed*/layout.parquet")]  # a sisa run, or its seeds'
    if not (directory / "config.yaml").is_file() or any(p.is_file() for p in sisa):
        raise UserError(f"--resume {directory} is not a `rayfed fl` run directory (no config.yaml, or a sisa run)")
    saved = read_yaml_mapping(directory / "config.yaml")
    original = build_config([saved])
    mappings = [saved] + ([read_yaml_mapping(config_file)] if config_file else [])
    config = build_config(mappings, overrides)
    check_resume(config, original, ("fl.rounds",))
    progress = load_progress(directory)
    done = progress.next_round - 1
    if config.fl.rounds < done:
        raise UserError(f"fl.rounds={config.fl.rounds} is fewer than the {done} rounds the run has done")
    run_dir = RunDirectory(directory)
    run_dir.write_config(config)
    log.info("resuming %s at round %d of %d", directory, progress.next_round, config.fl.rounds)
    return execute(config, run_dir, progress)
