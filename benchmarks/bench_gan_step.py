"""Phase 2, the audit GAN's training: eager G and D steps against compiled ones (audit.gan_step), side by side.

In this one process, alternating, --rounds rounds of `train_audit` per path on the preset's audit split
against the same classifier (the preset's initial model), each path with one AuditGan kept across rounds and
re-initialised in place, as an audit server keeps it. The first round of each is reported apart (it pays
torch.compile's compilation, and cuDNN's autotuning on a GPU) and not timed. Reported: that first round, the
median seconds of the timed rounds, and a last line `speedup: X.Xx` (eager / compiled).

    python benchmarks/bench_gan_step.py                                  # CPU, digits
    python benchmarks/bench_gan_step.py --preset notebook --device cuda  # one GPU, CIFAR-10, the notebook's GAN
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_round import PRESETS  # noqa: E402

from rayfed.config import load_config  # noqa: E402
from rayfed.fl.gan_audit import AuditGan  # noqa: E402
from rayfed.fl.round import train_audit  # noqa: E402
from rayfed.fl.setup import build_federation, initial_model_state  # noqa: E402
from rayfed.models import build_classifier  # noqa: E402
from rayfed.training import on_device  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="digits")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rounds", type=int, default=4, help="rounds per path, the first untimed (default 4)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.rounds < 2:
        sys.exit("--rounds must be >= 2 (the first round is untimed)")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and device.type != "cuda":
        sys.exit("--device cuda: torch sees no GPU")
    config = load_config(None, PRESETS[args.preset] + list(args.overrides) + ["tracking.wandb=disabled"])
    federation = build_federation(config)
    d, audit_rows = federation.data, federation.split.audit
    audit_x, audit_y = d.train_x[audit_rows].to(device), d.train_y[audit_rows].to(device)
    theta = {k: v.to(device) for k, v in initial_model_state(config, federation, config.seed).items()}
    paths = ("eager", "compiled")  # the values of audit.gan_step
    configs = {name: dataclasses.replace(config.audit, gan_step=name) for name in paths}
    architecture = (config.model.name, d.shape, d.num_classes)
    classifiers = {name: on_device(build_classifier(*architecture), device) for name in paths}
    gans: dict[str, AuditGan | None] = dict.fromkeys(paths)
    seconds: dict[str, list[float]] = {name: [] for name in paths}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    machine = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"{args.preset}: audit split {len(audit_y)} x {tuple(d.shape)}, GAN batch {config.audit.gan_batch_size}, "
        f"{config.audit.gan_epochs} epochs; {device} ({machine}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for round_index in range(1, args.rounds + 1):
        for name in paths:
            sync()
            start = time.perf_counter()
            gans[name] = train_audit(
                classifiers[name],
                theta,
                audit_x,
                audit_y,
                configs[name],
                federation.space,
                d.num_classes,
                d.shape,
                run_seed=config.seed,
                round_index=round_index,
                gan=gans[name],
            )
            sync()
            seconds[name].append(time.perf_counter() - start)
        print(f"round {round_index}: " + ", ".join(f"{n} {seconds[n][-1]:.2f} s" for n in paths), flush=True)
    median = {name: statistics.median(s[1:]) for name, s in seconds.items()}
    for name in paths:
        print(f"{name:>8}: first round {seconds[name][0]:.1f} s, then median {median[name]:.3f} s per GAN phase")
    print(f"speedup: {median['eager'] / median['compiled']:.2f}x")


if __name__ == "__main__":
    main()
