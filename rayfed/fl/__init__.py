"""Fed-AuditGAN and FedAvg as plain torch functions (no Ray): one module per phase.

Phase 1 `local`, Phase 2-3 `audit`, Phase 4 `strategies` + `state`, and `metrics` for fairness.
"""
