"""The federated driver: actors, the round loop of FedAvg and Fed-AuditGAN, tables, checkpoints, resume."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import torch
from ray.exceptions import RayActorError
from tqdm.auto import tqdm

from rayfed.config import Config, build_config, first_difference, read_yaml_mapping
from rayfed.engine.client import ClientActor, LocalSettings
from rayfed.engine.runtime import actor_shares, cluster_cpus, cluster_gpus, init_ray
from rayfed.engine.server import AuditServer
from rayfed.errors import UserError
from rayfed.fl.metrics import fairness_summary
from rayfed.fl.setup import Federation, build_federation, select_clients
from rayfed.fl.state import NumpyState, to_numpy, to_torch
from rayfed.plots.fl import plot_fairness
from rayfed.results import RunDirectory, Tracker, read_table

log = logging.getLogger("rayfed")

ROUNDS_SCHEMA = pa.schema([
    ("method", pa.string()), ("gamma", pa.float64()), ("round", pa.int64()), ("accuracy", pa.float64()),
    ("bias", pa.float64()), ("jfi", pa.float64()), ("max_min", pa.float64()), ("variance", pa.float64()),
    ("min_accuracy", pa.float64()), ("max_accuracy", pa.float64()), ("mean_accuracy", pa.float64()),
    ("gap", pa.float64()), ("participants", pa.int64()), ("seconds", pa.float64()),
])
CLIENTS_SCHEMA = pa.schema([
    ("method", pa.string()), ("gamma", pa.float64()), ("round", pa.int64()), ("client", pa.int64()),
    ("num_samples", pa.int64()), ("accuracy", pa.float64()), ("test_accuracy", pa.float64()),
    ("bias", pa.float64()), ("score", pa.float64()), ("weight", pa.float64()), ("participated", pa.bool_()),
    ("retries", pa.int64()), ("rejected", pa.string()),
])
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class MethodRun:
    """One line of the comparison: FedAvg, or Fed-AuditGAN with one gamma."""

    method: str
    gamma: float | None

    @property
    def label(self) -> str:
        return "FedAvg" if self.method == "fedavg" else f"gamma={self.gamma:g}"

    @property
    def file_label(self) -> str:
        return "fedavg" if self.method == "fedavg" else f"fedauditgan_gamma{self.gamma:g}"


def method_runs(config: Config) -> list[MethodRun]:
    """fl.methods in order, Fed-AuditGAN expanded once per audit.gamma."""
    runs = []
    for method in config.fl.methods:
        runs += [MethodRun(method, None)] if method == "fedavg" else [MethodRun(method, g) for g in config.gammas]
    return runs


@dataclass
class RoundResult:
    state_ref: ray.ObjectRef
    round_row: dict[str, Any]
    client_rows: list[dict[str, Any]]
    gan_state: dict[str, Any] | None


class FederatedEngine:
    """Starts the client actors and the audit server, and runs rounds on them."""

    def __init__(self, config: Config, federation: Federation):
        self.config, self.federation = config, federation
        r, fl, d = config.resources, config.fl, federation.data
        ids = list(range(config.data.num_clients))
        per_actor = r.actor_capacity(len(ids), cluster_cpus(), cluster_gpus())
        self.groups = [ids[i : i + per_actor] for i in range(0, len(ids), per_actor)]
        self.actor_of = {cid: a for a, group in enumerate(self.groups) for cid in group}
        num_actors = len(self.groups) + 1  # + the server
        cpus, gpus = actor_shares(r.cpus_per_client, r.gpus_per_client, num_actors, "client")  # server: one of them
        settings = LocalSettings(
            config.model.name, d.shape, d.num_classes, fl.local_epochs, fl.lr, fl.momentum, fl.weight_decay,
            config.data.batch_size, config.data.eval_batch_size, config.seed, federation.augment_pad,
            r.torch_threads,
        )
        retries = fl.max_retries
        task_retries = retries if fl.on_client_failure == "retry" else 0
        # Each partition enters the object store once; the engine keeps the refs so restarted actors find them.
        self.client_refs = [ray.put(c) for c in federation.clients]
        self.test_ref = ray.put((d.test_x, d.test_y))
        self.actors = [
            ClientActor.options(num_cpus=cpus, num_gpus=gpus, max_restarts=retries, max_task_retries=task_retries)
            .remote(settings, [self.client_refs[cid] for cid in group], [self.test_ref])
            for group in self.groups
        ]
        split = federation.split
        self.server_data = ray.put((d.train_x[split.audit], d.train_y[split.audit], d.test_x, d.test_y))
        self.server = AuditServer.options(
            num_cpus=cpus if r.server_cpus == "auto" else r.server_cpus,
            num_gpus=gpus if r.server_gpus == "auto" else r.server_gpus,
            max_restarts=retries, max_task_retries=retries,
        ).remote(config.model.name, d.shape, d.num_classes, config.audit, federation.space, [self.server_data],
                 config.seed, config.data.eval_batch_size, r.server_threads)
        log.info("%d client actors (%.4g CPU, %.4g GPU each) + audit server", len(self.actors), cpus, gpus)

    def round(self, round_index: int, run: MethodRun, state_ref: ray.ObjectRef,
              gan_state: dict[str, Any] | None = None) -> RoundResult:
        """One round: local updates in parallel with the server's GAN audit, then scoring + aggregation on the
        server, evaluation everywhere."""
        started = time.perf_counter()
        config = self.config
        selected = select_clients(config.data.num_clients, config.fl.clients_per_round, config.seed, round_index)
        by_actor: dict[int, list[int]] = {}
        for cid in selected:
            by_actor.setdefault(self.actor_of[cid], []).append(cid)
        pending = {a: self.actors[a].train.remote(round_index, state_ref, cids) for a, cids in by_actor.items()}
        # Phase 2 needs only Theta_old: the server trains the audit GAN while the clients train.
        probes_ref, gan_ref = (self.server.audit.remote(round_index, state_ref, gan_state)
                               if run.method == "fedauditgan" else (None, None))
        delivered, retries, dropped = [], {}, []
        for a, (receipts_ref, updates_ref) in pending.items():
            try:
                for receipt in ray.get(receipts_ref):
                    retries[receipt.client_id] = int(receipt.restarted)
                delivered.append(updates_ref)
            except RayActorError as exc:
                dropped += by_actor[a]
                log.warning("round %d: clients %s dropped, their actor died (%s)", round_index, by_actor[a],
                            str(exc).splitlines()[0])
        for cid, count in retries.items():
            if count:
                log.warning("round %d: client %d was recomputed on a restarted actor", round_index, cid)
        outcome_ref, new_state_ref = self.server.aggregate.remote(round_index, run.method, run.gamma, state_ref,
                                                                  delivered, probes_ref)
        outcome = ray.get(outcome_ref)
        evaluations = {}
        for batch in ray.get([actor.evaluate.remote(round_index, new_state_ref) for actor in self.actors]):
            evaluations.update({cid: (acc, test_acc) for cid, acc, test_acc in batch})
        per_client = [evaluations[cid][0] for cid in range(config.data.num_clients)]
        index = {cid: i for i, cid in enumerate(outcome.client_ids)}
        client_rows = []
        for cid in range(config.data.num_clients):
            i = index.get(cid)
            client_rows.append({
                "method": run.method, "gamma": run.gamma, "round": round_index, "client": cid,
                "num_samples": self.federation.num_samples[cid], "accuracy": evaluations[cid][0],
                "test_accuracy": evaluations[cid][1],
                "bias": None if i is None else outcome.biases[i], "score": None if i is None else outcome.scores[i],
                "weight": 0.0 if i is None else outcome.weights[i],
                "participated": i is not None and cid not in outcome.rejected,
                "retries": retries.get(cid, 0), "rejected": outcome.rejected.get(cid),
            })
        for cid, why in outcome.rejected.items():
            log.warning("round %d: update of client %d rejected: %s", round_index, cid, why)
        round_row = {
            "method": run.method, "gamma": run.gamma, "round": round_index, "accuracy": outcome.test_accuracy,
            "bias": outcome.bias_base, **fairness_summary(per_client),
            "participants": sum(r["participated"] for r in client_rows),
            "seconds": time.perf_counter() - started,
        }
        return RoundResult(new_state_ref, round_row, client_rows, None if gan_ref is None else ray.get(gan_ref))

    def shutdown(self) -> None:
        for actor in [*self.actors, self.server]:
            ray.kill(actor)


def _log_round(tracker: Tracker, result: RoundResult) -> None:
    row = result.round_row
    data = {k: row[k] for k in ("round", "accuracy", "jfi", "max_min", "variance", "min_accuracy", "max_accuracy")}
    data.update({"accuracy_gap": row["gap"], "bias": row["bias"]})
    for c in result.client_rows:
        data[f"client_{c['client']}_accuracy"] = c["accuracy"]
        if c["score"] is not None:
            data[f"client_{c['client']}_score"] = c["score"]
            data[f"client_{c['client']}_weight"] = c["weight"]
    tracker.log({k: v for k, v in data.items() if v is not None})


def summary_table(round_rows: list[dict[str, Any]], runs: list[MethodRun]) -> list[dict[str, Any]]:
    """The notebook's summary: each method's figures at its last round."""
    rows = []
    for run in runs:
        mine = [r for r in round_rows if r["method"] == run.method and r["gamma"] == run.gamma]
        if mine:
            last = max(mine, key=lambda r: r["round"])
            rows.append({"Method": run.label, "Round": last["round"], "Global Acc": last["accuracy"],
                         "JFI": last["jfi"], "Max-Min": last["max_min"], "Variance": last["variance"],
                         "Min Acc": last["min_accuracy"], "Max Acc": last["max_accuracy"], "Gap": last["gap"],
                         "Bias": last["bias"]})
    return rows


def format_summary(rows: list[dict[str, Any]]) -> str:
    """Markdown table of `summary_table` rows."""
    def cell(v: Any) -> str:
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@dataclass
class Progress:
    """Where a run stands: rounds before `next_round` are done for every method run."""

    next_round: int
    states: dict[str, NumpyState]
    """Each method run's Theta after round next_round - 1 (file_label -> state)."""
    gans: dict[str, dict[str, Any]]
    """Each warm-started method run's G, D and optimizer states."""
    round_rows: list[dict[str, Any]]
    client_rows: list[dict[str, Any]]


