"""summary.md's sentences (`rayfed.sisa.findings`) on hand-made tables: each states its table's values beside
the reference that gives them a meaning, and says so when a figure cannot support the conclusion."""

from rayfed.sisa.findings import (
    NOTHING_FORGOTTEN,
    accuracy_finding,
    backdoor_finding,
    baselines_finding,
    cost_finding,
    exactness_finding,
    membership_finding,
    sisa_findings,
)


def _exactness(weights_equal, predictions_equal, gap, deterministic=True, device="cpu"):
    return [
        {
            "aggregation": agg,
            "predictions_equal": predictions_equal,
            "max_probability_difference": gap,
            "weights_equal": weights_equal,
            "test_points": 449,
            "device": device,
            "torch_version": "2.15.0",
            "deterministic": deterministic,
        }
        for agg in ("mean", "vote")
    ]


def test_exact_unlearning_is_said_with_its_device_and_kernels():
    text = exactness_finding(_exactness(True, True, 0.0), forgotten=20)
    assert text.startswith("**Forgotten exactly**")
    assert "without the 20 points (cpu, deterministic kernels on)" in text
    assert "their predictions on the 449 test points are identical" in text
    assert "without the 1 point (cpu" in exactness_finding(_exactness(True, True, 0.0), forgotten=1)


def test_inexact_unlearning_gives_the_gap_and_the_key_that_fixes_it():
    """The issue's figure: rayfed sisa on CUDA with autotuned kernels, max probability difference 0.062."""
    text = exactness_finding(_exactness(False, False, 0.0621, deterministic=False, device="cuda:0"), 20)
    assert text.startswith("**Not exact**") and "(cuda:0, deterministic kernels off)" in text
    assert "differ, class probabilities by up to 0.0621" in text
    assert "`sisa.deterministic: true` (the default)" in text
    on = exactness_finding(_exactness(False, True, 1e-7, device="cuda:0"), 20)
    assert "agree, class probabilities by up to 1e-07" in on and "sisa.deterministic" not in on


def test_exactness_unchecked_is_said():
    assert exactness_finding([], 20).startswith("Exactness not checked (`unlearn.verify: false`)")


def _mia(stage, comparison, n, auc, low, high):
    return {"stage": stage, "comparison": comparison, "n": n, "auc": auc, "auc_low": low, "auc_high": high}


def test_membership_that_could_not_single_out_the_points_says_it_shows_nothing():
    rows = [
        _mia("trained", "forget_vs_test", 20, 0.4675, 0.2824, 0.6426),
        _mia("trained", "train_vs_test", 449, 0.5592, 0.5214, 0.5963),
        _mia("unlearned", "forget_vs_test", 20, 0.45, 0.2674, 0.625),
        _mia("retrained", "forget_vs_test", 20, 0.45, 0.2674, 0.625),
    ]
    text = membership_finding(rows)
    assert "on the 20 forgotten points against 20 unseen test points" in text
    assert "0.45 [0.27, 0.62] after unlearning, 0.45 [0.27, 0.62] for the reference" in text
    assert "(the score to match, matched)" in text and "0.47 [0.28, 0.64] before unlearning" in text
    assert "cannot show forgetting; on training points at large it reaches 0.56 [0.52, 0.60] (n=449)" in text
    assert "With 20 points a side the interval is wide" in text


def test_membership_that_singled_out_the_points_before_unlearning_makes_no_caveat():
    rows = [
        _mia("trained", "forget_vs_test", 150, 0.71, 0.65, 0.77),
        _mia("unlearned", "forget_vs_test", 150, 0.53, 0.47, 0.59),
        _mia("retrained", "forget_vs_test", 150, 0.52, 0.46, 0.58),
    ]
    text = membership_finding(rows)
    assert "0.53 [0.47, 0.59] after unlearning, 0.52 [0.46, 0.58] for the reference" in text
    assert "(the score to match)" in text and "0.71 [0.65, 0.77] before unlearning." in text
    assert "cannot show" not in text and "interval is wide" not in text


def test_membership_of_one_forgotten_point_says_it_shows_nothing():
    """unlearn.forget=1: the AUC of one point against one has no bootstrap interval (membership_row gives null)."""
    rows = [_mia(stage, "forget_vs_test", 1, 1.0, None, None) for stage in ("trained", "unlearned", "retrained")]
    assert membership_finding(rows) == (
        "Membership inference on 1 forgotten point(s) has no interval (it needs 2 a side) and shows nothing: raise "
        "`unlearn.forget` for power."
    )


