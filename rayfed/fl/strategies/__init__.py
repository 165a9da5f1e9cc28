"""Aggregation rules, one file each: FedAvg's size weights and Fed-AuditGAN's softmax of fairness scores."""

from rayfed.fl.strategies.fedauditgan import fairness_scores, softmax_weights
from rayfed.fl.strategies.fedavg import fedavg_weights

__all__ = ["fairness_scores", "fedavg_weights", "softmax_weights"]