def _save_checkpoint(run_dir: RunDirectory, progress: Progress) -> None:
    """Tables first, then the checkpoint that points past them: a crash in between only repeats a round."""
    run_dir.write_table("rounds.parquet", progress.round_rows, ROUNDS_SCHEMA)
    run_dir.write_table("clients.parquet", progress.client_rows, CLIENTS_SCHEMA)
    run_dir.save_state(CHECKPOINT, {
        "command": "fl", "next_round": progress.next_round,
        "states": {label: to_torch(state) for label, state in progress.states.items()}, "gans": progress.gans,
        "rows": len(progress.round_rows), "client_rows": len(progress.client_rows),
    })


RoundCallback = Callable[[list[dict[str, Any]]], None]
"""Called after each round's checkpoint is written, with that round's rows (one per method run)."""


def execute(config: Config, run_dir: RunDirectory, progress: Progress,
            on_round: RoundCallback | None = None) -> list[dict[str, Any]]:
    """Run (or continue) every method run to fl.rounds, round-major (round r of every method, then r + 1),
    checkpointing after each round; then write the outputs.

    `on_round` receives each round's rows once its checkpoint is on disk (Ray Tune trials report through it).
    Returns the summary rows.
    """
    federation = build_federation(config)
    runs = method_runs(config)
    started_ray = init_ray(config.resources.address)
    engine = FederatedEngine(config, federation)
    initial = to_numpy(federation.initial_state)
    state_refs = {run.file_label: ray.put(progress.states.get(run.file_label, initial)) for run in runs}
    trackers = {run.file_label: Tracker(config, run.label, run_dir.path, group=run_dir.path.name) for run in runs}
    try:
        with tqdm(total=len(runs) * config.fl.rounds, initial=len(runs) * (progress.next_round - 1),
                  unit="round") as bar:
            for round_index in range(progress.next_round, config.fl.rounds + 1):
                for run in runs:
                    bar.set_description(f"round {round_index} {run.label}")
                    result = engine.round(round_index, run, state_refs[run.file_label], progress.gans.get(run.file_label))
                    state_refs[run.file_label] = result.state_ref
                    progress.round_rows.append(result.round_row)
                    progress.client_rows += result.client_rows
                    _log_round(trackers[run.file_label], result)
                    if result.gan_state is not None:
                        progress.gans[run.file_label] = result.gan_state
                    bar.update(1)
                    bar.set_postfix(acc=f"{result.round_row['accuracy']:.1f}", jfi=f"{result.round_row['jfi']:.3f}")
                progress.next_round = round_index + 1
                progress.states = {label: ray.get(ref) for label, ref in state_refs.items()}
                _save_checkpoint(run_dir, progress)
                if on_round is not None:
                    on_round(progress.round_rows[-len(runs):])
        for run in runs:
            run_dir.save_state(f"model_{run.file_label}.pt", to_torch(progress.states[run.file_label]))
    finally:
        for tracker in trackers.values():
            tracker.finish()
        engine.shutdown()
        if started_ray:
            ray.shutdown()
    return write_outputs(config, run_dir, progress, runs)


