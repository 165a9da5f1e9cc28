"""Round time: the notebook's own Fed-AuditGAN loop against rayfed, side by side, on CPU or a GPU.

In this one process, one after the other, --repeats times:
  (a) the notebook loop (benchmarks/notebook_loop.py), single process;
  (b) rayfed strict: FederatedEngine on a local Ray, fedauditgan, audit.warm_start=false (fresh GAN each round);
  (c) rayfed warm start: audit.warm_start=true, audit.gan_epochs_warm epochs after the first round.
Each runs --rounds rounds; the first is a warm-up (Ray and actor start-up, allocator, cuDNN autotuning) and is
not timed. Reported: the median seconds per timed round of each, the ratios, and the warm-start fidelity:
Spearman's rho between the S_i of (b) and (c) per round, where (c) is fed (b)'s global weights every round
(so both score the same updates of the same Theta_old; (c) only carries its own G and D). Last line:
`speedup: X.Xx` (strict vs notebook).

    python benchmarks/bench_round.py                                  # CPU, digits, 10 clients
    python benchmarks/bench_round.py --profile                        # + per-phase breakdown
    python benchmarks/bench_round.py --preset notebook --device cuda  # one GPU, CIFAR-10, the notebook's settings
    python benchmarks/bench_round.py --set data.num_clients=4 --set audit.gan_epochs=1 --rounds 2 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import sys

PRESETS = {
    # The notebook's settings scaled down to the bundled digits (no download) for a 2-core CPU.
    "digits": [
        "data.dataset=digits",
        "data.num_clients=10",
        "data.partition=extreme",
        "fl.local_epochs=3",
        "data.batch_size=16",
        "audit.gan_epochs=10",
        "audit.n_probes=1000",
        "audit.gamma=2.0",
        "audit.gan_epochs_warm=1",
    ],
    # The notebook's own: CIFAR-10, 20 clients, batch 512, GAN 20 epochs, 2000 probes, gamma 2.
    "notebook": [
        "data.dataset=cifar10",
        "data.num_clients=20",
        "data.partition=extreme",
        "fl.local_epochs=3",
        "data.batch_size=512",
        "data.eval_batch_size=1024",
        "audit.gan_epochs=20",
        "audit.n_probes=2000",
        "audit.gamma=2.0",
        "audit.gan_batch_size=512",
        "audit.gan_epochs_warm=1",
    ],
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="digits")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="rayfed config override (dotted.key=value), applied after the preset",
    )
    p.add_argument("--rounds", type=int, default=4, help="rounds per run, the first untimed (default 4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto = cuda when available; cpu hides the GPUs from torch and Ray",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers of the notebook loop (default: the notebook's, 4 on GPU, 0 on CPU)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="per-phase breakdown of the notebook loop and of rayfed's functions run in-process",
    )
    p.add_argument("--skip", action="append", default=[], choices=["notebook", "strict", "warm"])
    return p.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.device == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch and Ray look

import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from notebook_loop import NotebookFedAuditGan, PhaseTimer  # noqa: E402

from rayfed.config import Config, load_config  # noqa: E402
from rayfed.fl.gan_audit import FoldedEvaluator  # noqa: E402
from rayfed.fl.metrics import accuracy  # noqa: E402
from rayfed.fl.round import (  # noqa: E402
    LocalTraining,
    SharedImages,
    audit_evidence,
    client_update,
    draw_probes,  # noqa: E402
    evaluate_clients,
    score_and_aggregate,
    train_audit,
)
from rayfed.fl.setup import ClientData, Federation, build_federation, initial_model_state, select_clients  # noqa: E402
from rayfed.fl.state import to_numpy, to_torch  # noqa: E402
from rayfed.fl.strategies import Strategy  # noqa: E402
from rayfed.fl.strategies.fedauditgan import FedAuditGan  # noqa: E402
from rayfed.models import build_classifier  # noqa: E402
from rayfed.training import on_device  # noqa: E402

# ------------------------------------------------------------------------------------------ GPU busy


class GpuBusy:
    """Samples the GPU's utilisation (percent of time a kernel ran) every `interval` s in a thread:
    torch.cuda.utilization (pynvml) when it works, else nvidia-smi; nothing on CPU."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.samples, self._stop = interval, [], threading.Event()
        self.source = None
        if torch.cuda.is_available():
            try:
                torch.cuda.utilization()
                self.source = "nvml"
            except Exception:
                self.source = "nvidia-smi" if shutil.which("nvidia-smi") else None
        self._thread = None

    def _read(self) -> float | None:
        if self.source == "nvml":
            return float(torch.cuda.utilization())
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.split()
        return float(out[0]) if out else None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                value = self._read()
            except Exception:
                value = None
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> GpuBusy:
        if self.source:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


