"""Scale: 1,000 clients, 100 per round, on a local Ray: peak memory of all processes and seconds per round.

Bundled digits, iid partition (most clients hold 1-2 images; rayfed trains a 1-image client's BatchNorm on its
running statistics), resources.clients_per_actor=250 (4 client actors + the audit server: each actor process
costs ~1 GB of torch, whatever it hosts), rayfed's default epochs. Runs FedAvg and Fed-AuditGAN (200 probes)
one after the other on the same engine. A thread samples every 0.5 s the summed
RSS of this driver and all its descendants (Ray's GCS, raylet, workers and actors) and reports the peak
(RSS counts pages shared between processes, e.g. torch's libraries and the object store, once per process:
an upper bound; the proportional set size, PSS, splits them and is reported beside it).
Round 1 of each method is a warm-up and untimed. Aims: peak under 8 GiB, under 30 s per round.
Last line: `seconds_per_round: X.X` (the slower method's median).

    python benchmarks/bench_scale.py                 # 3 rounds per method
    python benchmarks/bench_scale.py --rounds 2      # smoke test
    python benchmarks/bench_scale.py --set resources.clients_per_actor=100   # 10 client actors
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time

DEFAULTS = [
    "data.dataset=digits",
    "data.num_clients=1000",
    "fl.clients_per_round=100",
    "data.partition=iid",
    "resources.clients_per_actor=250",
    "audit.n_probes=200",
    "audit.gamma=2.0",
    "tracking.wandb=disabled",
]


def _pss(pid: int) -> int:
    """Proportional set size in bytes (shared pages split among their users; Linux only, else 0)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class MemorySampler:
    """Peak of the summed RSS of a process and all its descendants, sampled every `interval` s."""

    def __init__(self, interval: float = 0.5):
        import psutil
        import ray  # noqa: F401  (Ray ships psutil in its thirdparty_files, put on sys.path by this import)

        self.psutil, self.root = psutil, psutil.Process()
        self.interval, self.peak, self.peak_procs, self.peak_pss = interval, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> int:
        total, count, pss = 0, 0, 0
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
                count += 1
                pss += _pss(proc.pid)
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, OSError):
                pass
        if total > self.peak:
            self.peak, self.peak_procs = total, count
        self.peak_pss = max(self.peak_pss, pss)
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rounds", type=int, default=3, help="rounds per method, the first untimed (default 3)")
    p.add_argument("--methods", default="fedavg,fedauditgan")
    p.add_argument("--device", choices=["auto", "cpu"], default="auto")
    args = p.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""

    import ray
    import torch

    from rayfed.config import load_config
    from rayfed.engine.fl_engine import FederatedEngine
    from rayfed.engine.runtime import init_ray
    from rayfed.fl.setup import build_federation, initial_model_state
    from rayfed.fl.state import to_numpy
    from rayfed.fl.strategies import REGISTRY

    config = load_config(None, DEFAULTS + list(args.overrides))
    gamma = REGISTRY["fedauditgan"].parameter_values(config)[0]
    with MemorySampler() as memory:
        setup_start = time.perf_counter()
        federation = build_federation(config)
        sizes = federation.num_samples
        started = init_ray(config.resources.address)
        engine = FederatedEngine(config, federation)
        ray.get([a.pid.remote() for a in [*engine.actors, *engine.servers]])  # wait for every actor
        setup = time.perf_counter() - setup_start
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        )
        print(
            f"config: {config.data.dataset}, {config.data.num_clients} clients ({config.data.partition}, sizes "
            f"{min(sizes)}-{max(sizes)}, {sum(s == 1 for s in sizes)} with one image, {sum(s == 0 for s in sizes)} "
            f"empty), {config.fl.clients_per_round} per round, {len(engine.actors)} client actors of "
            f"{config.resources.clients_per_actor}, local_epochs {config.fl.local_epochs}, gan_epochs "
            f"{config.audit.gan_epochs}, n_probes {config.audit.n_probes}"
        )
        print(f"setup (data, Ray, actors): {setup:.1f} s, memory now {memory.sample() / 2**30:.2f} GiB")
        medians = {}
        try:
            for method in args.methods.split(","):
                strategy = REGISTRY[method]
                run = strategy() if strategy.parameter is None else strategy(gamma)
                initial = to_numpy(initial_model_state(config, federation, config.seed))
                state_ref, gan_state, times = ray.put(initial), None, []
                for rnd in range(1, args.rounds + 1):
                    start = time.perf_counter()
                    result = engine.round(rnd, run, config.seed, state_ref, gan_state)
                    elapsed = time.perf_counter() - start
                    state_ref, gan_state = result.state_ref, result.gan_state
                    row = result.round_row
                    print(
                        f"{method} round {rnd}: {elapsed:.2f} s{' (warm-up)' if rnd == 1 else ''}, accuracy "
                        f"{row['accuracy']:.1f}, participants {row['participants']}, memory "
                        f"{memory.sample() / 2**30:.2f} GiB"
                    )
                    if rnd > 1 or args.rounds == 1:
                        times.append(elapsed)
                medians[method] = statistics.median(times)
        finally:
            engine.shutdown()
            if started:
                ray.shutdown()
    print()
    for method, seconds in medians.items():
        print(f"{method:<12} median {seconds:.2f} s/round")
    print(
        f"peak memory (RSS, driver + {memory.peak_procs - 1} descendant processes): {memory.peak / 2**30:.2f} GiB "
        f"(aim < 8 GiB); peak PSS (shared pages counted once) {memory.peak_pss / 2**30:.2f} GiB"
    )
    print(f"seconds_per_round: {max(medians.values()):.1f}")


if __name__ == "__main__":
    main()