def _backdoor(clean, trained, unlearned):
    """The mean rows as given, the vote rows 1 point of ASR and accuracy lower (the finding reads the mean)."""
    return [
        {"stage": s, "aggregation": agg, "mode": "badnets", "poisoned": 121, "clean_accuracy": acc - d, "asr": asr - d}
        for s, asr, acc in (("clean", clean, 96.44), ("trained", trained, 96.88), ("unlearned", unlearned, 95.55))
        for agg, d in (("vote", 1.0), ("mean", 0.0))
    ]


def test_backdoor_is_read_against_its_clean_floor():
    text = backdoor_finding(_backdoor(0.0, 99.27, 0.0))
    assert "(badnets, 121 poisoned training images, mean)" in text
    assert "99.3% after training on them, 0.0% after unlearning exactly them, against 0.0%" in text
    assert "clean accuracy 96.88% then 95.55%" in text and "barely" not in text


def test_a_backdoor_that_barely_took_hold_is_flagged():
    assert "barely took hold" in backdoor_finding(_backdoor(2.0, 21.9, 2.0))
    assert "barely" not in backdoor_finding(_backdoor(2.0, 22.1, 2.0))


def test_cost_names_the_shards_and_slices_retrained():
    """Request 0 touched shard 0 in slice 0 (two points, one retraining from scratch) and shard 3 in slice 2;
    600 samples to retrain the ensemble, 300 spent: 2.00x, against 400 expected: 1.50x."""
    points = [
        {"request": 0, "index": 5, "shard": 0, "slice": 0, "first_slice": 0},
        {"request": 0, "index": 9, "shard": 0, "slice": 1, "first_slice": 0},
        {"request": 0, "index": 2, "shard": 3, "slice": 2, "first_slice": 2},
    ]
    unlearning = [
        {"shards_retrained": 2, "samples_processed": 300, "ensemble_retrain_samples": 600, "expected_samples": 400.0}
    ]
    text = cost_finding(unlearning, points, num_shards=4)
    assert text.startswith("The request retrained 2 of 4 shards, 1 from scratch")
    assert "from a checkpoint (resumed at slice 2: 1; slices 0-based)" in text
    assert (
        "a 2.00x saving in samples over retraining the ensemble" in text
        and "for requests of these sizes: 1.50x" in text
    )
    one = [{"request": 0, "index": 7, "shard": 12, "slice": 4, "first_slice": 4}]
    late = [
        {"shards_retrained": 1, "samples_processed": 132, "ensemble_retrain_samples": 6838, "expected_samples": 251}
    ]
    assert cost_finding(late, one, num_shards=20).startswith(
        "The request retrained 1 of 20 shards from a checkpoint (resumed at slice 4: 1; slices 0-based): a 51.80x "
    )
    two = cost_finding(unlearning * 2, points + [{**p, "request": 1, "first_slice": 0} for p in points], 4)
    assert two.startswith("The 2 requests retrained 4 of 8 shards (shards x requests), 3 from scratch")


def test_accuracy_and_the_whole_list_in_order():
    metrics = [
        {"model": "ensemble", "stage": s, "aggregation": agg, "accuracy": acc - d}
        for s, acc in (("trained", 96.44), ("unlearned", 95.99), ("retrained", 95.99))
        for agg, d in (("vote", 0.5), ("mean", 0.0))
    ] + [{"model": "unsharded", "stage": "retrained", "aggregation": None, "accuracy": 98.89}]
    assert accuracy_finding(metrics) == (
        "Test accuracy (mean): 96.44% trained on every point, 95.99% after unlearning, 95.99% for the ensemble "
        "retrained from scratch without them."
    )
    tables = {
        "exactness": _exactness(True, True, 0.0),
        "metrics": metrics,
        "membership": [],
        "backdoor": _backdoor(0.0, 99.27, 0.0),
        "unlearning": [],
        "unlearning_points": [],
        "baselines": [],
    }
    found = sisa_findings(tables, forgotten=20, num_shards=5)
    assert [f.split()[0] for f in found] == ["**Forgotten", "Test", "Backdoor"]
    nothing = sisa_findings({**tables, "exactness": []}, 0, 5)
    assert nothing[0] == NOTHING_FORGOTTEN and [f.split()[0] for f in nothing[1:]] == ["Test", "Backdoor"]