# ----------------------------------------------------------------------------- rayfed, in-process


class RayfedInProcess:
    """rayfed's round, in this process, through the same plain functions the actors wrap (rayfed.fl.round:
    client_update, train_audit, draw_probes, score_and_aggregate, evaluate_clients), with the state through
    numpy as through the object store, the clients with resources.torch_threads threads, the server with
    resources.server_threads or every core: the per-phase cost of rayfed's work without Ray's parallelism."""

    def __init__(self, config: Config, federation: Federation, device: torch.device):
        self.config, self.federation, self.device = config, federation, device
        d, fl = federation.data, config.fl
        self.model = on_device(build_classifier(config.model.name, d.shape, d.num_classes), device)
        self.server_model = on_device(build_classifier(config.model.name, d.shape, d.num_classes), device)
        self.evaluator = FoldedEvaluator(self.server_model)
        self.training = LocalTraining(
            fl.local_epochs, fl.lr, fl.momentum, fl.weight_decay, config.data.batch_size, config.data.eval_batch_size
        )
        self.clients = [
            ClientData(c.client_id, c.x.to(device), c.y.to(device), c.test_index) for c in federation.clients
        ]
        audit = federation.split.audit
        self.audit_x, self.audit_y = d.train_x[audit].to(device), d.train_y[audit].to(device)
        self.test_x, self.test_y = d.test_x.to(device), d.test_y.to(device)
        self.test_images = SharedImages(self.test_x, self.test_y, np.arange(len(d.test_y)))
        self.pad = None if federation.augment_pad is None else federation.augment_pad.to(device)
        self.gan = None  # as the audit server: one pair, re-initialised in place each round

    def round(
        self, round_index: int, state: dict, run: Strategy, timer: PhaseTimer, gan_state: dict | None = None
    ) -> tuple[dict, dict]:
        c, a, fl, dev, seed = self.config, self.config.audit, self.config.fl, self.device, self.config.seed
        d = self.federation.data
        threads = torch.get_num_threads()
        selected = select_clients(c.data.num_clients, fl.clients_per_round, fl.client_fraction, seed, round_index)
        torch.set_num_threads(c.resources.torch_threads)
        with timer.phase("local training"):
            theta = to_torch(state, dev)
            results = []
            for cid in selected:
                result = client_update(
                    self.model,
                    self.clients[cid],
                    theta,
                    self.training,
                    run_seed=seed,
                    round_index=round_index,
                    augment_pad=self.pad,
                )
                result.delta = to_torch(to_numpy(result.delta), dev)  # as through the object store
                results.append(result)
        torch.set_num_threads(c.resources.server_threads or os.cpu_count() or 1)
        out: dict = {"clients": selected, "updates": [r.delta for r in results]}
        evidence = None
        if run.needs_audit:
            with timer.phase("GAN training"):
                gan = train_audit(
                    self.server_model,
                    theta,
                    self.audit_x,
                    self.audit_y,
                    a,
                    self.federation.space,
                    d.num_classes,
                    d.shape,
                    run_seed=seed,
                    round_index=round_index,
                    gan_state=gan_state,
                    gan=self.gan,
                )
                self.gan = gan
            with timer.phase("probe generation"):
                probes = draw_probes(gan, a.n_probes, self.federation.space, run_seed=seed, round_index=round_index)
            evidence = audit_evidence(self.evaluator, probes, dev, a.score_chunk)
            out["gan_state"] = gan.state_dict() if a.warm_start else None
        with timer.phase("scoring and aggregation"):
            buffers = frozenset(name for name, _ in self.server_model.named_buffers())
            outcome = score_and_aggregate(run, theta, results, evidence, buffers)
            new_state = to_numpy(outcome.state)
        out.update(bias=outcome.bias_base, B_list=outcome.biases, S_list=outcome.scores, alphas=outcome.weights)
        with timer.phase("evaluation"):
            self.server_model.load_state_dict(outcome.state)
            out["accuracy"] = accuracy(self.server_model, self.test_x, self.test_y, c.data.eval_batch_size)
            torch.set_num_threads(c.resources.torch_threads)
            evaluations = evaluate_clients(
                self.model,
                to_torch(new_state, dev),
                self.clients,
                self.test_images,
                eval_batch_size=c.data.eval_batch_size,
                augment_pad=self.pad,
                run_seed=seed,
                round_index=round_index,
            )
            out["client_accs"] = [(e.train_accuracy, e.test_accuracy) for e in evaluations]
        torch.set_num_threads(threads)
        return out, new_state


