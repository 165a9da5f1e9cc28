"""Audits of unlearning (plain torch + scikit-learn, no Ray): membership inference and backdoor removal."""
