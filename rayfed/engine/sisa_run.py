"""`rayfed sisa`: train a SISA ensemble on Ray, measure it, serve the forget requests one after another, verify
exactness against an ensemble retrained from scratch, price the unlearning against retraining the ensemble and
one unsharded model, audit with membership inference and a backdoor, and (`unlearn.baselines`) compare with
approximate unlearning of one unsharded model.

Run directory: config.yaml, layout.parquet, forget.txt, metrics.parquet, validation.parquet (the ensembles on
the validation split, with `data.validation_fraction`), unlearning.parquet (one row per
request), unlearning_points.parquet (one row per forgotten point), exactness.parquet, membership.parquet,
backdoor.parquet, baselines.parquet (with unlearn.baselines), summary.md, the PNG figures of rayfed.plots.sisa,
and checkpoints/main/shard{s}/slice{k}.pt (the trained-then-unlearned ensemble, what later unlearning starts
from). The audit-only ensembles (`retrained` from scratch, `backdoor`) checkpoint beside it while they train
and are deleted once measured. With several `seeds`: config.yaml, one such directory per seed (`seed<k>/`),
seeds.parquet (one row of figures per seed), seeds.png (their paired differences) and a summary.md over
the seeds.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch

from rayfed.audits.backdoor import attack_success_rate, check_trigger_fits, choose_poison, poison_data, stamp
from rayfed.audits.membership import membership_row
from rayfed.config import Config, build_config, check_resume, read_yaml_mapping
from rayfed.data.datasets import ImageData, black_level, hold_out_validation, load_dataset
from rayfed.engine.runtime import init_ray, log
from rayfed.engine.shard import ShardPool, ShardWorkers
from rayfed.errors import UserError
from rayfed.plots.sisa import plot_seed_differences, plot_sisa
from rayfed.results import RunDirectory, Tracker
from rayfed.seeds import Stream, stream_seed
from rayfed.sisa.approximate import (
    finetune,
    neggrad_plus,
    random_label,
    retrain_gap,
    scrub,
    timed,
    train_unsharded,
)
from rayfed.sisa.ensemble import classification_metrics, combine_shards, ensemble_loss, shard_probs, vote_ties
from rayfed.sisa.findings import main_aggregation, sisa_findings
from rayfed.sisa.plan import Layout, affected_shards, make_layout, resolve_forget
from rayfed.sisa.schedule import (
    epochs_per_stage,
    expected_request_samples,
    expected_speedup,
    stage_samples,
    untrained_slices,
)
from rayfed.sisa.seeds import figures_over_seeds, run_figures, seed_dir, seed_rows, seeds_summary, seeds_tables
from rayfed.sisa.train import TrainSettings, model_from_state

SUMMARY = "summary.md"
SEEDS_TABLE = "seeds.parquet"
DIVERGENCE_HINTS = {
    "neggrad": "; a small forget set makes NegGrad+'s ascent unbounded: raise `unlearn.neggrad_alpha` (less ascent)",
    "scrub": "; SCRUB's max-steps ascend an unbounded KL: lower `unlearn.scrub_max_epochs` or `sisa.lr`",
}
"""What to try when an approximate method's weights end non-finite (its ascent ran away)."""


@dataclass
class SisaSetup:
    """Everything decided (and checked) before any file is written."""

    data: ImageData
    layout: Layout
    forget: list[int]
    requests: list[list[int]]
    """The forget set cut, in order, into the `unlearn.requests` requests served one after another."""
    poison: np.ndarray | None
    settings: TrainSettings
    validation: tuple[torch.Tensor, torch.Tensor] | None = None
    """The held-out validation images and labels (`data.validation_fraction`), not in `data`'s training set."""


def make_setup(config: Config) -> SisaSetup:
    """Load the data and check every input (UserError naming the key) before anything runs."""
    d, s, b = config.data, config.sisa, config.backdoor
    data, validation = hold_out_validation(
        load_dataset(d.dataset, d.root, d.download, d.augment),
        d.validation_fraction,
        stream_seed(config.seed, Stream.SISA_VALIDATION),
    )
    n = len(data.train_y)
    layout = make_layout(n, s.shards, s.slices, config.seed)
    forget = resolve_forget(config.unlearn.forget, n, config.seed)
    if forget and config.unlearn.requests > len(forget):
        raise UserError(f"unlearn.requests: cannot cut {len(forget)} points into {config.unlearn.requests} requests")
    if forget and not any(sum(sizes) for sizes in layout.kept_slice_sizes(forget)):
        raise UserError("unlearn.forget: forgets every training point; no shard is left to predict with")
    if b.enabled:
        check_trigger_fits(b.trigger_size, *data.train_x.shape[2:])
    poison = (
        choose_poison(
            data.train_y,
            target=b.target_class,
            num_classes=data.num_classes,
            mode=b.mode,
            count=b.poison,
            fraction=b.poison_fraction,
            seed=config.seed,
        )
        if b.enabled
        else None
    )
    epochs = tuple(epochs_per_stage(s.schedule, s.epochs, s.slices))
    never = untrained_slices(epochs)
    if never:
        raise UserError(
            f"sisa.epochs: the {s.schedule} schedule with e={s.epochs} over R={s.slices} slices trains 0 "
            f"epochs from stage {never.start}, so slices {never.start}..{s.slices - 1} would never be "
            f"trained on (raise sisa.epochs, lower sisa.slices or use sisa.schedule=union)"
        )
    settings = TrainSettings(
        model=config.model.name,
        input_shape=data.shape,
        num_classes=data.num_classes,
        epochs=epochs,
        lr=s.lr,
        momentum=s.momentum,
        batch_size=s.batch_size,
        seed=config.seed,
        pretrained=config.model.pretrained,
        augment_pad=black_level(data.mean, data.std) if data.augment else None,
    )
    requests = (
        [[int(i) for i in part] for part in np.array_split(np.asarray(forget, dtype=np.int64), config.unlearn.requests)]
        if forget
        else []
    )
    return SisaSetup(data, layout, forget, requests, poison, settings, validation)


