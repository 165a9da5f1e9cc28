"""`rayfed sisa`: train a SISA ensemble on Ray, measure it, unlearn the forget set, verify exactness against an
ensemble retrained from scratch, and audit with membership inference and a backdoor.

Run directory: config.yaml, layout.parquet, forget.txt, metrics.parquet, unlearning.parquet, exactness.parquet,
membership.parquet, backdoor.parquet, the PNG figures of rayfed.plots.sisa, and checkpoints/main/shard{s}/slice{k}.pt
(the trained-then-unlearned ensemble, what later unlearning starts from). The audit-only ensembles (`retrained`
from scratch, `backdoor`) checkpoint beside it while they train and are deleted once measured.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch

from rayfed.audits.backdoor import attack_success_rate, choose_poison, poison_data, stamp
from rayfed.audits.membership import membership_row
from rayfed.config import Config, build_config, first_difference, read_yaml_mapping
from rayfed.data.datasets import ImageData, black_level, load_dataset
from rayfed.engine.runtime import init_ray, log
from rayfed.engine.shard import ShardPool
from rayfed.errors import UserError
from rayfed.plots.sisa import plot_sisa
from rayfed.results import RunDirectory
from rayfed.seeds import Stream, stream_seed
from rayfed.sisa.ensemble import classification_metrics, combine_shards, ensemble_loss, shard_probs
from rayfed.sisa.plan import Layout, affected_shards, make_layout, resolve_forget
from rayfed.sisa.schedule import epochs_per_stage, expected_speedup
from rayfed.sisa.train import TrainSettings, model_from_state, warn_untrained_slices


@dataclass
class SisaSetup:
    """Everything decided (and checked) before any file is written."""

    data: ImageData
    layout: Layout
    forget: list[int]
    poison: np.ndarray | None
    settings: TrainSettings


def make_setup(config: Config) -> SisaSetup:
    """Load the data and check every input (UserError naming the key) before anything runs."""
    d, s, b = config.data, config.sisa, config.backdoor
    data = load_dataset(d.dataset, d.root, d.download, d.augment)
    n = len(data.train_y)
    layout = make_layout(n, s.shards, s.slices, config.seed)
    forget = resolve_forget(config.unlearn.forget, n, config.seed)
    poison = (choose_poison(data.train_y, target=b.target_class, num_classes=data.num_classes, mode=b.mode,
                            poison=b.poison, seed=config.seed) if b.enabled else None)
    epochs = tuple(epochs_per_stage(s.schedule, s.epochs, s.slices))
    warn_untrained_slices(epochs)
    settings = TrainSettings(
        model=config.model.name, input_shape=data.shape, num_classes=data.num_classes, epochs=epochs, lr=s.lr,
        momentum=s.momentum, batch_size=s.batch_size, seed=config.seed, pretrained=config.model.pretrained,
        augment_pad=black_level(data.mean, data.std) if data.augment else None)
    return SisaSetup(data, layout, forget, poison, settings)


class ShardEnsemble:
    """The S shard models that predictions use; replaced as a whole (`switch`) once every shard is final."""

    def __init__(self, settings: TrainSettings, states: list[dict[str, Any]], batch_size: int):
        self.settings, self.batch_size = settings, batch_size
        self.switch(states)

    def switch(self, states: list[dict[str, Any]]) -> None:
        self.states = states
        self.models = [model_from_state(self.settings, st) for st in states]

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """S x n x C shard softmaxes."""
        return shard_probs(self.models, x, self.batch_size)


def _metric_rows(stage: str, probs: torch.Tensor, y: torch.Tensor, aggregations: list[str]) -> list[dict]:
    return [{"stage": stage, "aggregation": agg, **classification_metrics(y, *combine_shards(probs, agg))}
            for agg in aggregations]


def _exactness_rows(a: ShardEnsemble, b: ShardEnsemble, probs_a: torch.Tensor, probs_b: torch.Tensor,
                    aggregations: list[str]) -> list[dict]:
    weights_equal = all(torch.equal(sa[k], sb[k]) for sa, sb in zip(a.states, b.states) for k in sa)
    rows = []
    for agg in aggregations:
        (pred_a, score_a), (pred_b, score_b) = combine_shards(probs_a, agg), combine_shards(probs_b, agg)
        rows.append({"aggregation": agg, "predictions_equal": bool(torch.equal(pred_a, pred_b)),
                     "max_probability_difference": float((score_a - score_b).abs().max()),
                     "weights_equal": weights_equal, "test_points": len(pred_a)})
    return rows


def _sample(n: int, size: int, seed: int, exclude: list[int] = ()) -> np.ndarray:
    pool = np.setdiff1d(np.arange(n), np.asarray(exclude, dtype=np.int64))
    return np.sort(np.random.default_rng(seed).choice(pool, size=min(size, len(pool)), replace=False))


def run_sisa(config: Config, run_dir: RunDirectory) -> None:
    """The whole `rayfed sisa` experiment (see the module docstring)."""
    setup = make_setup(config)
    run_dir.write_config(config)
    run_dir.write_table("layout.parquet", setup.layout.rows())
    run_dir.write_text("forget.txt", "".join(f"{i}\n" for i in setup.forget))
    started = init_ray(config.resources.address)
    try:
        tables = SisaExperiment(config, run_dir, setup).run()
    finally:
        if started:
            ray.shutdown()
    plot_sisa(run_dir.path, **tables)
    _print_summary(tables)


def resume_sisa(path: str, config_file: str | None, overrides: list[str]) -> None:
    """`rayfed sisa --resume RUN_DIR`: run a killed `rayfed sisa` again in its own directory with its own config.

    Every slice checkpoint records the exact indices it has seen, and a shard resumes after its last checkpoint
    that matches what it is asked for, so the resumed run recomputes only what is missing and ends with the same
    ensembles, metrics and audits. The cost columns of unlearning.parquet count the resumed process's work.
    Nothing is written before the directory and the config are checked.
    """
    directory = Path(path).resolve()
    if not (directory / "config.yaml").is_file() or not (directory / "layout.parquet").is_file():
        raise UserError(f"--resume {directory} is not a `rayfed sisa` run directory (no config.yaml + layout.parquet)")
    saved = read_yaml_mapping(directory / "config.yaml")
    config = build_config([saved] + ([read_yaml_mapping(config_file)] if config_file else []), overrides)
    changed = first_difference(config.to_dict(), build_config([saved]).to_dict())
    if changed:
        raise UserError(f"--resume: {changed} differs from the run's config (a sisa run resumes with its own)")
    log.info("resuming %s", directory)
    run_sisa(config, RunDirectory(directory))


class SisaExperiment:
    """One `rayfed sisa` run, step by step: `train`, `unlearn`, `retrain_reference`, `measure` (metrics and
    exactness), `membership`, `backdoor`, `report`. Each step adds rows to `tables`."""

    def __init__(self, config: Config, run_dir: RunDirectory, setup: SisaSetup):
        self.config, self.run_dir, self.setup = config, run_dir, setup
        self.aggregations = config.sisa.aggregation
        self.checkpoints = run_dir.file("checkpoints")
        self.tables: dict[str, list[dict]] = {k: [] for k in ("metrics", "unlearning", "exactness", "membership",
                                                              "backdoor")}
        self.probes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.probs: dict[str, dict[str, torch.Tensor]] = {}
        """{stage: {probe set: S x n x C shard softmaxes}}"""
        self.ensembles: dict[str, ShardEnsemble] = {}

    def run(self) -> dict[str, list[dict]]:
        """Every step, then the tables written to the run directory."""
        self.train()
        if self.setup.forget:
            self.unlearn()
            if self.config.unlearn.verify:
                self.retrain_reference()
            self.record_costs()
            self.membership()
        self.backdoor()
        self.report()
        return self.tables

    def _predict(self, stage: str, ensemble: ShardEnsemble) -> None:
        """Probabilities of every probe set and the test metrics of one stage's ensemble."""
        self.ensembles[stage] = ensemble
        self.probs[stage] = {k: ensemble.probs(px) for k, (px, _) in self.probes.items()}
        self.tables["metrics"] += _metric_rows(stage, self.probs[stage]["test"], self.setup.data.test_y,
                                               self.aggregations)

    def train(self) -> None:
        """Train the ensemble on every training point; draw the membership samples."""
        data, layout, config = self.setup.data, self.setup.layout, self.config
        x, y = data.train_x, data.train_y
        self.pool = ShardPool(layout, x, y, self.setup.settings, self.checkpoints / "main", config.resources)
        self.trained_stats, self.trained_seconds = self.pool.run(range(layout.num_shards), (), "sisa: train")
        forget = self.setup.forget
        member_rows = _sample(len(y), config.unlearn.membership_size,
                              stream_seed(config.seed, Stream.SISA_MEMBERSHIP, 0), forget)
        test_rows = _sample(len(data.test_y), config.unlearn.membership_size,
                            stream_seed(config.seed, Stream.SISA_MEMBERSHIP, 1))
        self.probes = {"test": (data.test_x, data.test_y), "forget": (x[forget], y[forget]),
                       "train": (x[member_rows], y[member_rows]),
                       "nonmember": (data.test_x[test_rows], data.test_y[test_rows])}
        self._predict("trained", ShardEnsemble(self.setup.settings, self.pool.states(),
                                               config.data.eval_batch_size))
        if not self.setup.forget:
            self.pool.close()

    def unlearn(self) -> None:
        """Forget the forget set (one batch request): retrain each affected shard from its first stale slice."""
        first = affected_shards(self.setup.layout, self.setup.forget)
        self.unlearn_stats, self.unlearn_seconds = self.pool.run(list(first), self.setup.forget, "sisa: unlearn")
        ensemble = self.ensembles["trained"]
        ensemble.switch(self.pool.states())  # only now: every affected shard has finished
        self.pool.close()  # frees its resources for the reference ensemble's actors
        self._predict("unlearned", ensemble)
        self.full_samples, self.full_seconds = sum(st.samples for st in self.trained_stats), self.trained_seconds

    def retrain_reference(self) -> None:
        """Train a fresh ensemble from scratch without the forget set and compare it with the unlearned one."""
        setup, directory = self.setup, self.checkpoints / "retrained"
        retrained = ShardPool(setup.layout, setup.data.train_x, setup.data.train_y, setup.settings, directory,
                              self.config.resources)
        stats, self.full_seconds = retrained.run(range(setup.layout.num_shards), setup.forget,
                                                 "sisa: retrain from scratch")
        self.full_samples = sum(st.samples for st in stats)
        reference = ShardEnsemble(setup.settings, retrained.states(), self.config.data.eval_batch_size)
        retrained.close()
        shutil.rmtree(directory, ignore_errors=True)
        self._predict("retrained", reference)
        self.tables["exactness"] = _exactness_rows(self.ensembles["unlearned"], reference,
                                                   self.probs["unlearned"]["test"], self.probs["retrained"]["test"],
                                                   self.aggregations)

    def record_costs(self) -> None:
        """unlearning.parquet: what the request cost against retraining everything."""
        layout, forget = self.setup.layout, self.setup.forget
        by_shard = {st.shard: st for st in self.unlearn_stats}
        request_samples = sum(st.samples for st in self.unlearn_stats)
        speedup = expected_speedup(self.setup.settings.epochs, layout.num_shards, len(forget))
        shard_of, _ = layout.locate()
        for index in forget:
            st = by_shard[int(shard_of[index])]
            self.tables["unlearning"].append({
                "request": 0, "index": index, "shard": st.shard, "first_slice": st.first_stage,
                "samples_processed": st.samples, "seconds": st.seconds,
                "request_samples": request_samples, "request_seconds": self.unlearn_seconds,
                "full_samples": self.full_samples, "full_seconds": self.full_seconds,
                "speedup_samples": self.full_samples / max(1, request_samples),
                "speedup_seconds": self.full_seconds / self.unlearn_seconds, "expected_speedup": speedup})

    def membership(self) -> None:
        """membership.parquet: loss-based membership inference of forget and training points vs test points."""
        nonmember = ensemble_losses(self.probs, "nonmember", self.probes)
        for stage in self.probs:
            for members in ("forget", "train"):
                member = ensemble_losses(self.probs, members, self.probes)
                self.tables["membership"].append(membership_row(stage, f"{members}_vs_test", member[stage],
                                                                nonmember[stage],
                                                                stream_seed(self.config.seed, Stream.SISA_MEMBERSHIP, 2)))

    def backdoor(self) -> None:
        """backdoor.parquet: train on poisoned data, measure clean accuracy and ASR, unlearn exactly the poisoned
        points, again."""
        if self.setup.poison is None:
            return
        directory = self.checkpoints / "backdoor"
        self.tables["backdoor"] = _backdoor(self.config, self.setup, directory, self.aggregations)
        shutil.rmtree(directory, ignore_errors=True)

    def report(self) -> None:
        """Write every non-empty table."""
        for name, rows in self.tables.items():
            if rows:
                self.run_dir.write_table(f"{name}.parquet", rows)


