"""rayfed: fair federated learning (Fed-AuditGAN) and provable machine unlearning (SISA) on Ray."""

__version__ = "0.1.0"