class ShardEnsemble:
    """The shard models that predictions use: `members` (default all), the shards that still hold a point (an
    emptied shard would vote with its initial weights, so it leaves the ensemble). `states` keeps every shard."""

    def __init__(
        self, settings: TrainSettings, states: list[dict[str, Any]], batch_size: int, members: list[int] | None = None
    ):
        self.settings, self.batch_size, self.states = settings, batch_size, states
        self.members = list(range(len(states))) if members is None else members
        self.models = [model_from_state(settings, states[s]) for s in self.members]

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """S' x n x C softmaxes of the member shards."""
        return shard_probs(self.models, x, self.batch_size)


def _members(layout: Layout, removed: list[int]) -> list[int]:
    """Shards with at least one point left once `removed` are forgotten."""
    return [s for s, sizes in enumerate(layout.kept_slice_sizes(removed)) if sum(sizes)]


MODEL_FIGURES = (
    "accuracy",
    "forget_accuracy",
    "retained_accuracy",
    "val_accuracy",
    "forget_mia_n",
    "forget_mia_auc",
    "forget_mia_auc_low",
    "forget_mia_auc_high",
)
"""The figures of a baselines.parquet row that its model's predictions give (null where the model diverged;
`val_accuracy` null without a validation split)."""


def _metric_rows(stage: str, probs: torch.Tensor, y: torch.Tensor, aggregations: list[str]) -> list[dict]:
    rows = []
    for agg in aggregations:
        tie_rate = float(vote_ties(probs).float().mean()) if agg == "vote" else None
        rows.append(
            {
                "stage": stage,
                "aggregation": agg,
                **classification_metrics(y, *combine_shards(probs, agg)),
                "model": "ensemble",
                "shards_used": probs.shape[0],
                "tie_rate": tie_rate,
            }
        )
    return rows


def _exactness_rows(
    a: ShardEnsemble,
    b: ShardEnsemble,
    probs_a: torch.Tensor,
    probs_b: torch.Tensor,
    aggregations: list[str],
    kernels: dict[str, Any],
) -> list[dict]:
    weights_equal = all(torch.equal(sa[k], sb[k]) for sa, sb in zip(a.states, b.states) for k in sa)
    rows = []
    for agg in aggregations:
        (pred_a, score_a), (pred_b, score_b) = combine_shards(probs_a, agg), combine_shards(probs_b, agg)
        rows.append(
            {
                "aggregation": agg,
                "predictions_equal": bool(torch.equal(pred_a, pred_b)),
                "max_probability_difference": float((score_a - score_b).abs().max()),
                "weights_equal": weights_equal,
                "test_points": len(pred_a),
                "device": kernels["device"],
                "torch_version": kernels["torch_version"],
                "deterministic": kernels["deterministic"],
            }
        )
    return rows


def _sample(n: int, size: int | None, seed: int, exclude: list[int] = ()) -> np.ndarray:
    """Sorted random `size` (all when null or larger) of range(n) minus `exclude`."""
    pool = np.setdiff1d(np.arange(n), np.asarray(exclude, dtype=np.int64))
    size = len(pool) if size is None else min(size, len(pool))
    return np.sort(np.random.default_rng(seed).choice(pool, size=size, replace=False))


def _retrain_samples(layout: Layout, epochs: tuple[int, ...], removed: list[int]) -> int:
    """Samples of retraining every shard from scratch without `removed`: sum_s sum_r e_r |D_s,<=r|."""
    return sum(stage_samples(sizes, epochs) for sizes in layout.kept_slice_sizes(removed))