# -------------------------------------------------------------------------------------------- runs


def run_notebook(
    config: Config,
    federation: Federation,
    device: torch.device,
    rounds: int,
    gamma: float,
    workers: int | None,
    profile: bool,
) -> tuple[list[float], PhaseTimer, float | None]:
    loop = NotebookFedAuditGan(config, federation, device, workers)
    timer, times = PhaseTimer(device, sync=profile), []
    with GpuBusy() as busy:
        for rnd in range(1, rounds + 1):
            if rnd == 2:
                busy.samples.clear()
            start = time.perf_counter()
            loop.round(rnd, "fedauditgan", gamma, timer if rnd > 1 else PhaseTimer(device, sync=profile))
            if device.type == "cuda":
                torch.cuda.synchronize()
            if rnd > 1:
                times.append(time.perf_counter() - start)
    return times, timer, busy.mean


def run_rayfed(
    config: Config, federation: Federation, rounds: int, gamma: float, feed_states: list | None = None
) -> tuple[list[float], list[list[float]], list, float | None]:
    """(seconds of each timed round, S_i per round, the global state after each round (refs), GPU busy %).
    With `feed_states`, round r starts from feed_states[r - 1] (another run's state) instead of its own."""
    import ray

    from rayfed.engine.fl_engine import FederatedEngine

    engine = FederatedEngine(config, federation)
    run = FedAuditGan(gamma)
    state_ref = ray.put(to_numpy(initial_model_state(config, federation, config.seed)))
    times, scores, states, gan_state = [], [], [state_ref], None
    try:
        with GpuBusy() as busy:
            for rnd in range(1, rounds + 1):
                if rnd == 2:
                    busy.samples.clear()
                if feed_states is not None:
                    state_ref = feed_states[rnd - 1]
                start = time.perf_counter()
                result = engine.round(rnd, run, config.seed, state_ref, gan_state)
                ray.wait([result.state_ref], fetch_local=False)
                elapsed = time.perf_counter() - start
                if rnd > 1:
                    times.append(elapsed)
                state_ref, gan_state = result.state_ref, result.gan_state
                states.append(state_ref)
                scores.append(
                    [
                        r["score"]
                        for r in sorted(result.client_rows, key=lambda r: r["client"])
                        if r["score"] is not None
                    ]
                )
    finally:
        engine.shutdown()
    return times, scores, states, busy.mean


def with_overrides(config: Config, overrides: list[str]) -> Config:
    from rayfed.config import build_config

    return build_config([config.to_dict()], overrides)


def spearman_per_round(a: list[list[float]], b: list[list[float]]) -> list[float]:
    from scipy.stats import spearmanr

    return [float(spearmanr(x, y).statistic) for x, y in zip(a, b)]


def print_profile(title: str, timer: PhaseTimer, rounds: int) -> None:
    total = sum(timer.seconds.values())
    print(f"  {title}: {total / rounds:.3f} s/round in phases")
    for name in timer.seconds:
        s = timer.seconds[name] / rounds
        print(f"    {name:<23} {s:8.3f} s  {100 * s / max(total / rounds, 1e-12):5.1f}%")


