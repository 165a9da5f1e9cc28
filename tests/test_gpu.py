"""On a GPU (`pytest -m gpu`; skipped without CUDA): reduced-precision training and scoring against fp32,
the local step and the GAN phase without a host sync, the GAN step on the device, fractional actors on the real
GPU, SISA bit-exact in deterministic mode."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pandas as pd
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
SHAPE = (3, 32, 32)


def _batch(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_local_training_with_autocast_follows_fp32():
    """One epoch of SGD in the GPU's reduced precision (channels-last, fused SGD, draws on the device) moves the
    weights the way fp32 on the CPU does (cosine similarity of dw > 0.95; bf16/fp16 rounding and other random
    draws, not a different computation)."""
    from rayfed.fl.local import local_update
    from rayfed.models import build_classifier
    from rayfed.training import on_device

    x, y = _batch()
    torch.manual_seed(0)
    model = build_classifier("cnn", SHAPE, 10)
    deltas = {}
    for device in ("cpu", "cuda"):
        m = on_device(build_classifier("cnn", SHAPE, 10), torch.device(device))
        m.load_state_dict(model.state_dict())
        deltas[device] = local_update(
            m, x.to(device), y.to(device), epochs=1, lr=0.01, momentum=0.9, weight_decay=1e-4, batch_size=64, seed=1
        )
    flat = {
        d: torch.cat([v.float().flatten().cpu() for k, v in deltas[d].items() if v.is_floating_point()]) for d in deltas
    }
    assert torch.nn.functional.cosine_similarity(flat["cpu"], flat["cuda"], dim=0) > 0.95


def _runs_without_host_sync(run: Callable[[int], object]) -> None:
    """run(seed=0) as a warm-up (cuDNN's algorithm choices, optimizer state, allocator pools), then run(seed=1)
    under torch's sync debug mode, which makes any host sync an error."""
    run(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run(1)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_local_step_never_waits_for_the_gpu():
    """Phase 1's minibatch SGD on a GPU (batch order and augmentation drawn on the device, channels-last, fused
    SGD, autocast) queues its kernels without one host sync: torch's sync debug mode makes any an error."""
    from rayfed.data import black_level
    from rayfed.models import build_classifier
    from rayfed.training import on_device, sgd, sgd_epochs

    cuda = torch.device("cuda")
    x, y = (t.to(cuda) for t in _batch())
    pad = black_level((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).to(cuda)  # the actors hold it on the device
    model = on_device(build_classifier("cnn", SHAPE, 10), cuda)
    optimizer = sgd(model.parameters(), cuda, lr=0.01, momentum=0.9, weight_decay=5e-4)
    _runs_without_host_sync(
        lambda seed: sgd_epochs(model, optimizer, x, y, epochs=1, batch_size=64, seed=seed, augment_pad=pad)
    )
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_gan_phase_never_waits_for_the_gpu():
    """Phase 2's eager G-and-D steps on a GPU (noise, labels, batch order drawn on the device; normalisation
    constants put there once; fused Adam; autocast) queue their kernels without one host sync."""
    from rayfed.fl.gan_audit import AuditGan, PixelSpace, freeze, train_fairness_gan
    from rayfed.models import CNN
    from rayfed.training import on_device

    cuda = torch.device("cuda")
    space = PixelSpace((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.manual_seed(0)
    classifier = freeze(on_device(CNN(SHAPE, 10), cuda))  # as the audit server holds it
    x, y = (t.to(cuda) for t in _batch(512))
    gan = AuditGan.create(128, 10, SHAPE, 0.1, 2e-4, cuda, seed=0)
    train = dict(epochs=1, lambda1=1.0, lambda2=1.0, batch_size=128, space=space)
    _runs_without_host_sync(lambda seed: train_fairness_gan(gan, classifier, x, y, seed=seed, **train))
    assert all(torch.isfinite(p).all() for p in gan.G.parameters())


def test_gan_step_on_the_device_raises_the_prediction_gap():
    from rayfed.fl.gan_audit import AuditGan, PixelSpace, compute_bias, freeze, generate_probes, train_fairness_gan
    from rayfed.models import CNN

    cuda = torch.device("cuda")
    space = PixelSpace((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.manual_seed(0)
    classifier = freeze(CNN(SHAPE, 10).to(cuda))
    x, y = (t.to(cuda) for t in _batch(512))
    gan = AuditGan.create(128, 10, SHAPE, 0.1, 2e-4, cuda, seed=0)
    before = compute_bias(classifier, *generate_probes(gan.G, 512, space, 5, cuda))
    train_fairness_gan(gan, classifier, x, y, epochs=5, lambda1=0.0, lambda2=0.0, batch_size=128, space=space, seed=1)
    after = compute_bias(classifier, *generate_probes(gan.G, 512, space, 5, cuda))
    assert all(torch.isfinite(p).all() for p in gan.G.parameters()) and after > before


def test_folded_scoring_in_reduced_precision_matches_fp32():
    from rayfed.fl.gan_audit import FoldedEvaluator, compute_bias, hypothetical_biases
    from rayfed.models import build_classifier

    torch.manual_seed(0)
    model = build_classifier("resnet18", SHAPE, 10).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    updates = [
        {k: 0.01 * torch.randn_like(v) if v.is_floating_point() else torch.zeros_like(v) for k, v in state.items()}
        for _ in range(3)
    ]
    x, _ = _batch(128)
    x_prime = x + 0.1 * torch.randn_like(x)
    cuda = torch.device("cuda")
    evaluator = FoldedEvaluator(model.to(cuda))
    base, biases = hypothetical_biases(
        evaluator,
        {k: v.to(cuda) for k, v in state.items()},
        [{k: v.to(cuda) for k, v in u.items()} for u in updates],
        x.to(cuda),
        x_prime.to(cuda),
        chunk=64,
    )
    reference = compute_bias(model.cpu().float(), x, x_prime)
    assert base == pytest.approx(reference, rel=2e-2)
    assert len(biases) == 3
    # audit.score=decisions counts whole pairs: bf16 rounding may reorder a pair's two nearest logits, no more
    decisions = evaluator.bias({k: v.to(cuda) for k, v in state.items()}, x.to(cuda), x_prime.to(cuda), 64, "decisions")
    assert decisions == pytest.approx(compute_bias(model, x, x_prime, score="decisions"), abs=2 / 128)


def test_compiled_gan_step_with_cuda_graphs_follows_the_eager_step():
    """audit.gan_step=compiled on a GPU (CUDA graphs, reduce-overhead) against the eager step, both in the GPU's
    reduced precision, from the same pair over two epochs of train_audit: the probes' B_base agree to 5%
    relative (bf16 rounding through Adam, not a different computation), and a second round on the kept pair
    replays the captured graphs without recompiling."""
    from rayfed.config import AuditConfig
    from rayfed.fl.gan_audit import PixelSpace, compute_bias
    from rayfed.fl.round import draw_probes, train_audit
    from rayfed.models import CNN

    cuda = torch.device("cuda")
    space = PixelSpace((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.manual_seed(0)
    classifier = CNN(SHAPE, 10).to(cuda)
    state = {k: v.clone() for k, v in classifier.state_dict().items()}
    x, y = (t.to(cuda) for t in _batch(1024))
    biases = {}
    for step in ("eager", "compiled"):
        audit = AuditConfig(gan_epochs=2, gan_batch_size=512, gan_step=step)
        args = (classifier, state, x, y, audit, space, 10, SHAPE)
        gan = train_audit(*args, run_seed=3, round_index=1)
        probes = draw_probes(gan, 1024, space, run_seed=3, round_index=1)
        biases[step] = compute_bias(classifier, probes.x, probes.x_prime)
        if step == "compiled":
            with torch.compiler.set_stance("fail_on_recompile"):
                train_audit(*args, run_seed=3, round_index=2, gan=gan)
    assert biases["compiled"] == pytest.approx(biases["eager"], rel=0.05)


def test_fractional_actors_share_the_real_gpu(ray_session):
    @ray_session.remote(num_gpus=0.25, num_cpus=0)
    def device_of_actor_process() -> str:
        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"

    names = ray_session.get([device_of_actor_process.remote() for _ in range(4)])
    assert all(name != "cpu" for name in names)


def test_sisa_is_bit_exact_on_the_gpu_in_deterministic_mode(tmp_path):
    out = tmp_path / "sisa"
    sets = ["sisa.shards=2", "sisa.slices=2", "sisa.epochs=2", "unlearn.forget=5", "backdoor.enabled=false"]
    result = subprocess.run(
        [sys.executable, "-m", "rayfed", "sisa", "--out", str(out), *[a for s in sets for a in ("--set", s)]],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    exactness = pd.read_parquet(out / "exactness.parquet")
    assert exactness["device"].str.startswith("cuda").all() and exactness["deterministic"].all()
    assert exactness["weights_equal"].all()