def write_outputs(config: Config, run_dir: RunDirectory, progress: Progress, runs: list[MethodRun]) -> list[dict]:
    """summary.md, fairness.png and the printed summary table (and their wandb copies when tracking)."""
    summary = summary_table(progress.round_rows, runs)
    text = format_summary(summary)
    run_dir.write_text("summary.md", f"# rayfed fl summary ({config.data.dataset}, {config.fl.rounds} rounds)\n\n{text}")
    plot_fairness(progress.round_rows, progress.client_rows, runs, run_dir.file("fairness.png"))
    tracker = Tracker(config, "Summary-Comparison", run_dir.path, group=run_dir.path.name)
    tracker.log_image("comparison_plot", run_dir.file("fairness.png"))
    tracker.log_table("summary_table", summary)
    tracker.finish()
    print(text)
    return summary


def run_fl(config: Config, run_dir: RunDirectory, on_round: RoundCallback | None = None) -> list[dict[str, Any]]:
    """`rayfed fl`: every method of config.fl.methods for fl.rounds rounds, results in run_dir."""
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
    """Where the `rayfed fl` run in `directory` stands (its checkpoint and the table rows it covers);
    UserError naming the file when one is unreadable."""
    checkpoint = _load_checkpoint(directory / CHECKPOINT)
    rounds = read_table(directory / "rounds.parquet")[: checkpoint["rows"]]
    clients = read_table(directory / "clients.parquet")[: checkpoint["client_rows"]]
    return Progress(checkpoint["next_round"], {k: to_numpy(v) for k, v in checkpoint["states"].items()},
                    checkpoint["gans"], rounds, clients)


