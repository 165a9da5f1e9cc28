"""SISA training and unlearning (Bourtoule et al., IEEE S&P 2021) as plain torch functions (no Ray).

`plan` (shards, slices, forget sets), `schedule` (epochs per slice stage, costs), `train` (slice training with
a checkpoint per slice), `ensemble` (mean softmax, majority vote, metrics).
"""
