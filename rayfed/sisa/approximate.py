"""Approximate unlearning on one unsharded model: the baselines SISA is compared with (plain torch, no Ray).

- `train_unsharded`: one model of the shards' architecture, e epochs of SGD on (x, y). Trained on the retained
  data it is the reference the approximate methods aim at, and its accuracy beside the ensemble's is the
  price of sharding.
- `finetune`: continue training the model trained on everything, on the retained data D_r only, so that it
  drifts away from the forget set D_f.
- `neggrad_plus` (Kurmanji et al., NeurIPS 2023): per step, minimise alpha L(b_r) - (1 - alpha) L(b_f) for a
  minibatch b_r of D_r and one b_f of D_f (cycled), i.e. descent on the retained and ascent on the forgotten.
- `random_label` (Graves et al., AAAI 2021; the "RL" baseline of Fan et al., SalUn, ICLR 2024): continue training
  the model trained on everything on D_r together with D_f relabelled, each forgotten point to a wrong class
  drawn uniformly, so that what it had learnt of them is overwritten while the retained data hold the rest.
- `scrub` (SCRUB, Kurmanji et al.): a student w_u starts as the trained model w_o (the teacher, frozen) and
  alternates a max-step, ascending d(x; w_u) = KL(p(x; w_o) || p(x; w_u)) over D_f, with a min-step,
  descending alpha d(x_r; w_u) + gamma CE(f(x_r; w_u), y_r) over D_r: it moves away from the teacher on the
  forgotten points and stays with it on the retained.
Each returns the new state dict (on the CPU) and the samples processed (the model's training passes: both
minibatches count for NegGrad+, the relabelled points as well as the retained for random labels, every max- and
min-step batch for SCRUB; its teacher's forward passes do not).
`retrain_gap` measures how far an unlearned model is from the one retrained from scratch, to choose the
methods' settings on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rayfed.models import build_classifier
from rayfed.seeds import Stream, stream_seed
from rayfed.sisa.train import TrainSettings, model_from_state
from rayfed.training import (
    autocast,
    classifier_smallest_batch,
    grad_scaler,
    minibatches,
    on_device,
    running_batchnorm,
    sgd,
    sgd_epochs,
)

TRAIN, FINETUNE, NEGGRAD, SCRUB, RANDOM_LABEL, WRONG_LABELS = 0, 1, 2, 3, 4, 5
"""Parts of the UNSHARDED_TRAINING stream (training and retraining from scratch share part 0: the same
procedure on other data; WRONG_LABELS draws random labels' wrong classes)."""


def _model(settings: TrainSettings, device: torch.device, state: dict[str, Any] | None = None):
    torch.manual_seed(stream_seed(settings.seed, Stream.UNSHARDED_INIT))
    model = build_classifier(settings.model, settings.input_shape, settings.num_classes, settings.pretrained)
    if state is not None:
        model.load_state_dict(state)
    model = on_device(model, device)
    return model, sgd(model.parameters(), device, lr=settings.lr, momentum=settings.momentum)


def _cpu_state(model: nn.Module) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _batches(n: int, settings: TrainSettings, generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """An epoch's minibatches of n samples at the shards' batch size, cut as a classifier's training cuts them."""
    return minibatches(n, settings.batch_size, generator, device, classifier_smallest_batch(settings.batch_size))


def _sgd(
    settings: TrainSettings,
    epochs: int,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    part: int,
    state: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], int]:
    """`epochs` epochs of SGD on (x, y) from `state` (or a fresh model), seeded by its stream part."""
    model, optimizer = _model(settings, device, state)
    samples = sgd_epochs(
        model,
        optimizer,
        x.to(device),
        y.to(device),
        epochs=epochs,
        batch_size=settings.batch_size,
        seed=stream_seed(settings.seed, Stream.UNSHARDED_TRAINING, part),
        augment_pad=settings.augment_pad,
    )
    return _cpu_state(model), samples


def train_unsharded(
    settings: TrainSettings, epochs: int, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> tuple[dict[str, Any], int]:
    """A fresh unsharded model trained `epochs` epochs on (x, y); (state, samples)."""
    return _sgd(settings, epochs, x, y, device, TRAIN)


def finetune(
    settings: TrainSettings,
    epochs: int,
    state: dict[str, Any],
    x_retain: torch.Tensor,
    y_retain: torch.Tensor,
    device: torch.device,
) -> tuple[dict[str, Any], int]:
    """`epochs` epochs of SGD (a fresh optimizer, the shards' lr) on the retained data from `state`."""
    return _sgd(settings, epochs, x_retain, y_retain, device, FINETUNE, state)


def wrong_labels(y: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """A wrong class for each label, uniform over the other num_classes - 1: (y + k) mod C, k uniform in
    1..C-1 (drawn on the CPU from `seed`, so the same on every device)."""
    shift = torch.randint(1, num_classes, y.shape, generator=torch.Generator().manual_seed(seed))
    return (y.cpu() + shift) % num_classes


def random_label(
    settings: TrainSettings,
    epochs: int,
    state: dict[str, Any],
    x_retain: torch.Tensor,
    y_retain: torch.Tensor,
    x_forget: torch.Tensor,
    y_forget: torch.Tensor,
    device: torch.device,
) -> tuple[dict[str, Any], int]:
    """Random labels from `state`: `epochs` epochs of SGD (a fresh optimizer, the shards' lr) on the retained
    data and the forget set together, each forgotten point relabelled once to a wrong class (`wrong_labels`;
    SalUn's code draws any class, which leaves a tenth of CIFAR-10's forgotten points their own label)."""
    seed = stream_seed(settings.seed, Stream.UNSHARDED_TRAINING, WRONG_LABELS)
    relabelled = wrong_labels(y_forget, settings.num_classes, seed)
    x, y = torch.cat([x_retain.cpu(), x_forget.cpu()]), torch.cat([y_retain.cpu(), relabelled])
    return _sgd(settings, epochs, x, y, device, RANDOM_LABEL, state)


def neggrad_plus(
    settings: TrainSettings,
    epochs: int,
    alpha: float,
    state: dict[str, Any],
    x_retain: torch.Tensor,
    y_retain: torch.Tensor,
    x_forget: torch.Tensor,
    y_forget: torch.Tensor,
    device: torch.device,
) -> tuple[dict[str, Any], int]:
    """NegGrad+ from `state`: `epochs` passes over the retained minibatches, each step paired with the next
    minibatch of the (reshuffled when used up) forget set, loss alpha L_r - (1 - alpha) L_f."""
    model, optimizer = _model(settings, device, state)
    seed = stream_seed(settings.seed, Stream.UNSHARDED_TRAINING, NEGGRAD)
    generator = torch.Generator(device=device).manual_seed(seed)
    x_r, y_r, x_f, y_f = (t.to(device) for t in (x_retain, y_retain, x_forget, y_forget))
    scaler = grad_scaler(device)
    model.train()
    forget_batches: list[torch.Tensor] = []
    samples = 0
    for _ in range(epochs):
        for batch in _batches(len(y_r), settings, generator, device):
            if not forget_batches:
                forget_batches = _batches(len(y_f), settings, generator, device)
            forget = forget_batches.pop(0)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                retained_loss = F.cross_entropy(model(x_r[batch]), y_r[batch])
                with running_batchnorm(model, len(forget) == 1):  # a forget set of one point
                    forgotten_loss = F.cross_entropy(model(x_f[forget]), y_f[forget])
                loss = alpha * retained_loss - (1 - alpha) * forgotten_loss
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            samples += len(batch) + len(forget)
    return _cpu_state(model), samples


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """SCRUB's d over a batch: mean_x KL(softmax(t(x)/T) || softmax(s(x)/T)) * T^2 (the T^2 of Hinton et al.'s
    distillation keeps the gradient's scale as T changes)."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2


def scrub_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    y: torch.Tensor,
    maximise: bool,
    alpha: float,
    gamma: float,
    temperature: float,
) -> torch.Tensor:
    """One SCRUB step's loss: -d on a forget batch (the max-step ascends d), alpha d + gamma CE on a retained
    batch (the min-step), d = `distillation_kl` at `temperature`."""
    divergence = distillation_kl(student_logits, teacher_logits, temperature)  # d(x; w_u)
    if maximise:
        return -divergence
    return alpha * divergence + gamma * F.cross_entropy(student_logits.float(), y)


def scrub(
    settings: TrainSettings,
    epochs: int,
    max_epochs: int,
    alpha: float,
    gamma: float,
    temperature: float,
    state: dict[str, Any],
    x_retain: torch.Tensor,
    y_retain: torch.Tensor,
    x_forget: torch.Tensor,
    y_forget: torch.Tensor,
    device: torch.device,
) -> tuple[dict[str, Any], int]:
    """SCRUB from `state` (Kurmanji et al., NeurIPS 2023, Algorithm 1): `epochs` epochs, the first `max_epochs`
    of them opening with a max-step pass over the forget set, each then a min-step pass over the retained data;
    one optimizer (a fresh SGD, the shards' lr and momentum) takes both kinds of step. The teacher is the model
    at `state`, in eval mode."""
    student, optimizer = _model(settings, device, state)
    teacher = on_device(model_from_state(settings, state), device).requires_grad_(False)  # eval mode
    generator = torch.Generator(device=device).manual_seed(stream_seed(settings.seed, Stream.UNSHARDED_TRAINING, SCRUB))
    x_r, y_r, x_f, y_f = (t.to(device) for t in (x_retain, y_retain, x_forget, y_forget))
    scaler = grad_scaler(device)
    student.train()

    def step(x: torch.Tensor, y: torch.Tensor, maximise: bool) -> int:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            with torch.no_grad():
                teacher_logits = teacher(x)
            with running_batchnorm(student, len(y) == 1):  # a forget set of one point
                logits = student(x)
            loss = scrub_loss(logits, teacher_logits, y, maximise, alpha, gamma, temperature)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return len(y)

    samples = 0
    for epoch in range(epochs):
        if epoch < max_epochs:  # max-step: away from the teacher on D_f
            samples += sum(step(x_f[b], y_f[b], True) for b in _batches(len(y_f), settings, generator, device))
        # min-step: with the teacher, and right, on D_r
        samples += sum(step(x_r[b], y_r[b], False) for b in _batches(len(y_r), settings, generator, device))
    return _cpu_state(student), samples


def timed(job: Callable, *args: Any, device: torch.device) -> tuple[dict[str, Any], dict[str, float]]:
    """(state, {"samples", "seconds"}) of job(*args, device=device), a function of this module."""
    start = time.perf_counter()
    state, samples = job(*args, device=device)
    return state, {"samples": samples, "seconds": time.perf_counter() - start}


RETRAIN_GAP_FIGURES = ("forget_accuracy", "retained_accuracy", "val_accuracy")
"""The accuracies (%) `retrain_gap` compares: on the forget set, on a sample of the retained training points,
on the validation split."""


def retrain_gap(figures: dict[str, float | None], retrained: dict[str, float | None]) -> float | None:
    """Mean absolute difference, in points, between a model's and the retrained-from-scratch model's accuracies
    on the forget set, the retained points and the validation split (`RETRAIN_GAP_FIGURES`): 0 for a model that
    behaves as if it had never seen the forget set, as the retrained one has not. It is the "Avg. Gap" of Jia et
    al. (NeurIPS 2023) and Fan et al. (SalUn, ICLR 2024) with validation accuracy in place of test accuracy and
    without their membership-attack term (whose non-members here are test points), so a setting chosen on it
    never saw a test image. None where a figure is missing (no validation split, a diverged model)."""
    pairs = [(figures.get(k), retrained.get(k)) for k in RETRAIN_GAP_FIGURES]
    if any(a is None or b is None for a, b in pairs):
        return None
    return sum(abs(a - b) for a, b in pairs) / len(pairs)  # (1/3) sum_f |f(w_u) - f(w_retrained)|
