"""Each Fed-AuditGAN formula against a hand-computed case."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from rayfed.fl.gan_audit import compute_bias
from rayfed.fl.metrics import FAIRNESS_FIGURES, fairness_summary, jain_index, max_min_fairness
from rayfed.fl.state import apply_weighted_updates, state_delta, update_problem, weighted_sum
from rayfed.fl.strategies import fairness_scores, fedavg_weights, softmax_weights


def test_bias_is_mean_over_probes_of_l1_over_classes():
    # Theta(x) = W x with W = [[1, 0], [0, 2]]: |Theta(x) - Theta(x')| = |dx1| + 2|dx2|
    model = nn.Linear(2, 2, bias=False)
    model.weight.data = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    x_prime = torch.tensor([[1.0, 0.0], [1.0, 0.5]])
    # probe 1: 1 + 0 = 1; probe 2: 0 + 2 * 0.5 = 1  -> B = (1 + 1) / 2
    assert compute_bias(model, x, x_prime) == pytest.approx(1.0)
    x_prime[1, 1] = 0.0  # probe 2 now 2 * 1 = 2 -> B = 1.5
    assert compute_bias(model, x, x_prime) == pytest.approx(1.5)


def _linear(weight: list[list[float]]) -> nn.Linear:
    model = nn.Linear(2, 2, bias=False)
    model.weight.data = torch.tensor(weight)
    return model


def test_decision_bias_counts_pairs_whose_predicted_class_differs():
    # Theta = W x, W = [[1, 0], [0, 2]]: probe 1 (2, 0) -> logits (2, 0), class 0; x' = (0, 2) -> (0, 4), class 1:
    # flipped. Probe 2: x' = x = (1, 1) -> (1, 2) both: not flipped. B = 1/2 (logits: (|2| + |-4| + 0) / 2 = 3).
    model = _linear([[1.0, 0.0], [0.0, 2.0]])
    x = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    x_prime = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    assert compute_bias(model, x, x_prime, score="decisions") == 0.5
    assert compute_bias(model, x, x_prime, score="logits") == pytest.approx(3.0)
    with pytest.raises(ValueError, match="audit.score: unknown value 'flips'"):
        compute_bias(model, x, x_prime, score="flips")


def test_decision_scores_rank_the_update_that_stops_the_flip_above_one_that_shrinks_the_logits():
    """The same two updates, ranked in opposite orders: halving W keeps every decision (decisions: S = 0) but
    halves the logit distance (logits: S = 3 - 1.5 = +1.5, scored as removing bias); adding 3 to W[0, 1] stops
    probe 1 flipping (x' = (0, 2) -> (6, 4), class 0, as x) (decisions: S = 0.5 - 0 = +0.5), while its logit
    distance grows to (|2 - 6| + |0 - 4|) / 2 = 4 (logits: S = 3 - 4 = -1)."""
    x = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    x_prime = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    base = [[1.0, 0.0], [0.0, 2.0]]
    shrink, stop_flip = _linear([[0.5, 0.0], [0.0, 1.0]]), _linear([[1.0, 3.0], [0.0, 2.0]])
    expected = {"logits": [1.5, -1.0], "decisions": [0.0, 0.5]}
    for score, scores in expected.items():
        b_base = compute_bias(_linear(base), x, x_prime, score=score)
        biases = [compute_bias(m, x, x_prime, score=score) for m in (shrink, stop_flip)]
        assert fairness_scores(b_base, biases) == pytest.approx(scores), score


def test_scores_are_base_minus_client_bias():
    assert fairness_scores(1.0, [0.25, 1.5, 1.0]) == pytest.approx([0.75, -0.5, 0.0])


def test_softmax_weights_hand_case():
    alphas = softmax_weights([0.1, -0.1], gamma=2.0)
    expected = math.exp(0.2) / (math.exp(0.2) + math.exp(-0.2))
    assert alphas == pytest.approx([expected, 1 - expected])
    assert softmax_weights([0.3, 0.1, -2.0], gamma=0.0) == pytest.approx([1 / 3] * 3)  # gamma 0 = uniform


def test_softmax_weights_finite_for_extreme_gamma():
    alphas = softmax_weights([10.0, -10.0, 9.99], gamma=1000.0)  # gamma * S = +-10000
    assert all(np.isfinite(alphas)) and sum(alphas) == pytest.approx(1.0)
    assert alphas[0] == pytest.approx(1 / (1 + math.exp(-10.0)))
    assert alphas[1] == 0.0


def test_fedavg_weights_proportional_to_sizes():
    assert fedavg_weights([10, 30, 60]) == pytest.approx([0.1, 0.3, 0.6])


def test_aggregate_floats_and_integer_buffer():
    theta = {"w": torch.tensor([1.0, 2.0]), "num_batches_tracked": torch.tensor(10)}
    dw1 = {"w": torch.tensor([1.0, 0.0]), "num_batches_tracked": torch.tensor(3)}
    dw2 = {"w": torch.tensor([0.0, -1.0]), "num_batches_tracked": torch.tensor(4)}
    new = apply_weighted_updates(theta, [dw1, dw2], [0.3, 0.7])
    assert torch.allclose(new["w"], torch.tensor([1.3, 1.3]))
    # 0.3 * 3 + 0.7 * 4 = 3.7: rounded to 4 and kept integer (the notebook's float sum truncates to 13)
    assert new["num_batches_tracked"].dtype == torch.int64
    assert int(new["num_batches_tracked"]) == 14


def test_notebook_integer_arithmetic_would_truncate():
    """The notebook adds float-weighted updates to the int buffer; load_state_dict then truncates 13.7 to 13."""
    bn = nn.BatchNorm1d(1)
    sd = bn.state_dict()
    sd["num_batches_tracked"] = sd["num_batches_tracked"] + 10 + (0.3 * 3 + 0.7 * 4)
    bn.load_state_dict(sd)
    assert int(bn.num_batches_tracked) == 13
    ours = weighted_sum([{"n": torch.tensor(3)}, {"n": torch.tensor(4)}], [0.3, 0.7])["n"]
    assert int(ours) + 10 == 14


def test_delta_then_aggregate_single_client_recovers_after():
    before = {"w": torch.randn(3, 3), "n": torch.tensor(5)}
    after = {"w": torch.randn(3, 3), "n": torch.tensor(9)}
    restored = apply_weighted_updates(before, [state_delta(after, before)], [1.0])
    assert torch.allclose(restored["w"], after["w"]) and int(restored["n"]) == 9


def test_update_problem_detects_nan_inf_and_shapes():
    ref = {"w": torch.zeros(2, 2)}
    assert update_problem({"w": torch.ones(2, 2)}, ref) is None
    assert "NaN" in update_problem({"w": torch.tensor([[0.0, float("nan")], [0.0, 0.0]])}, ref)
    assert "NaN or Inf" in update_problem({"w": torch.full((2, 2), float("inf"))}, ref)
    assert "shape" in update_problem({"w": torch.zeros(3)}, ref)
    assert "missing" in update_problem({}, ref)
    shapes = {"a": torch.zeros(2), "n": torch.zeros(2, dtype=torch.long), "b": torch.zeros(2), "c": torch.zeros(1)}
    bad = {**shapes, "b": torch.tensor([0.0, float("inf")]), "c": torch.tensor([float("nan")])}
    assert update_problem(bad, shapes) == "b has NaN or Inf"  # the first non-finite entry, integers skipped


def test_fairness_metrics_hand_case():
    p = [50.0, 100.0]
    assert jain_index(p) == pytest.approx(150**2 / (2 * (50**2 + 100**2)))  # 0.9
    assert max_min_fairness(p) == pytest.approx(0.5)
    s = fairness_summary(p)
    assert s["variance"] == pytest.approx(625.0)
    assert (s["min_accuracy"], s["max_accuracy"], s["mean_accuracy"], s["gap"]) == (50.0, 100.0, 75.0, 50.0)
    assert tuple(s) == FAIRNESS_FIGURES  # the names sweeps and reports look the figures up by
    assert jain_index([0.0, 0.0]) == 1.0 and max_min_fairness([0.0, 0.0]) == 0.0
    assert jain_index([7.0, 7.0, 7.0]) == pytest.approx(1.0)
