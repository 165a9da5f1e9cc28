"""Minibatch SGD shared by federated clients (`rayfed.fl.local`) and SISA shards (`rayfed.sisa`)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from rayfed.data.datasets import augment_batch


def reduced_precision(device: torch.device) -> torch.dtype | None:
    """The autocast dtype on `device`: bf16 on GPUs that support it (no loss scaling needed), fp16 on older
    GPUs (as the notebook), None (plain fp32) on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision in `reduced_precision(device)`, or nothing (fp32)."""
    dtype = reduced_precision(device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """One loss scaler per training run, enabled only for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=reduced_precision(device) == torch.float16)


def on_device(model: nn.Module, device: torch.device, *, channels_last: bool | None = None) -> nn.Module:
    """`model` on `device`, its 4-D weights channels-last on a GPU (`channels_last` overrides): the layout
    cuDNN's reduced-precision convolutions run in, so none transposes its input or output (a convolution
    follows its weight's layout, the layers after it their input's)."""
    if channels_last is None:
        channels_last = device.type == "cuda"
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def sgd(
    params: Iterable[nn.Parameter],
    device: torch.device,
    *,
    lr: float,
    momentum: float,
    weight_decay: float = 0.0,
    fused: bool | None = None,
) -> torch.optim.SGD:
    """torch's SGD with momentum and weight decay, fused on a GPU (`fused` overrides): one kernel updates every
    parameter, and under fp16 it reads the loss scaler's inf check on the device instead of syncing for it."""
    if fused is None:
        fused = device.type == "cuda"
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)


def classifier_smallest_batch(batch_size: int) -> int:
    """The smallest last batch a classifier's training keeps: one under an eighth of `batch_size` (of two
    samples or more) shares the last two batches evenly with the one before. BatchNorm updates its running
    statistics from every training batch with the same weight, and from a few samples they end far from the
    model's activations (the digits CNN at batch 64 scored 25.84% after epochs that end on a batch of 2: README,
    "Small last batches")."""
    return max(2, batch_size // 8)


def minibatches(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device, smallest: int = 2
) -> list[torch.Tensor]:
    """A seeded shuffle of range(n) cut into `steps_per_epoch(n, batch_size)` batches: a last batch of one
    sample joins the one before it (BatchNorm cannot train on a single sample once the feature map is 1x1), and
    one of fewer than `smallest` samples shares the last two batches evenly with it."""
    batches = list(torch.randperm(n, generator=generator, device=generator.device).to(device).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    elif len(batches) > 1 and len(batches[-1]) < smallest:
        batches[-2:] = list(torch.cat(batches[-2:]).tensor_split(2))
    return batches


@contextlib.contextmanager
def running_batchnorm(model: nn.Module, single_sample: bool):
    """Inside, where `single_sample`, every BatchNorm of `model` normalises with its running statistics (one
    sample gives no batch statistics once the feature map is 1x1); each goes back to the mode it had."""
    frozen = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for module in frozen if single_sample else ():
        module.eval()
    try:
        yield
    finally:
        for module in frozen if single_sample else ():
            module.train()


def steps_per_epoch(n: int, batch_size: int) -> int:
    """How many optimizer steps one epoch of `sgd_epochs` takes on n samples (the batches of `minibatches`)."""
    batches = math.ceil(n / batch_size)
    last = n - (batches - 1) * batch_size
    return batches - 1 if batches > 1 and last == 1 else batches


def sgd_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    augment_pad: torch.Tensor | None = None,
) -> int:
    """`epochs` passes of minibatch training of `model` on (x, y) with cross-entropy; returns samples processed.

    Every random draw (minibatch order, augmentation, dropout) comes from `seed`, so the same model, optimizer
    state, data and seed give the same weights. `augment_pad` turns on random crop + flip, padding with those
    per-channel values. A last batch under an eighth of `batch_size` shares the last two batches evenly with
    the one before (`classifier_smallest_batch`); a single image cannot give batch statistics, so BatchNorm then
    uses its running ones.
    The draws come from a generator on x's device (on a GPU, no host work or sync per step; on the CPU, the
    draws of a CPU generator).
    """
    device = x.device
    generator = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    scaler = grad_scaler(device)
    model.train()
    pad = None if augment_pad is None else augment_pad.to(device)
    samples = 0
    with running_batchnorm(model, len(y) == 1):
        for _ in range(epochs):
            for batch in minibatches(len(y), batch_size, generator, device, classifier_smallest_batch(batch_size)):
                inputs = x[batch] if pad is None else augment_batch(x[batch], pad, generator)
                optimizer.zero_grad(set_to_none=True)
                with autocast(device):
                    loss = F.cross_entropy(model(inputs), y[batch])
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                samples += len(batch)
    return samples