def main() -> None:
    args = ARGS
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and device.type != "cuda":
        sys.exit("--device cuda: torch sees no GPU")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the notebook
    config = load_config(None, PRESETS[args.preset] + list(args.overrides) + ["tracking.wandb=disabled"])
    gamma = FedAuditGan.parameter_values(config)[0]
    strict = with_overrides(config, ["audit.warm_start=false"])
    warm = with_overrides(config, ["audit.warm_start=true"])
    federation = build_federation(config)
    if args.rounds < 2:
        sys.exit("--rounds must be >= 2 (the first round is an untimed warm-up)")
    timed = args.rounds - 1
    d, fl, a = config.data, config.fl, config.audit
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"device {device}{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}"
    )
    print(
        f"config: {d.dataset} {config.model.name}, {d.num_clients} clients ({d.partition}, sizes "
        f"{min(federation.num_samples)}-{max(federation.num_samples)}), clients/round {fl.clients_per_round}, "
        f"local_epochs {fl.local_epochs}, batch {d.batch_size}, gan_epochs {a.gan_epochs} (warm "
        f"{a.gan_epochs_warm}), n_probes {a.n_probes}, gamma {gamma:g}, audit split {len(federation.split.audit)}, "
        f"resources.clients_per_actor {config.resources.clients_per_actor}"
    )
    print(f"rounds: {args.rounds} per run (first untimed), repeats {args.repeats}")

    started_ray = False
    if not {"strict", "warm"} <= set(args.skip):
        from rayfed.engine.runtime import init_ray

        started_ray = init_ray(config.resources.address)
    results = {"notebook": [], "strict": [], "warm": []}
    busy = {"notebook": [], "strict": [], "warm": []}
    nb_timer, rhos = None, []
    for rep in range(args.repeats):
        if "notebook" not in args.skip:
            times, nb_timer, gpu = run_notebook(
                config, federation, device, args.rounds, gamma, args.workers, args.profile
            )
            results["notebook"] += times
            busy["notebook"].append(gpu)
            print(f"[{rep + 1}] notebook loop: {[round(t, 3) for t in times]} s")
        strict_scores = strict_states = None
        if "strict" not in args.skip:
            times, strict_scores, strict_states, gpu = run_rayfed(strict, federation, args.rounds, gamma)
            results["strict"] += times
            busy["strict"].append(gpu)
            print(f"[{rep + 1}] rayfed strict: {[round(t, 3) for t in times]} s")
        if "warm" not in args.skip:
            times, warm_scores, _, gpu = run_rayfed(warm, federation, args.rounds, gamma, strict_states)
            results["warm"] += times
            busy["warm"].append(gpu)
            print(
                f"[{rep + 1}] rayfed warm start: {[round(t, 3) for t in times]} s"
                + ("" if strict_states else " (own trajectory: strict skipped)")
            )
            if strict_scores is not None and not rhos:
                rhos = spearman_per_round(strict_scores[1:], warm_scores[1:])  # round 1: both fresh, identical

    med = {k: statistics.median(v) for k, v in results.items() if v}
    print()
    names = {
        "notebook": "notebook loop",
        "strict": "rayfed strict (fresh GAN)",
        "warm": f"rayfed warm start ({a.gan_epochs_warm} GAN epoch/round)",
    }
    for key, seconds in med.items():
        gpu = [g for g in busy[key] if g is not None]
        extra = f"  GPU busy {np.mean(gpu):.0f}%" if gpu else ""
        print(f"{names[key]:<40} median {seconds:8.3f} s/round over {len(results[key])} rounds{extra}")
    if "notebook" in med and "warm" in med:
        print(f"warm start vs notebook: {med['notebook'] / med['warm']:.2f}x")
    if "strict" in med and "warm" in med:
        print(f"warm start vs strict:   {med['strict'] / med['warm']:.2f}x")
    if rhos:
        print(
            f"warm-start fidelity: Spearman rho of S_i vs strict, rounds 2..{args.rounds}: "
            f"mean {np.nanmean(rhos):.3f}, min {np.nanmin(rhos):.3f}  {[round(r, 3) for r in rhos]}"
        )

    if args.profile:
        print("\nprofile (seconds per timed round; CUDA synchronised at phase boundaries)")
        if nb_timer is not None:
            print_profile("notebook loop", nb_timer, timed)
        for label, cfg in (("rayfed strict, in-process", strict), ("rayfed warm start, in-process", warm)):
            inproc = RayfedInProcess(cfg, federation, device)
            initial = initial_model_state(cfg, federation, cfg.seed)
            timer, state, gan_state = PhaseTimer(device), to_numpy(initial), None
            for rnd in range(1, args.rounds + 1):
                out, state = inproc.round(
                    rnd, state, FedAuditGan(gamma), timer if rnd > 1 else PhaseTimer(device), gan_state
                )
                gan_state = out.get("gan_state")
            print_profile(label, timer, timed)
        print(
            "  (rayfed in-process: clients serial with resources.torch_threads threads each; on Ray they run "
            "in parallel, one actor per client group)"
        )

    if started_ray:
        import ray

        ray.shutdown()
    if "notebook" in med and "strict" in med:
        print(f"speedup: {med['notebook'] / med['strict']:.1f}x")


if __name__ == "__main__":
    main()
