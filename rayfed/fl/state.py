"""State-dict arithmetic: updates dw = w_after - w_before and Theta_new = Theta_old + sum_i alpha_i dw_i.

Integer buffers (BatchNorm's `num_batches_tracked`) are handled explicitly (notebook defect 5): their
weighted update is rounded to the nearest integer and kept integer, instead of being added as floats and
truncated on load.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

StateDict = dict[str, torch.Tensor]
NumpyState = dict[str, np.ndarray]


def to_numpy(state: StateDict) -> NumpyState:
    """A state dict as CPU numpy arrays (what travels through Ray's object store)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}


def to_torch(state: NumpyState, device: torch.device | str = "cpu") -> StateDict:
    """Numpy arrays back to tensors on `device`."""
    return {
        k: torch.tensor(np.asarray(v), device=device) for k, v in state.items()
    }  # a copy: object-store arrays are read-only


def clone_state(state: StateDict) -> StateDict:
    """A detached copy of every entry."""
    return {k: v.detach().clone() for k, v in state.items()}


def state_delta(after: StateDict, before: StateDict) -> StateDict:
    """dw = w_after - w_before, entry by entry (integer buffers stay integer)."""
    return {k: after[k] - before[k] for k in before}


def weighted_sum(updates: Sequence[StateDict], weights: Sequence[float]) -> StateDict:
    """sum_i alpha_i dw_i; integer entries are summed in float64 and rounded to the nearest integer."""
    out: StateDict = {}
    for key, ref in updates[0].items():
        if ref.is_floating_point():
            out[key] = sum(float(w) * u[key] for w, u in zip(weights, updates))
        else:
            total = sum(float(w) * u[key].to(torch.float64) for w, u in zip(weights, updates))
            out[key] = torch.round(total).to(ref.dtype)
    return out


def apply_update(state: StateDict, update: StateDict) -> StateDict:
    """Theta + dw, keeping each entry's dtype."""
    return {k: (v + update[k].to(v.dtype)) if k in update else v.clone() for k, v in state.items()}


def apply_weighted_updates(state: StateDict, updates: Sequence[StateDict], weights: Sequence[float]) -> StateDict:
    """Theta_new = Theta_old + sum_i alpha_i * dw_i."""
    return apply_update(state, weighted_sum(updates, weights))


def update_problem(update: StateDict, reference: StateDict) -> str | None:
    """Why an update cannot be aggregated (missing key, wrong shape, NaN/Inf), or None if it can. Finiteness is
    checked for all tensors at once on their device (one sync per update, not one per tensor)."""
    for key, ref in reference.items():
        if key not in update:
            return f"missing entry {key}"
        if tuple(update[key].shape) != tuple(ref.shape):
            return f"{key} has shape {tuple(update[key].shape)}, expected {tuple(ref.shape)}"
    extra = set(update) - set(reference)
    if extra:
        return f"unexpected entry {sorted(extra)[0]}"
    floating = [key for key in reference if update[key].is_floating_point()]
    if floating:
        finite = torch.stack([torch.isfinite(update[key]).all() for key in floating]).cpu()
        if not bool(finite.all()):
            return f"{floating[int(finite.byte().argmin())]} has NaN or Inf"  # the first such entry
    return None