def run_sisa(config: Config, run_dir: RunDirectory) -> None:
    """The whole `rayfed sisa` experiment (see the module docstring); with several `seeds`, one whole run per
    seed in `seed<k>/` and a summary.md and seeds.parquet over them (rayfed.sisa.seeds). A seed whose directory
    already holds its summary.md is kept (a resumed run), the others run or resume from their checkpoints."""
    seeds = config.seed_list
    first = single_seed(config, seeds[0])
    setup = make_setup(first)  # bad input stops here, before anything is written
    if len(seeds) > 1:
        run_dir.write_config(config)
    started = init_ray(config.resources.address)
    workers = None
    try:
        workers = ShardWorkers(config.sisa.shards, config.resources, config.sisa.deterministic)
        if len(seeds) == 1:
            print(_run_seed(first, run_dir, setup, run_dir, workers))
        else:
            _run_seeds(config, run_dir, seeds, setup, workers)
    finally:
        if workers is not None:
            workers.close()
        if started:
            ray.shutdown()
    if len(seeds) > 1:
        print(_summarise_seeds(config, run_dir, seeds))
    log.info("sisa: done")


def _run_seeds(
    config: Config, run_dir: RunDirectory, seeds: list[int], first_setup: SisaSetup, workers: ShardWorkers
) -> None:
    """Each seed's run in seed<k>/, one after another on the same shard actors; a seed whose directory holds its
    summary.md is kept."""
    for number, seed in enumerate(seeds, 1):
        directory = seed_dir(run_dir, seed)
        if directory.file(SUMMARY).is_file():
            continue
        directory.path.mkdir(exist_ok=True)
        log.info("sisa: seed %d (%d of %d)", seed, number, len(seeds))
        one = single_seed(config, seed)
        _run_seed(one, directory, first_setup if number == 1 else make_setup(one), run_dir, workers)


def _summarise_seeds(config: Config, run_dir: RunDirectory, seeds: list[int]) -> str:
    """seeds.parquet, seeds.png and summary.md over the seeds' runs (and their wandb run); returns the summary."""
    aggregation = main_aggregation(config.sisa.aggregation)
    rows = seed_rows(run_dir, seeds, aggregation)
    per_seed = [{"seed": seed, **row} for seed, row in zip(seeds, rows)]
    run_dir.write_table(SEEDS_TABLE, per_seed)
    paired = seeds_tables(rows)[1]
    figures = []
    if paired:  # none without a forget set or a backdoor
        figures.append(run_dir.file("seeds.png"))
        plot_seed_differences(paired, figures[0])
    tables = {"seeds": per_seed, "differences": paired}
    _track(config, run_dir, "sisa-seeds", partial(figures_over_seeds, rows), tables, figures)
    summary = seeds_summary(_title(config), rows, seeds, aggregation)
    run_dir.write_text(SUMMARY, summary)
    return summary


def single_seed(config: Config, seed: int) -> Config:
    """config for one seed's run: `seed` set, `seeds` 1."""
    return build_config([config.to_dict(), {"seed": seed, "seeds": 1}])


def _run_seed(config: Config, run_dir: RunDirectory, setup: SisaSetup, top: RunDirectory, workers: ShardWorkers) -> str:
    """One seed's whole run into run_dir on the shard actors, tracked under the top run directory `top`;
    summary.md is written last, so a directory that holds it is finished. Returns the summary."""
    run_dir.write_config(config)
    run_dir.write_table("layout.parquet", setup.layout.rows())
    run_dir.write_text("forget.txt", "".join(f"{i}\n" for i in setup.forget))
    experiment = SisaExperiment(config, run_dir, setup, workers)
    tables = experiment.run()
    figures = plot_sisa(run_dir.path, **tables)
    seed_figures = partial(run_figures, run_dir, main_aggregation(config.sisa.aggregation))
    _track(config, top, f"sisa-seed{config.seed}", seed_figures, tables, figures)
    run_dir.write_text(SUMMARY, experiment.summary)
    return experiment.summary


def _track(
    config: Config,
    top: RunDirectory,
    name: str,
    figures: Callable[[], dict[str, float]],
    tables: dict[str, list[dict]],
    images: list[Path],
) -> None:
    """With `tracking.wandb` offline or online, one wandb run (in top's wandb/, grouped by its name): the
    figures (computed only then), every non-empty table and the PNGs."""
    if config.tracking.wandb == "disabled":
        return
    tracker = Tracker(config, name, top.path, group=top.path.name)
    tracker.log(figures())
    for key, rows in tables.items():
        tracker.log_table(key, rows)
    for path in images:
        tracker.log_image(path.stem, path)
    tracker.finish()


