"""Phase 1, local client training: dw_i = w_after - w_before after local SGD on the client's own data."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from rayfed.data.datasets import augment_batch
from rayfed.fl.state import StateDict, clone_state, state_delta


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (as the notebook), plain fp32 elsewhere."""
    return torch.autocast(device_type=device.type, enabled=device.type == "cuda")


def minibatches(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """A seeded shuffle of range(n) cut into batches; a last batch of one sample joins the one before it
    (BatchNorm cannot train on a single sample once the feature map is 1x1)."""
    batches = list(torch.randperm(n, generator=generator).to(device).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def local_update(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, momentum: float,
                 weight_decay: float, batch_size: int, seed: int,
                 augment_pad: torch.Tensor | None = None) -> StateDict:
    """Train `model` (already holding the global weights) in place and return dw = w_after - w_before.

    SGD with momentum and weight decay, as the notebook; a fresh optimizer each round. Minibatch order,
    augmentation and dropout are drawn from `seed`, so the same seed gives the same update.
    `augment_pad` enables random crop + flip, padding with those per-channel values.
    """
    device = x.device
    before = clone_state(model.state_dict())
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    model.train()
    if len(y) == 1:  # one image cannot give batch statistics: BatchNorm uses its running statistics instead
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    for _ in range(epochs):
        for batch in minibatches(len(y), batch_size, generator, device):
            inputs = x[batch]
            if augment_pad is not None:
                inputs = augment_batch(inputs, augment_pad.to(device), generator)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                loss = F.cross_entropy(model(inputs), y[batch])
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    return state_delta(model.state_dict(), before)
