"""Membership inference and backdoor audits (plain torch + scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rayfed.audits.backdoor import attack_success_rate, choose_poison, poison_data, stamp
from rayfed.audits.membership import auc_interval, lr_cv_accuracy, membership_row, threshold_attack
from rayfed.data.datasets import denormalise, load_dataset
from rayfed.errors import UserError
from rayfed.sisa.ensemble import combine_shards, shard_probs
from rayfed.sisa.plan import affected_shards, make_layout
from rayfed.sisa.train import ShardTrainer, TrainSettings, model_from_state

# ------------------------------------------------------------------------------------------- membership


def test_membership_scores_separate_and_identical_losses():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.uniform(0, 0.1, 100), rng.uniform(1, 2, 300)
    assert lr_cv_accuracy(members, nonmembers) == 1.0
    assert threshold_attack(members, nonmembers) == (1.0, 1.0)
    same = rng.normal(size=400)
    acc = lr_cv_accuracy(same[:200], same[200:])
    auc, _ = threshold_attack(same[:200], same[200:])
    assert 0.35 < acc < 0.65 and 0.4 < auc < 0.6
    row = membership_row("trained", "forget_vs_test", members, nonmembers)
    assert row["n"] == 100 and row["auc"] == 1.0 and row["auc_low"] == 1.0 and row["auc_high"] == 1.0


def test_membership_uses_equal_size_sets_and_tpr_at_low_fpr():
    # 10 members all with loss 0, 1000 non-members of which 500 also have loss 0: balanced = 10 vs the first 10
    members, nonmembers = np.zeros(10), np.concatenate([np.ones(10), np.zeros(990)])
    auc, tpr = threshold_attack(members, nonmembers)
    assert auc == 1.0  # only the first 10 non-members count
    assert tpr is None  # 10 non-members: no threshold has an FPR in (0, 1%]
    # one member below every non-member, the rest above: TPR at FPR 0 is 1/100
    members, nonmembers = np.concatenate([[-1.0], np.full(99, 5.0)]), np.linspace(0, 1, 100)
    assert threshold_attack(members, nonmembers)[1] == pytest.approx(0.01)
    assert lr_cv_accuracy(np.zeros(1), np.ones(1)) is None


def test_membership_interval_narrows_with_n_and_covers_the_true_auc():
    # members' losses ~ N(-0.5, 1), non-members' ~ N(0, 1): true AUC = Phi(0.5 / sqrt 2) = 0.6382
    rng = np.random.default_rng(1)
    true_auc = 0.5 * (1 + math.erf(0.5 / math.sqrt(2) / math.sqrt(2)))
    widths = {}
    for n in (40, 1000):
        members, nonmembers = rng.normal(-0.5, 1, n), rng.normal(0, 1, n)
        low, high = auc_interval(members, nonmembers, seed=0)
        auc, tpr = threshold_attack(members, nonmembers)
        assert low < auc < high and low < true_auc < high
        widths[n] = high - low
        assert (tpr is None) == (n < 100)
    assert widths[1000] < widths[40] / 3  # about sqrt(1000/40) = 5 times narrower
    assert 0.04 < widths[1000] < 0.07  # 2 x 1.96 x sd of the AUC, sd about sqrt((2 - A^2 ...) / n): 0.0124


def test_auc_interval_is_the_mann_whitney_auc_of_resampled_sets():
    members, nonmembers = np.array([0.0, 2.0]), np.array([1.0, 3.0])  # AUC 3/4 (-l: member 0 beats both)
    assert threshold_attack(members, nonmembers)[0] == 0.75
    low, high = auc_interval(members, nonmembers, seed=0, resamples=2000)
    assert low == 0.0 and high == 1.0  # resampling 2 points can give {0, 0} vs {3, 3} (AUC 1) or the reverse
    assert auc_interval(np.zeros(1), np.ones(1)) == (None, None)


# --------------------------------------------------------------------------------------------- backdoor


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_trigger_is_set_in_pixel_space_then_normalised(digits):
    x = digits.test_x[:4]
    out = stamp(x, digits.mean, digits.std, size=3, value=1.0)
    pixels = denormalise(out, digits.mean, digits.std)
    assert torch.allclose(pixels[:, :, -3:, -3:], torch.ones(4, 1, 3, 3), atol=1e-6)
    assert torch.equal(out[:, :, :5], x[:, :, :5]) and torch.equal(x, digits.test_x[:4])  # input untouched
    random = stamp(x, digits.mean, digits.std, size=2, value=0.5, position="random", seed=1)
    changed = (random != x).flatten(1).sum(1)
    assert (changed <= 4).all() and (changed >= 1).all()


def test_trigger_stamps_exactly_its_square_and_no_other_pixel(digits):
    x = digits.test_x[:50]
    level = float((1.0 - digits.mean[0]) / digits.std[0])
    for position in ("bottom_right", "random"):
        out = stamp(x, digits.mean, digits.std, size=3, value=1.0, position=position, seed=7)
        square = torch.zeros_like(x, dtype=torch.bool)
        if position == "bottom_right":
            square[:, :, -3:, -3:] = True
        else:  # the same draw as stamp's
            rng = np.random.default_rng(7)
            tops, lefts = rng.integers(0, 8 - 3 + 1, 50), rng.integers(0, 8 - 3 + 1, 50)
            for i, (top, left) in enumerate(zip(tops, lefts)):
                square[i, :, top : top + 3, left : left + 3] = True
        assert torch.equal(out[~square], x[~square])  # no other pixel
        assert torch.allclose(out[square], torch.full_like(out[square], level))  # every pixel of the square


def test_poisoning_persists_and_badnets_relabels_non_target_images(digits):
    y = digits.train_y
    idx = choose_poison(y, target=3, num_classes=10, mode="badnets", count=None, fraction=0.05, seed=0)
    assert len(idx) == round(0.05 * int((y != 3).sum())) and (y[idx] != 3).all()  # a share of the candidates
    x2, y2 = poison_data(
        digits.train_x,
        y,
        idx,
        target=3,
        mode="badnets",
        mean=digits.mean,
        std=digits.std,
        size=3,
        value=1.0,
        position="bottom_right",
        seed=0,
    )
    assert (y2[idx] == 3).all() and not torch.equal(x2[idx], digits.train_x[idx])  # the notebook's edit did not stick
    others = np.setdiff1d(np.arange(len(y)), idx)
    assert torch.equal(x2[others], digits.train_x[others]) and torch.equal(y2[others], y[others])
    clean = choose_poison(y, target=3, num_classes=10, mode="clean_label", count=20, fraction=0.5, seed=0)
    assert len(clean) == 20 and (y[clean] == 3).all()  # a count wins over the fraction
    half = choose_poison(y, target=3, num_classes=10, mode="clean_label", count=None, fraction=0.5, seed=0)
    assert len(half) == round(0.5 * int((y == 3).sum()))  # half the target class, not 50% of the training set
    _, y3 = poison_data(
        digits.train_x,
        y,
        clean,
        target=3,
        mode="clean_label",
        mean=digits.mean,
        std=digits.std,
        size=3,
        value=1.0,
        position="bottom_right",
        seed=0,
    )
    assert torch.equal(y3, y)


def test_bad_target_class_and_poison_count(digits):
    with pytest.raises(UserError, match="backdoor.target_class"):
        choose_poison(digits.train_y, target=10, num_classes=10, mode="badnets", count=5, fraction=0.1, seed=0)
    with pytest.raises(UserError, match="backdoor.poison"):
        choose_poison(digits.train_y, target=0, num_classes=10, mode="clean_label", count=10_000, fraction=0.1, seed=0)


def test_attack_success_rate_counts_only_non_target_images():
    pred, y = torch.tensor([0, 0, 1, 0]), torch.tensor([0, 1, 1, 2])
    assert attack_success_rate(pred, y, target=0) == pytest.approx(100 * 2 / 3)


def test_backdoor_is_present_before_unlearning_and_gone_after(digits, tmp_path):
    """BadNets on digits with a white bottom-right square: the ensemble learns the trigger; unlearning exactly
    the poisoned points (SISA retraining from the right checkpoints) removes it."""
    torch.set_num_threads(1)
    target = 0
    clean_x, clean_y = digits.train_x[:600], digits.train_y[:600]
    idx = choose_poison(clean_y, target=target, num_classes=10, mode="badnets", count=60, fraction=0.1, seed=0)
    trigger = {"mean": digits.mean, "std": digits.std, "size": 3, "value": 1.0, "position": "bottom_right"}
    x, y = poison_data(clean_x, clean_y, idx, target=target, mode="badnets", seed=0, **trigger)
    layout = make_layout(len(y), shards=2, slices=2, seed=0)
    settings = TrainSettings(
        model="cnn",
        input_shape=digits.shape,
        num_classes=10,
        epochs=(2, 2),
        lr=0.01,
        momentum=0.9,
        batch_size=32,
        seed=1,
    )
    trainers = [
        ShardTrainer(
            s,
            list(layout.slices[s]),
            x[torch.from_numpy(layout.shard_indices(s))],
            y[torch.from_numpy(layout.shard_indices(s))],
            settings,
            tmp_path / f"shard{s}",
        )
        for s in range(2)
    ]
    triggered = stamp(digits.test_x, **trigger)

    def asr_and_accuracy():
        models = [model_from_state(settings, t.final_state()) for t in trainers]
        pred_triggered = combine_shards(shard_probs(models, triggered), "mean")[0]
        pred_clean = combine_shards(shard_probs(models, digits.test_x), "mean")[0]
        return (
            attack_success_rate(pred_triggered, digits.test_y, target),
            100 * float((pred_clean == digits.test_y).float().mean()),
        )

    for t in trainers:
        t.run()
    asr_before, acc_before = asr_and_accuracy()
    for s in affected_shards(layout, idx):
        trainers[s].run(idx)
    asr_after, acc_after = asr_and_accuracy()
    assert acc_before > 80 and acc_after > 80
    assert asr_before > 80, asr_before
    assert asr_after < 15, asr_after