def ensemble_losses(probs: dict[str, dict[str, torch.Tensor]], probe: str,
                    probe_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, np.ndarray]:
    """{stage: per-sample ensemble loss on one probe set}."""
    return {stage: ensemble_loss(p[probe], probe_sets[probe][1]).numpy() for stage, p in probs.items()}


def _backdoor(config: Config, setup: SisaSetup, directory, aggs: list[str]) -> list[dict]:
    """Train on poisoned data, measure clean accuracy and ASR, unlearn exactly the poisoned points, again."""
    b, data = config.backdoor, setup.data
    trigger = {"mean": data.mean, "std": data.std, "size": b.trigger_size, "value": b.trigger_value,
               "position": b.trigger_position}
    x, y = poison_data(data.train_x, data.train_y, setup.poison, target=b.target_class, mode=b.mode,
                       seed=config.seed, **trigger)
    triggered = stamp(data.test_x, seed=stream_seed(config.seed, Stream.BACKDOOR_TRIGGER, 1), **trigger)
    pool = ShardPool(setup.layout, x, y, setup.settings, directory, config.resources)
    rows = []
    for stage, shards, removed in (("trained", range(setup.layout.num_shards), ()),
                                   ("unlearned", list(affected_shards(setup.layout, setup.poison)), setup.poison)):
        pool.run(shards, removed, f"sisa: backdoor {stage}")
        ensemble = ShardEnsemble(setup.settings, pool.states(), config.data.eval_batch_size)
        clean, attacked = ensemble.probs(data.test_x), ensemble.probs(triggered)
        for agg in aggs:
            rows.append({"stage": stage, "aggregation": agg, "mode": b.mode, "poisoned": len(setup.poison),
                         "clean_accuracy": classification_metrics(data.test_y, *combine_shards(clean, agg))["accuracy"],
                         "asr": attack_success_rate(combine_shards(attacked, agg)[0], data.test_y, b.target_class)})
    pool.close()
    return rows


def _print_summary(tables: dict[str, list[dict]]) -> None:
    pd.set_option("display.width", 160)
    titles = {"metrics": "test metrics", "exactness": "exactness (unlearned vs retrained from scratch)",
              "membership": "membership inference", "backdoor": "backdoor"}
    for name, title in titles.items():
        if tables[name]:
            print(f"\n{title}:\n{pd.DataFrame(tables[name]).to_string(index=False, float_format='%.4g')}")
    if tables["unlearning"]:
        r = tables["unlearning"][0]
        shards = sorted({row["shard"] for row in tables["unlearning"]})
        print(f"\nunlearning {len(tables['unlearning'])} points: shards {shards}, "
              f"{r['request_samples']} samples in {r['request_seconds']:.1f}s vs retraining everything "
              f"{r['full_samples']} samples in {r['full_seconds']:.1f}s; speedup {r['speedup_samples']:.2f}x in "
              f"samples, {r['speedup_seconds']:.2f}x in time (expected {r['expected_speedup']:.2f}x)")
    log.info("sisa: done")