def resume_sisa(path: str, config_file: str | None, overrides: list[str]) -> None:
    """`rayfed sisa --resume RUN_DIR`: run a killed `rayfed sisa` again in its own directory with its own config.

    Every slice checkpoint records the exact indices it has seen, and a shard resumes after its last checkpoint
    that matches what it is asked for, so the resumed run recomputes only what is missing and ends with the same
    ensembles, metrics and audits. The cost columns of unlearning.parquet count the resumed process's work.
    A run over several seeds keeps its finished seeds and resumes the others. Nothing is written before the
    directory and the config are checked.
    """
    directory = Path(path).resolve()
    saved = read_yaml_mapping(directory / "config.yaml") if (directory / "config.yaml").is_file() else None
    runs = [directory] + [directory / f"seed{s}" for s in (build_config([saved]).seed_list if saved else [])]
    if saved is None or not any((run / "layout.parquet").is_file() for run in runs):
        raise UserError(f"--resume {directory} is not a `rayfed sisa` run directory (no config.yaml + layout.parquet)")
    config = build_config([saved] + ([read_yaml_mapping(config_file)] if config_file else []), overrides)
    check_resume(config, build_config([saved]))
    log.info("resuming %s", directory)
    run_sisa(config, RunDirectory(directory))


class SisaExperiment:
    """One `rayfed sisa` run, step by step: `train`, `unlearn` (the requests), `retrain_reference`,
    `train_unsharded` (the unsharded reference and the approximate baselines), `membership`, `backdoor`,
    `compare_baselines`, `report`. Each step adds rows to `tables`; metrics and exactness come with the step
    whose model they measure."""

    TABLES = (
        "metrics",
        "validation",
        "unlearning",
        "unlearning_points",
        "exactness",
        "membership",
        "backdoor",
        "baselines",
    )

    def __init__(self, config: Config, run_dir: RunDirectory, setup: SisaSetup, workers: ShardWorkers):
        self.config, self.run_dir, self.setup, self.workers = config, run_dir, setup, workers
        self.aggregations = config.sisa.aggregation
        self.checkpoints = run_dir.file("checkpoints")
        self.tables: dict[str, list[dict]] = {k: [] for k in self.TABLES}
        self.probes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.probs: dict[str, dict[str, torch.Tensor]] = {}
        """{stage: {probe set: S' x n x C shard softmaxes}}"""
        self.ensembles: dict[str, ShardEnsemble] = {}
        self.unsharded: dict[str, dict[str, Any]] = {}
        """{method: {"state", "samples", "seconds", "probs"}} of the unsharded model (trained, retrained, baselines)."""
        self.unsharded_backdoor: dict[str, dict[str, Any]] = {}
        """The same on the poisoned data (the poison as the forget set), with "asr"."""
        self.reference_cost: tuple[float, float] | None = None  # (shard seconds, wall seconds) of the reference
        self.warnings: list[str] = []
        self.summary = ""

    def run(self) -> dict[str, list[dict]]:
        """Every step, then the tables written to the run directory and the summary composed."""
        self.train()
        if self.config.unlearn.baselines and not self.setup.forget:
            self.warnings.append("unlearn.baselines: nothing to forget, so no approximate method ran")
        if self.setup.forget:
            self.unlearn()
            if self.config.unlearn.verify:
                self.retrain_reference()
            self.train_unsharded()
            self.membership()
        self.backdoor()
        self.compare_baselines()
        self.report()
        return self.tables

    def _predict(self, stage: str, ensemble: ShardEnsemble) -> None:
        """Probabilities of every probe set and the test metrics of one stage's ensemble (and its validation
        metrics, with a validation split)."""
        self.ensembles[stage] = ensemble
        self.probs[stage] = {k: ensemble.probs(px) for k, (px, _) in self.probes.items()}
        self.tables["metrics"] += _metric_rows(
            stage, self.probs[stage]["test"], self.setup.data.test_y, self.aggregations
        )
        if "validation" in self.probes:
            y = self.probes["validation"][1]
            self.tables["validation"] += _metric_rows(stage, self.probs[stage]["validation"], y, self.aggregations)

    def train(self) -> None:
        """Train the ensemble on every training point; draw the membership samples."""
        data, layout, config = self.setup.data, self.setup.layout, self.config
        x, y = data.train_x, data.train_y
        self.pool = ShardPool(self.workers, layout, x, y, self.setup.settings, self.checkpoints / "main")
        self.kernels = self.workers.kernel_settings()
        self.trained_stats, self.trained_seconds = self.pool.run(range(layout.num_shards), (), "sisa: train")
        forget, size = self.setup.forget, config.unlearn.membership_size
        test_rows = _sample(len(data.test_y), size, stream_seed(config.seed, Stream.SISA_MEMBERSHIP, 1))
        member_rows = _sample(len(y), len(test_rows), stream_seed(config.seed, Stream.SISA_MEMBERSHIP, 0), forget)
        self.probes = {
            "test": (data.test_x, data.test_y),
            "train": (x[member_rows], y[member_rows]),
            "nonmember": (data.test_x[test_rows], data.test_y[test_rows]),
        }
        if forget:
            self.probes["forget"] = (x[forget], y[forget])
        if self.setup.validation is not None:
            self.probes["validation"] = self.setup.validation
        self._predict("trained", ShardEnsemble(self.setup.settings, self.pool.states(), config.data.eval_batch_size))

    def unlearn(self) -> None:
        """Serve the requests one after another: each retrains the shards it touches from their first stale
        slice, without every point forgotten so far. unlearning.parquet gets a row per request, with the cost of
        the two retraining baselines and the analytic expectation; unlearning_points.parquet a row per point."""
        layout, settings = self.setup.layout, self.setup.settings
        shard_of, slice_of = layout.locate()
        removed: list[int] = []
        cumulative = expected_cumulative = 0.0
        for k, request in enumerate(self.setup.requests):
            removed += request
            first = affected_shards(layout, request)
            desc = f"sisa: unlearn request {k + 1}/{len(self.setup.requests)}"
            stats, wall = self.pool.run(list(first), removed, desc)
            samples = sum(st.samples for st in stats)
            ensemble_samples = _retrain_samples(layout, settings.epochs, removed)
            unsharded_samples = self.config.sisa.epochs * (len(shard_of) - len(removed))
            expected = expected_request_samples(
                settings.epochs, layout.num_shards, len(request), len(shard_of) - len(removed)
            )
            cumulative, expected_cumulative = cumulative + samples, expected_cumulative + expected
            emptied = layout.num_shards - len(_members(layout, removed))
            self.tables["unlearning"].append(
                {
                    "request": k,
                    "points": len(request),
                    "shards_retrained": len(stats),
                    "emptied_shards": emptied,
                    "samples_processed": samples,
                    "shard_seconds": sum(st.seconds for st in stats),
                    "wall_seconds": wall,
                    "ensemble_retrain_samples": ensemble_samples,
                    "unsharded_retrain_samples": unsharded_samples,
                    "speedup_vs_ensemble": ensemble_samples / max(1, samples),
                    "speedup_vs_unsharded": unsharded_samples / max(1, samples),
                    "expected_samples": expected,
                    "expected_speedup_vs_ensemble": expected_speedup(settings.epochs, layout.num_shards, len(request)),
                    "cumulative_samples": cumulative,
                    "expected_cumulative_samples": expected_cumulative,
                }
            )
            by_shard = {st.shard: st for st in stats}
            for index in request:
                st = by_shard[int(shard_of[index])]
                self.tables["unlearning_points"].append(
                    {
                        "request": k,
                        "index": index,
                        "shard": st.shard,
                        "slice": int(slice_of[index]),
                        "first_slice": st.first_stage,
                        "shard_samples": st.samples,
                    }
                )
        members = _members(layout, removed)
        if len(members) < layout.num_shards:
            emptied = sorted(set(range(layout.num_shards)) - set(members))
            self.warnings.append(
                f"the forget set empties shard(s) {emptied}: they leave the ensemble (mean and vote "
                f"over the {len(members)} others)"
            )
        # only now, every affected shard having finished, does the unlearned ensemble replace the trained one
        self._predict(
            "unlearned", ShardEnsemble(settings, self.pool.states(), self.config.data.eval_batch_size, members)
        )

    def retrain_reference(self) -> None:
        """Train a fresh ensemble from scratch without the forget set and compare it with the unlearned one."""
        setup, directory = self.setup, self.checkpoints / "retrained"
        retrained = ShardPool(
            self.workers, setup.layout, setup.data.train_x, setup.data.train_y, setup.settings, directory
        )
        stats, wall = retrained.run(range(setup.layout.num_shards), setup.forget, "sisa: retrain from scratch")
        self.reference_cost = (sum(st.seconds for st in stats), wall)
        reference = ShardEnsemble(
            setup.settings, retrained.states(), self.config.data.eval_batch_size, self.ensembles["unlearned"].members
        )
        shutil.rmtree(directory, ignore_errors=True)
        self._predict("retrained", reference)
        self.tables["exactness"] = _exactness_rows(
            self.ensembles["unlearned"],
            reference,
            self.probs["unlearned"]["test"],
            self.probs["retrained"]["test"],
            self.aggregations,
            self.kernels,
        )

    def _unsharded_jobs(
        self, x: torch.Tensor, y: torch.Tensor, forget: list[int] | np.ndarray, with_baselines: bool
    ) -> dict[str, dict[str, Any]]:
        """The unsharded model retrained on (x, y) minus `forget` and, with baselines, trained on all of (x, y)
        and unlearned approximately: {method: {"state", "samples", "seconds"}}, computed on the shard actors."""
        settings, epochs, u = self.setup.settings, self.config.sisa.epochs, self.config.unlearn
        keep = torch.from_numpy(np.setdiff1d(np.arange(len(y)), np.asarray(forget, dtype=np.int64)))
        lost = torch.from_numpy(np.asarray(forget, dtype=np.int64))
        x_r, y_r, x_f, y_f = ray.put(x[keep]), ray.put(y[keep]), ray.put(x[lost]), ray.put(y[lost])
        jobs = {"retrained": (train_unsharded, settings, epochs, x_r, y_r)}
        if with_baselines:
            jobs["trained"] = (train_unsharded, settings, epochs, ray.put(x), ray.put(y))
        refs = {method: self.workers.call(timed, *job, num_returns=2) for method, job in jobs.items()}
        if with_baselines:
            state = refs["trained"][0]  # the baselines start from it without a trip to the driver
            jobs = {
                "finetune": (finetune, settings, u.baseline_epochs, state, x_r, y_r),
                "neggrad": (neggrad_plus, settings, u.baseline_epochs, u.neggrad_alpha, state, x_r, y_r, x_f, y_f),
                "random_label": (random_label, settings, u.baseline_epochs, state, x_r, y_r, x_f, y_f),
                "scrub": (
                    scrub,
                    settings,
                    u.scrub_epochs,
                    u.scrub_max_epochs,
                    u.scrub_alpha,
                    u.scrub_gamma,
                    u.scrub_temperature,
                    state,
                    x_r,
                    y_r,
                    x_f,
                    y_f,
                ),
            }
            for method in u.baselines:
                refs[method] = self.workers.call(timed, *jobs[method], num_returns=2)
        get = partial(self.workers.get, what=f"the unsharded models ({', '.join(refs)})")
        return {method: {"state": get(state), **get(cost)} for method, (state, cost) in refs.items()}

    def train_unsharded(self) -> None:
        """One unsharded model retrained on the retained data for e epochs (the cost baseline's model, whose
        accuracy beside the ensemble's is the price of sharding) and, with `unlearn.baselines`, one trained on
        everything and unlearned approximately; their test metrics join metrics.parquet (model `unsharded`)."""
        data = self.setup.data
        self.unsharded = self._unsharded_jobs(
            data.train_x, data.train_y, self.setup.forget, bool(self.config.unlearn.baselines)
        )
        for method, result in self.unsharded.items():
            model = ShardEnsemble(self.setup.settings, [result["state"]], self.config.data.eval_batch_size)
            result["probs"] = {k: model.probs(px) for k, (px, _) in self.probes.items()}
            result["diverged"] = not all(torch.isfinite(p).all() for p in result["probs"].values())
            if result["diverged"]:  # its argmax over NaN would score as a model that always says class 0
                self.warnings.append(
                    f"unlearn.baselines: {method} diverged (non-finite outputs), so it has no figures"
                    + DIVERGENCE_HINTS.get(method, "")
                )
                continue
            row = _metric_rows(method, result["probs"]["test"], data.test_y, ["mean"])[0]
            self.tables["metrics"].append({**row, "aggregation": None, "model": "unsharded", "tie_rate": None})

    def membership(self) -> None:
        """membership.parquet: loss-based membership inference of forget and training points vs test points."""
        seed = stream_seed(self.config.seed, Stream.SISA_MEMBERSHIP, 2)
        nonmember = ensemble_losses(self.probs, "nonmember", self.probes)
        for stage in self.probs:
            for members in ("forget", "train"):
                member = ensemble_losses(self.probs, members, self.probes)
                self.tables["membership"].append(
                    membership_row(stage, f"{members}_vs_test", member[stage], nonmember[stage], seed)
                )

    def backdoor(self) -> None:
        """backdoor.parquet: the clean ensemble's ASR (the floor), then train on poisoned data, measure clean
        accuracy and ASR, unlearn exactly the poisoned points (their cost in shards and samples), again."""
        if self.setup.poison is None:
            return
        b, data, setup, aggs = self.config.backdoor, self.setup.data, self.setup, self.aggregations
        trigger = {
            "mean": data.mean,
            "std": data.std,
            "size": b.trigger_size,
            "value": b.trigger_value,
            "position": b.trigger_position,
        }
        x, y = poison_data(
            data.train_x,
            data.train_y,
            setup.poison,
            target=b.target_class,
            mode=b.mode,
            seed=self.config.seed,
            **trigger,
        )
        triggered = stamp(data.test_x, seed=stream_seed(self.config.seed, Stream.BACKDOOR_TRIGGER, 1), **trigger)

        def rows(stage: str, ensemble: ShardEnsemble, shards: int | None, samples: int | None) -> list[dict]:
            clean, attacked = ensemble.probs(data.test_x), ensemble.probs(triggered)
            return [
                {
                    "stage": stage,
                    "aggregation": agg,
                    "mode": b.mode,
                    "poisoned": len(setup.poison),
                    "clean_accuracy": classification_metrics(data.test_y, *combine_shards(clean, agg))["accuracy"],
                    "asr": attack_success_rate(combine_shards(attacked, agg)[0], data.test_y, b.target_class),
                    "shards_retrained": shards,
                    "samples_processed": samples,
                }
                for agg in aggs
            ]

        self.tables["backdoor"] += rows("clean", self.ensembles["trained"], None, None)
        directory = self.checkpoints / "backdoor"
        pool = ShardPool(self.workers, setup.layout, x, y, setup.settings, directory)
        for stage, shards, removed in (
            ("trained", range(setup.layout.num_shards), ()),
            ("unlearned", list(affected_shards(setup.layout, setup.poison)), [int(i) for i in setup.poison]),
        ):
            stats, _ = pool.run(shards, removed, f"sisa: backdoor {stage}")
            ensemble = ShardEnsemble(
                setup.settings, pool.states(), self.config.data.eval_batch_size, _members(setup.layout, list(removed))
            )
            self.tables["backdoor"] += rows(stage, ensemble, len(stats), sum(st.samples for st in stats))
        shutil.rmtree(directory, ignore_errors=True)
        if self.config.unlearn.baselines and setup.forget:  # compared with SISA's forgetting, or not at all
            self.unsharded_backdoor = self._unsharded_jobs(x, y, setup.poison, True)
            for result in self.unsharded_backdoor.values():
                model = ShardEnsemble(setup.settings, [result["state"]], self.config.data.eval_batch_size)
                probs = model.probs(triggered)
                finite = bool(torch.isfinite(probs).all())  # NaN's argmax, class 0, is the default target
                result["asr"] = (
                    attack_success_rate(combine_shards(probs, "mean")[0], data.test_y, b.target_class)
                    if finite
                    else None
                )

    def compare_baselines(self) -> None:
        """baselines.parquet: exact SISA, each approximate method and the unsharded model retrained from scratch
        on cost (samples, seconds), accuracy, forget-set accuracy, forget-vs-test membership AUC and ASR."""
        if not (self.config.unlearn.baselines and self.setup.forget):
            return
        aggregation = main_aggregation(self.aggregations)
        backdoor = {r["stage"]: r for r in self.tables["backdoor"] if r["aggregation"] == aggregation}
        poisoned = self.unsharded_backdoor
        sisa_asr = backdoor.get("unlearned", {}).get("asr"), backdoor.get("trained", {}).get("asr")
        methods = [
            (
                "sisa",
                "ensemble",
                True,
                self.probs["unlearned"],
                False,
                sum(r["samples_processed"] for r in self.tables["unlearning"]),
                sum(r["wall_seconds"] for r in self.tables["unlearning"]),
                sisa_asr,
                backdoor.get("unlearned", {}).get("samples_processed"),
            )
        ]
        for method in [*self.config.unlearn.baselines, "retrained"]:
            result = self.unsharded[method]
            asr = (poisoned[method]["asr"], poisoned["trained"]["asr"]) if poisoned else (None, None)
            methods.append(
                (
                    method,
                    "unsharded",
                    method == "retrained",
                    result["probs"],
                    result["diverged"],
                    result["samples"],
                    result["seconds"],
                    asr,
                    poisoned[method]["samples"] if poisoned else None,
                )
            )
        for method, model, exact, probs, diverged, samples, seconds, asrs, poison_samples in methods:
            row = {
                "method": method,
                "model": model,
                "aggregation": aggregation if model == "ensemble" else None,
                "exact": exact,
                "diverged": diverged,
                "requests": len(self.setup.requests) if model == "ensemble" else 1,
                "samples_processed": samples,
                "seconds": seconds,
            }
            asr_after, asr_before = asrs
            figures = self._baseline_figures(method, probs, aggregation, diverged)
            row |= figures | {"asr_before": asr_before, "asr_after": asr_after, "poison_samples": poison_samples}
            self.tables["baselines"].append(row)
        retrained = next(r for r in self.tables["baselines"] if r["method"] == "retrained")
        for row in self.tables["baselines"]:
            row["val_retrain_gap"] = retrain_gap(row, retrained)

    def _baseline_figures(
        self, method: str, probs: dict[str, torch.Tensor], aggregation: str, diverged: bool
    ) -> dict[str, Any]:
        """A baselines.parquet row's figures of one model's probe probabilities (`MODEL_FIGURES`: test,
        forget-set, retained-sample and validation accuracy, forget-vs-test membership AUC with its interval); all
        null for a diverged model."""
        if diverged:
            return dict.fromkeys(MODEL_FIGURES)
        forget_y, nonmember_y = self.probes["forget"][1], self.probes["nonmember"][1]

        def accuracy(probe: str) -> float | None:  # % of a probe set's points the model classifies right
            if probe not in probs:
                return None
            return 100.0 * float(
                (combine_shards(probs[probe], aggregation)[0] == self.probes[probe][1]).double().mean()
            )

        nonmember = ensemble_loss(probs["nonmember"], nonmember_y).numpy()
        seed = stream_seed(self.config.seed, Stream.SISA_MEMBERSHIP, 2)
        mia = membership_row(
            method, "forget_vs_test", ensemble_loss(probs["forget"], forget_y).numpy(), nonmember, seed
        )
        test = classification_metrics(self.setup.data.test_y, *combine_shards(probs["test"], aggregation))
        values = (
            test["accuracy"],
            accuracy("forget"),
            accuracy("train"),  # the membership sample of training points, drawn from the retained ones
            accuracy("validation"),
            mia["n"],
            mia["auc"],
            mia["auc_low"],
            mia["auc_high"],
        )
        return dict(zip(MODEL_FIGURES, values))

    def report(self) -> None:
        """Write every non-empty table and compose the summary (written once the figures are)."""
        for name, rows in self.tables.items():
            if rows:
                self.run_dir.write_table(f"{name}.parquet", rows)
        self.summary = summary_text(self.config, self.setup, self.tables, self.reference_cost, self.warnings)


