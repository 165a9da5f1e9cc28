"""Approximate unlearning on one unsharded model: the baselines SISA is compared with (plain torch, no Ray).

- `train_unsharded`: one model of the shards' architecture, e epochs of SGD on (x, y). Trained on the retained
  data it is the reference the approximate methods aim at, and its accuracy beside the ensemble's is the
  price of sharding.
- `finetune`: continue training the model trained on everything, on the retained data D_r only, so that it
  drifts away from the forget set D_f.
- `neggrad_plus` (Kurmanji et al., NeurIPS 2023): per step, minimise alpha L(b_r) - (1 - alpha) L(b_f) for a
  minibatch b_r of D_r and one b_f of D_f (cycled), i.e. descent on the retained and ascent on the forgotten.
Each returns the new state dict (on the CPU) and the samples processed (both minibatches count for NegGrad+).
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
from rayfed.sisa.train import TrainSettings
from rayfed.training import autocast, grad_scaler, minibatches, on_device, running_batchnorm, sgd, sgd_epochs

TRAIN, FINETUNE, NEGGRAD = 0, 1, 2
"""Parts of the UNSHARDED_TRAINING stream (training and retraining from scratch share part 0: the same
procedure on other data)."""


def _model(settings: TrainSettings, device: torch.device, state: dict[str, Any] | None = None):
    torch.manual_seed(stream_seed(settings.seed, Stream.UNSHARDED_INIT))
    model = build_classifier(settings.model, settings.input_shape, settings.num_classes, settings.pretrained)
    if state is not None:
        model.load_state_dict(state)
    model = on_device(model, device)
    return model, sgd(model.parameters(), device, lr=settings.lr, momentum=settings.momentum)


def _cpu_state(model: nn.Module) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


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
        for batch in minibatches(len(y_r), settings.batch_size, generator, device):
            if not forget_batches:
                forget_batches = minibatches(len(y_f), settings.batch_size, generator, device)
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


def timed(job: Callable, *args: Any, device: torch.device) -> tuple[dict[str, Any], dict[str, float]]:
    """(state, {"samples", "seconds"}) of job(*args, device=device), a function of this module."""
    start = time.perf_counter()
    state, samples = job(*args, device=device)
    return state, {"samples": samples, "seconds": time.perf_counter() - start}
