"""The held-out audit of a final model: does a method leave the model less sensitive to counterfactual
perturbations than FedAvg does, as judged by an auditor that none of the methods trained against?

One auditor per seed, the same for every method: a fresh audit GAN (the specification's G, D and L_G, with the
`audit.*` settings) is trained against the frozen final model on the held-out test split, then its learned
perturbations delta(z) (|delta| <= audit.delta_scale in GAN space, x' = clamp(x + delta, -1, 1)) are applied to
every real test image. On those real pairs (x, x'):
    B         = (1/N) sum_i |Theta(x_i) - Theta(x'_i)|_1        (the specification's bias formula)
    flip rate = (1/N) sum_i [argmax Theta(x_i) != argmax Theta(x'_i)]
Measured on real images rather than on the generator's own probes, whose images drift off the data. The flip
rate is what the verdicts test: B is an L1 distance of logits, so it also grows with their scale (logits ten
times larger, the same decisions: ten times the B). tests/test_held_out_audit.py plants a bias and checks that
the flip rate finds it.

With a validation split (`data.validation_fraction`), a second auditor, with seeds of its own, does the same on
the validation images: its flip rate is the figure a sweep may choose settings on without the test images
taking part in the choice (`val_flip_rate`). It trains for at least as many GAN steps as the test auditor
(`matched_epochs`): on digits' 135 validation images the test auditor's 5 epochs would be 15 steps to its 35, a
weaker auditor whose flip rates are not the test figure's twin (in a gamma sweep, 0-3% against 5-11%).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from rayfed.config import AuditConfig
from rayfed.fl.gan_audit import AuditGan, PixelSpace, pair_bias, train_fairness_gan
from rayfed.fl.state import StateDict
from rayfed.seeds import Stream, stream_seed
from rayfed.training import autocast, steps_per_epoch

INIT, TRAINING, PERTURBATIONS = 0, 1, 2
"""Parts of the HELD_OUT_AUDIT stream, for the auditor of the test split."""
SPLIT_PARTS = {"test": 0, "validation": 3}
"""Where each split's auditor's parts start in the HELD_OUT_AUDIT stream (validation: 3, 4, 5)."""


@dataclass
class HeldOutAudit:
    """What the auditor found on the held-out images."""

    bias: float
    """B over the real pairs (L1 over classes of the logit difference, mean over images)."""
    flip_rate: float
    """Share of held-out images whose predicted class the perturbation changes."""
    images: int
    """Held-out images measured."""
    seconds: float
    """Wall time of the audit (training the auditor and measuring)."""


def matched_epochs(epochs: int, reference_images: int, images: int, batch_size: int) -> int:
    """Epochs over `images` that give an auditor at least as many GAN steps as `epochs` over `reference_images`
    (the validation auditor's, matched to the test auditor's)."""
    steps = epochs * steps_per_epoch(reference_images, batch_size)
    return math.ceil(steps / steps_per_epoch(images, batch_size))


@torch.no_grad()
def perturb(gan: AuditGan, x: torch.Tensor, space: PixelSpace, seed: int) -> torch.Tensor:
    """x' for real images x (classifier space): each image gets the perturbation delta(z) of G's delta network
    for its own z (drawn with `seed`), added in GAN space and clamped to [-1, 1], as G adds it to its own x."""
    G = gan.G.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    z = torch.randn(len(x), G.latent_dim, generator=generator, device=x.device)
    delta = G.delta_net(z).view(-1, *G.img_shape).float() * G.delta_scale
    space = space.on(x.device)
    return space.to_classifier(torch.clamp(space.to_gan(x) + delta, -1, 1))


@torch.no_grad()
def sensitivity(model: nn.Module, x: torch.Tensor, x_prime: torch.Tensor, chunk: int = 512) -> tuple[float, float]:
    """(B, flip rate) of `model` over the pairs (x, x'): mean L1 distance of their logits, and the share of pairs
    whose predicted classes differ."""
    model.eval()
    gap = torch.zeros((), dtype=torch.float64, device=x.device)
    flips = torch.zeros((), dtype=torch.float64, device=x.device)
    with autocast(x.device):
        for start in range(0, len(x), chunk):
            logits, logits_prime = model(x[start : start + chunk]), model(x_prime[start : start + chunk])
            gap += pair_bias(logits, logits_prime, "logits")  # sum_i |Theta(x_i) - Theta(x'_i)|_1
            flips += pair_bias(logits, logits_prime, "decisions")  # sum_i 1[argmax differs]
    return float(gap) / len(x), float(flips) / len(x)


def held_out_audit(
    classifier: nn.Module,
    state: StateDict,
    x: torch.Tensor,
    y: torch.Tensor,
    audit: AuditConfig,
    space: PixelSpace,
    num_classes: int,
    *,
    epochs: int,
    batch_size: int,
    run_seed: int,
    split: str = "test",
    gan: AuditGan | None = None,
) -> HeldOutAudit:
    """Audit the model with weights `state` on the held-out images (x, y) of `split` (test or validation): train
    a fresh auditor GAN against it for `epochs` epochs, perturb every image with it and measure B and the flip
    rate. Every draw comes from the HELD_OUT_AUDIT stream of `run_seed` (the split's parts), so every method of a
    seed meets the same auditor. `gan`, one already built for these shapes, is re-initialised in place and used
    instead of a new one."""
    started = time.perf_counter()

    def draw_seed(part: int) -> int:
        return stream_seed(run_seed, Stream.HELD_OUT_AUDIT, SPLIT_PARTS[split] + part)

    init_seed = draw_seed(INIT)
    if gan is None:
        shape = tuple(x.shape[1:])
        gan = AuditGan.create(
            audit.latent_dim, num_classes, shape, audit.delta_scale, audit.gan_lr, x.device, init_seed
        )
    else:
        gan.restart(init_seed)
    classifier.load_state_dict(state)
    train_fairness_gan(
        gan,
        classifier,
        x,
        y,
        epochs=epochs,
        lambda1=audit.lambda1,
        lambda2=audit.lambda2,
        batch_size=batch_size,
        space=space,
        seed=draw_seed(TRAINING),
    )
    x_prime = perturb(gan, x, space, draw_seed(PERTURBATIONS))
    bias, flip_rate = sensitivity(classifier, x, x_prime, audit.score_chunk)
    return HeldOutAudit(bias, flip_rate, len(x), time.perf_counter() - started)