def _baseline(method, exact, samples, accuracy, forget_accuracy, asr_before=None, asr_after=None):
    model = "ensemble" if method == "sisa" else "unsharded"
    return {"method": method, "model": model, "exact": exact, "samples_processed": samples, "accuracy": accuracy} | {
        "forget_accuracy": forget_accuracy,
        "asr_before": asr_before,
        "asr_after": asr_after,
    }


def test_approximate_baselines_are_read_against_the_unsharded_model_retrained_from_scratch():
    """finetune keeps the backdoor (71% after against the reference's 1%: 70 points over it); neggrad removes it
    (15%: 14 over, under 20); 6700 samples to retrain against 1340 and 2680: 5.0x and 2.5x fewer. Without a
    backdoor the sentence leaves attack success out; without an approximate method there is no sentence."""
    rows = [
        _baseline("sisa", True, 5800, 95.99, 90.0, 99.3, 0.0),
        _baseline("finetune", False, 1340, 96.10, 100.0, 99.0, 71.0),
        _baseline("neggrad", False, 2680, 93.32, 85.0, 99.0, 15.0),
        _baseline("retrained", True, 6700, 97.33, 95.0, 99.0, 1.0),
    ]
    text = baselines_finding(rows, forgotten=20)
    assert text.startswith(
        "Approximate unlearning of one unsharded model against it retrained from scratch without the 20 points "
        "(6700 samples; test accuracy 97.33%, forget-set accuracy 95.0%, attack success 1.0% retrained without the "
        "poison: the figures to match): finetune 1340 samples (5.0x fewer), test accuracy 96.10%, forget-set "
        "accuracy 100.0%, attack success 99.0% before unlearning the poison and 71.0% after (**the backdoor "
        "survives**); neggrad 2680 samples (2.5x fewer), test accuracy 93.32%, forget-set accuracy 85.0%, attack "
        "success 99.0% before unlearning the poison and 15.0% after (the backdoor is gone); exact SISA 5800 samples "
        "for its ensemble (test accuracy 95.99%)."
    )
    assert "One forgotten point is 5.0 points of forget-set accuracy" in text
    weak = [{**r, "asr_before": 12.0} if r["method"] == "finetune" else r for r in rows]
    assert "(too weak a backdoor to tell)" in baselines_finding(weak, 20)
    clean = [{**r, "asr_before": None, "asr_after": None} for r in rows]
    assert "attack success" not in baselines_finding(clean, 20)
    assert baselines_finding([rows[0], rows[3]], 20) is None
    # neggrad 5.00 points below the reference's 97.33% (DAMAGED_MODEL_POINTS): its low figures are damage;
    # 4.99 below is not flagged
    damaged = [{**r, "accuracy": 92.33} if r["method"] == "neggrad" else r for r in rows]
    assert (
        "neggrad 2680 samples (2.5x fewer), test accuracy 92.33% (**5.00 points below the reference: a damaged "
        "model**, its low figures not forgetting), forget-set accuracy 85.0%" in baselines_finding(damaged, 20)
    )
    almost = [{**r, "accuracy": 92.34} if r["method"] == "neggrad" else r for r in rows]
    assert "damaged" not in baselines_finding(almost, 20)
    # with a validation split each method's gap to the reference follows its forget-set accuracy, explained once
    gaps = [{**r, "val_retrain_gap": gap} for r, gap in zip(rows, (4.0, 2.5, 7.95, 0.0))]
    told = baselines_finding(gaps, 20)
    assert (
        "neggrad 2680 samples (2.5x fewer), test accuracy 93.32%, forget-set accuracy 85.0%, 7.95 points from " in told
    )
    assert "finetune 1340 samples (5.0x fewer), test accuracy 96.10%, forget-set accuracy 100.0%, 2.50 points " in told
    assert "one far below it over-unlearned them. val_retrain_gap is the mean absolute gap" in told
    assert "val_retrain_gap" not in text
    # neggrad diverged: its row has no figures and the sentence says so instead of formatting them; SISA served
    # 2 requests where each baseline unlearned the whole set once
    figures = ("accuracy", "forget_accuracy", "asr_after")
    rows[2] |= {"diverged": True} | dict.fromkeys(figures)
    rows[0] |= {"requests": 2}
    text = baselines_finding(rows, forgotten=20)
    assert "; neggrad 2680 samples (2.5x fewer), **diverged** (no figures); exact SISA 5800 samples over its 2 " in text
