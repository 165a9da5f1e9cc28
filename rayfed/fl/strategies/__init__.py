"""Aggregation strategies, one file each, registered by name (see `base`): every module here is imported, so a
new method is one new file."""

import importlib
import pkgutil

from rayfed.fl.strategies.base import (
    REGISTRY,
    Aggregation,
    AuditEvidence,
    LocalResult,
    Strategy,
    parameter_columns,
    seeded_runs,
    strategy_for,
    strategy_runs,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from rayfed.fl.strategies.fedauditgan import fairness_scores, softmax_weights  # noqa: E402
from rayfed.fl.strategies.fedavg import fedavg_weights  # noqa: E402

__all__ = [
    "REGISTRY",
    "Aggregation",
    "AuditEvidence",
    "LocalResult",
    "Strategy",
    "fairness_scores",
    "fedavg_weights",
    "parameter_columns",
    "seeded_runs",
    "softmax_weights",
    "strategy_for",
    "strategy_runs",
]
