"""Phase 3 scoring of K hypothetical models: the notebook's deep-copy loop vs rayfed's folded template.

Both score the same K = Theta_old + dw_i models on the same probes in this one process, alternating,
and the median of --repeats timings is compared. The last line is `speedup: X.Xx`.

    python benchmarks/bench_scoring.py                       # digits shape (1x8x8), K=20, 2000 probes
    python benchmarks/bench_scoring.py --shape 3,32,32 --probes 500
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch

from rayfed.fl.gan_audit import FoldedEvaluator, hypothetical_biases
from rayfed.models import build_classifier
from rayfed.models.layers import use_reference_ops


def notebook_loop(
    global_model: torch.nn.Module, updates: list[dict], x: torch.Tensor, x_prime: torch.Tensor
) -> list[float]:
    """The notebook's Phase 3: per client, deep-copy Theta_old, add dw_i, load, compute_bias (two forwards)."""
    scores = []
    for upd in updates:
        hyp = copy.deepcopy(global_model)
        sd = hyp.state_dict()
        for k in sd:
            if k in upd:
                sd[k] = sd[k] + upd[k]
        hyp.load_state_dict(sd)
        hyp.eval()
        with torch.no_grad():
            scores.append(torch.abs(hyp(x) - hyp(x_prime)).sum(dim=1).mean().item())
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="1,8,8", help="C,H,W of the probes")
    parser.add_argument("--model", default="cnn", choices=["cnn", "resnet18"])
    parser.add_argument("--clients", type=int, default=20, help="K hypothetical models")
    parser.add_argument("--probes", type=int, default=2000, help="|P|")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))

    torch.manual_seed(0)
    model = build_classifier(args.model, shape, 10).eval()
    for module in model.modules():  # trained-looking BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    state = copy.deepcopy(model.state_dict())
    updates = [
        {k: (0.01 * torch.randn_like(v) if v.is_floating_point() else torch.ones_like(v)) for k, v in state.items()}
        for _ in range(args.clients)
    ]
    x = torch.randn(args.probes, *shape)
    x_prime = x + 0.1 * torch.randn_like(x)

    evaluator = FoldedEvaluator(model)
    notebook_model = use_reference_ops(copy.deepcopy(model))  # the notebook's plain layers
    loop_times, ours_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        reference = notebook_loop(notebook_model, updates, x, x_prime)
        loop_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        _, ours = hypothetical_biases(evaluator, state, updates, x, x_prime)
        ours_times.append(time.perf_counter() - start)
    worst = max(abs(a - b) / abs(a) for a, b in zip(reference, ours))
    loop_s, ours_s = statistics.median(loop_times), statistics.median(ours_times)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )
    print(f"config: model={args.model} shape={shape} K={args.clients} probes={args.probes} repeats={args.repeats}")
    print(f"notebook deep-copy loop: median {loop_s:.3f} s  {[round(t, 3) for t in loop_times]}")
    print(f"rayfed folded scoring:   median {ours_s:.3f} s  {[round(t, 3) for t in ours_times]}")
    print(f"largest relative difference of B_i: {worst:.2e}")
    print(f"speedup: {loop_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