def ensemble_losses(
    probs: dict[str, dict[str, torch.Tensor]], probe: str, probe_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, np.ndarray]:
    """{stage: per-sample ensemble loss on one probe set}."""
    return {stage: ensemble_loss(p[probe], probe_sets[probe][1]).numpy() for stage, p in probs.items()}


def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    frame = pd.DataFrame(rows)
    if columns:
        frame = frame[[c for c in columns if c in frame.columns]]
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _title(config: Config) -> str:
    s = config.sisa
    return (
        f"rayfed sisa: {config.data.dataset}, {config.model.name}, S={s.shards}, R={s.slices}, {s.schedule} "
        f"schedule, e={s.epochs}"
    )


def summary_text(
    config: Config,
    setup: SisaSetup,
    tables: dict[str, list[dict]],
    reference_cost: tuple[float, float] | None,
    warnings: list[str],
) -> str:
    """summary.md: what the run shows in sentences (`sisa_findings`), the sample-based speedups against both
    baselines, seconds, the price of sharding, warnings and the tables."""
    s = config.sisa
    lines = [f"# {_title(config)}", ""]
    findings = sisa_findings(tables, len(setup.forget), s.shards)
    if findings:
        draw = (
            f"One seed's run (seed {config.seed}): each figure is a single draw of the layout, forget set, initial "
            "weights and poison; `seeds: n` gives their means with 95% intervals over n runs."
        )
        lines += ["## What this run shows", "", *[f"- {f}" for f in [*findings, draw]], ""]
    requests = tables["unlearning"]
    if requests:
        sisa = sum(r["samples_processed"] for r in requests)
        ensemble = sum(r["ensemble_retrain_samples"] for r in requests)
        unsharded = sum(r["unsharded_retrain_samples"] for r in requests)
        expected = sum(r["expected_samples"] for r in requests)
        lines += [
            f"## Unlearning {len(setup.forget)} points in {len(requests)} request(s): samples processed",
            "",
            f"- SISA: **{sisa:,}** samples (analytic expectation {expected:,.0f})",
            f"- vs retraining the SISA ensemble from scratch after each request: {ensemble:,} samples, "
            f"**{ensemble / max(1, sisa):.2f}x**",
            f"- vs retraining one unsharded model for e={s.epochs} epochs after each request: {unsharded:,} "
            f"samples, **{unsharded / max(1, sisa):.2f}x**",
            f"- seconds: SISA {sum(r['shard_seconds'] for r in requests):.1f} s of shard work (sum over "
            f"shards), {sum(r['wall_seconds'] for r in requests):.1f} s wall (shards in parallel)",
        ]
        if reference_cost:
            lines.append(
                f"- the reference ensemble retrained once from scratch: {reference_cost[0]:.1f} s of shard "
                f"work, {reference_cost[1]:.1f} s wall"
            )
        metrics = {(r["model"], r["stage"], r["aggregation"]): r["accuracy"] for r in tables["metrics"]}
        aggregation = main_aggregation(s.aggregation)
        name = "mean softmax" if aggregation == "mean" else "majority vote"
        if ("unsharded", "retrained", None) in metrics:
            lines.append(
                f"- price of sharding: ensemble ({name}) accuracy "
                f"{metrics[('ensemble', 'unlearned', aggregation)]:.2f}% vs one unsharded model retrained on the "
                f"same data {metrics[('unsharded', 'retrained', None)]:.2f}%"
            )
        lines.append("")
    if warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in warnings], ""]
    titles = {
        "metrics": "Test metrics",
        "validation": "Validation metrics (`data.validation_fraction`: training images held out of every shard, "
        "to choose settings on)",
        "exactness": "Exactness (unlearned vs retrained from scratch)",
        "membership": "Membership inference (n points a side; 95% bootstrap interval of the AUC)",
        "backdoor": "Backdoor (`clean`: the ensemble trained without poison, the floor)",
        "baselines": "Exact SISA vs approximate unlearning of one unsharded model",
        "unlearning": "Requests",
    }
    for name, title in titles.items():
        if tables[name]:
            lines += [f"## {title}", "", "```", _table(tables[name]), "```", ""]
    return "\n".join(lines)