def resume_fl(path: str, config_file: str | None, overrides: list[str]) -> list[dict[str, Any]]:
    """`rayfed fl --resume RUN_DIR`: continue an interrupted run to fl.rounds, the only key that may change
    (raising it extends a finished run). Everything is validated before the run directory is touched."""
    directory = Path(path).resolve()
    if not (directory / "config.yaml").is_file() or not (directory / CHECKPOINT).is_file():
        raise UserError(f"--resume {directory} is not a `rayfed fl` run directory (no config.yaml + {CHECKPOINT})")
    saved = read_yaml_mapping(directory / "config.yaml")
    original = build_config([saved])
    mappings = [saved] + ([read_yaml_mapping(config_file)] if config_file else [])
    config = build_config(mappings, overrides)
    mine, theirs = config.to_dict(), original.to_dict()
    mine["fl"].pop("rounds"), theirs["fl"].pop("rounds")
    changed = first_difference(mine, theirs)
    if changed:
        raise UserError(f"--resume: {changed} differs from the run's config (only fl.rounds may change)")
    progress = load_progress(directory)
    done = progress.next_round - 1
    if config.fl.rounds < done:
        raise UserError(f"fl.rounds={config.fl.rounds} is fewer than the {done} rounds the run has done")
    run_dir = RunDirectory(directory)
    run_dir.write_config(config)
    log.info("resuming %s at round %d of %d", directory, progress.next_round, config.fl.rounds)
    return execute(config, run_dir, progress)
