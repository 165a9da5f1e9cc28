"""One SISA training of S shards x R slices: the notebook's sequential `sisa_training` against rayfed's ShardPool
(one ShardActor per shard on a local Ray, a checkpoint after every slice), in this process, one after the other,
--repeats times. Both train the same layout (rayfed's seeded shards and slices), the same model, schedule
(default: the notebook's `union`, e epochs on every union of slices), batch size and learning rate.
Timings exclude Ray and actor start-up (ShardWorkers waits for its actors, ShardPool for their data). Last line:
`speedup: X.Xx` (rayfed vs notebook).

    python benchmarks/bench_sisa_train.py                                   # digits, S=5, R=5, 5 epochs, CPU
    python benchmarks/bench_sisa_train.py --set sisa.schedule=distributed   # the paper's schedule in both
    python benchmarks/bench_sisa_train.py --device cuda --set data.dataset=cifar10 --set model.name=resnet18 \\
        --set sisa.shards=10 --set sisa.slices=10 --set sisa.lr=0.001 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--skip", action="append", default=[], choices=["notebook", "rayfed"])
    return p.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.device == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from notebook_loop import AugmentedTensorDataset, sisa_training  # noqa: E402

from rayfed.config import load_config  # noqa: E402
from rayfed.data.datasets import black_level, load_dataset  # noqa: E402
from rayfed.sisa.plan import make_layout  # noqa: E402
from rayfed.sisa.schedule import epochs_per_stage  # noqa: E402
from rayfed.sisa.train import TrainSettings  # noqa: E402

DEFAULTS = [
    "data.dataset=digits",
    "model.name=cnn",
    "sisa.shards=5",
    "sisa.slices=5",
    "sisa.epochs=5",
    "sisa.schedule=union",
    "sisa.batch_size=64",
]


def main() -> None:
    args = ARGS
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    config = load_config(None, DEFAULTS + list(args.overrides))
    d, s = config.data, config.sisa
    data = load_dataset(d.dataset, d.root, d.download, d.augment)
    layout = make_layout(len(data.train_y), s.shards, s.slices, config.seed)
    epochs = epochs_per_stage(s.schedule, s.epochs, s.slices)
    pad = black_level(data.mean, data.std) if data.augment else None
    settings = TrainSettings(
        model=config.model.name,
        input_shape=data.shape,
        num_classes=data.num_classes,
        epochs=tuple(epochs),
        lr=s.lr,
        momentum=s.momentum,
        batch_size=s.batch_size,
        seed=config.seed,
        augment_pad=pad,
    )
    samples = sum(e * sum(len(p) for p in shard[: r + 1]) for shard in layout.slices for r, e in enumerate(epochs))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"device {device}{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}"
    )
    print(
        f"config: {d.dataset} {config.model.name}, N={len(data.train_y)}, S={s.shards}, R={s.slices}, "
        f"schedule {s.schedule} {epochs}, batch {s.batch_size}, lr {s.lr}; {samples} samples per training"
    )

    trainset = AugmentedTensorDataset(data.train_x, data.train_y, pad, config.seed)
    times = {"notebook": [], "rayfed": []}
    started = False
    if "rayfed" not in args.skip:
        from rayfed.engine.runtime import init_ray

        started = init_ray(config.resources.address)
    for rep in range(args.repeats):
        if "notebook" not in args.skip:
            start = time.perf_counter()
            sisa_training(trainset, [list(shard) for shard in layout.slices], epochs, config, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times["notebook"].append(time.perf_counter() - start)
            print(f"[{rep + 1}] notebook sisa_training: {times['notebook'][-1]:.2f} s")
        if "rayfed" not in args.skip:
            from rayfed.engine.shard import ShardPool, ShardWorkers

            with tempfile.TemporaryDirectory(prefix="bench_sisa_") as tmp:
                workers = ShardWorkers(s.shards, config.resources)
                try:
                    pool = ShardPool(workers, layout, data.train_x, data.train_y, settings, Path(tmp))
                    _, seconds = pool.run(range(s.shards), [], "train")
                finally:
                    workers.close()
            times["rayfed"].append(seconds)
            print(f"[{rep + 1}] rayfed ShardPool:       {seconds:.2f} s")
    if started:
        import ray

        ray.shutdown()
    med = {k: statistics.median(v) for k, v in times.items() if v}
    print()
    for key, label in (("notebook", "notebook sisa_training (sequential)"), ("rayfed", "rayfed ShardPool (parallel)")):
        if key in med:
            print(f"{label:<38} median {med[key]:8.2f} s  ({samples / med[key]:.0f} samples/s)")
    if len(med) == 2:
        print(f"speedup: {med['notebook'] / med['rayfed']:.1f}x")


if __name__ == "__main__":
    main()
