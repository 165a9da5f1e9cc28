"""Phase 1, local client training: dw_i = w_after - w_before after local SGD on the client's own data."""

from __future__ import annotations

import torch
import torch.nn as nn

from rayfed.fl.state import StateDict, clone_state, state_delta
from rayfed.training import sgd, sgd_epochs


def local_update(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    augment_pad: torch.Tensor | None = None,
) -> StateDict:
    """Train `model` (already holding the global weights) in place and return dw = w_after - w_before.

    SGD with momentum and weight decay, as the notebook (`rayfed.training.sgd`); a fresh optimizer each round;
    minibatch order, augmentation and dropout drawn from `seed`, so the same seed gives the same update.
    """
    before = clone_state(model.state_dict())
    optimizer = sgd(model.parameters(), x.device, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sgd_epochs(model, optimizer, x, y, epochs=epochs, batch_size=batch_size, seed=seed, augment_pad=augment_pad)
    return state_delta(model.state_dict(), before)
