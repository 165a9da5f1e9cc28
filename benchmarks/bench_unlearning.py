"""SISA unlearning vs retraining the whole ensemble from scratch, side by side in one process (no Ray).

Config: digits (bundled), cnn, S=5 shards, R=10 slices, the default schedule (`distributed`, e=5), batch 64,
SGD lr 0.01 momentum 0.9, one torch thread. Trains the ensemble with a checkpoint per slice, then forgets a
uniform random batch of 10 training points (each affected shard retrained once, from the checkpoint before its
first affected slice) and, as the baselines, retrains all S shards from scratch without those points and trains
one unsharded model for e epochs on the retained data (the paper's baseline). Checks that unlearning and the
ensemble retrain give bit-identical models, and prints samples processed, seconds, the analytic expectation,
the unsharded baseline and, last, `speedup: X.Xx` (seconds of full retraining / seconds of unlearning).

    python benchmarks/bench_unlearning.py [--shards 5] [--slices 10] [--forget 10] [--threads 1] [--seed 0]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rayfed.config import Config
from rayfed.data.datasets import load_dataset
from rayfed.sisa.approximate import train_unsharded
from rayfed.sisa.plan import affected_shards, make_layout, resolve_forget
from rayfed.sisa.schedule import epochs_per_stage, expected_speedup
from rayfed.sisa.train import ShardTrainer, TrainSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=5)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--forget", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sisa = Config().sisa
    data = load_dataset("digits")
    epochs = tuple(epochs_per_stage(sisa.schedule, sisa.epochs, args.slices))
    settings = TrainSettings(
        model="cnn",
        input_shape=data.shape,
        num_classes=data.num_classes,
        epochs=epochs,
        lr=sisa.lr,
        momentum=sisa.momentum,
        batch_size=sisa.batch_size,
        seed=args.seed,
    )
    layout = make_layout(len(data.train_y), args.shards, args.slices, args.seed)
    forget = resolve_forget(args.forget, len(data.train_y), args.seed)
    print(
        f"digits N={len(data.train_y)}, cnn, S={args.shards}, R={args.slices}, schedule={sisa.schedule} "
        f"e={sisa.epochs} {list(epochs)}, forget {args.forget} points, torch threads {args.threads}, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    )

    def trainers(directory: Path) -> list[ShardTrainer]:
        return [
            ShardTrainer(
                s,
                list(layout.slices[s]),
                data.train_x[torch.from_numpy(layout.shard_indices(s))],
                data.train_y[torch.from_numpy(layout.shard_indices(s))],
                settings,
                directory / f"shard{s}",
            )
            for s in range(layout.num_shards)
        ]

    with tempfile.TemporaryDirectory() as tmp:
        sisa_shards, scratch_shards = trainers(Path(tmp) / "sisa"), trainers(Path(tmp) / "scratch")
        for t in sisa_shards:
            t.run()
        first = affected_shards(layout, forget)
        start = time.perf_counter()
        unlearn = [sisa_shards[s].run(forget) for s in first]
        unlearn_seconds = time.perf_counter() - start
        start = time.perf_counter()
        full = [t.run(forget) for t in scratch_shards]
        full_seconds = time.perf_counter() - start
        keep = torch.from_numpy(np.setdiff1d(np.arange(len(data.train_y)), forget))
        start = time.perf_counter()
        _, unsharded_samples = train_unsharded(
            settings, sisa.epochs, data.train_x[keep], data.train_y[keep], torch.device("cpu")
        )
        unsharded_seconds = time.perf_counter() - start
        exact = all(
            torch.equal(a.final_state()[k], b.final_state()[k])
            for a, b in zip(sisa_shards, scratch_shards)
            for k in a.final_state()
        )

    unlearn_samples, full_samples = sum(st.samples for st in unlearn), sum(st.samples for st in full)
    print(f"affected shards (shard: first slice): {first}")
    print(f"expected speedup (analytic, samples): {expected_speedup(epochs, args.shards, args.forget):.2f}x")
    print(
        f"unlearning: {unlearn_samples} samples, {unlearn_seconds:.2f}s; full retraining: {full_samples} samples, "
        f"{full_seconds:.2f}s; samples speedup {full_samples / max(1, unlearn_samples):.2f}x"
    )
    print(
        f"one unsharded model, e={sisa.epochs} epochs on the retained data: {unsharded_samples} samples, "
        f"{unsharded_seconds:.2f}s; samples speedup {unsharded_samples / max(1, unlearn_samples):.2f}x"
    )
    print(f"bit-identical to retraining from scratch: {exact}")
    print(f"speedup: {full_seconds / unlearn_seconds:.1f}x")
    assert exact and np.isfinite(full_seconds)


if __name__ == "__main__":
    main()
