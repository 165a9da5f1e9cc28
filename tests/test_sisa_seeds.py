"""`rayfed sisa` over several seeds (rayfed.sisa.seeds) on hand-made per-seed figures: means with Student-t
intervals, the paired differences, and sentences that count a difference only where its interval excludes 0."""

import math

import pytest

from rayfed.sisa.seeds import figures_over_seeds, seeds_findings, seeds_tables

T2 = 4.302653  # t(0.975, 2): three seeds of spread (-1, 0, +1) around a mean give the half-width T2 / sqrt(3)
HALF = T2 / math.sqrt(3)  # 2.484


def _seed(accuracy, unsharded, forget_auc, retrained_auc, finetune_asr, neggrad_asr, forget_accuracy, exact=1.0):
    return {
        "accuracy": accuracy + 0.5,
        "unlearned_accuracy": accuracy,
        "retrained_accuracy": accuracy,
        "unsharded_accuracy": unsharded,
        "speedup_samples": 5.0,
        "expected_speedup": 5.2,
        "exact": exact,
        "max_probability_difference": 0.0 if exact else 0.06,
        "forget_auc": forget_auc,
        "unlearned_forget_auc": retrained_auc,
        "retrained_forget_auc": retrained_auc,
        "train_auc": 0.56,
        "backdoor_asr": 99.0,
        "unlearned_backdoor_asr": 0.0,
        "clean_backdoor_asr": 0.0,
        "finetune/accuracy": 97.0,
        "finetune/forget_accuracy": forget_accuracy + 5.0,
        "neggrad/forget_accuracy": forget_accuracy - 15.0,
        "retrained/forget_accuracy": forget_accuracy,
        "finetune/asr_after": finetune_asr,
        "retrained/accuracy": 98.0,
        "retrained/asr_after": 1.0,
        "neggrad/accuracy": 95.0,
        "neggrad/asr_after": neggrad_asr,
    }


# price of sharding: unlearned - unsharded = -3, -4, -5 (mean -4, half 2.484: detected); membership before
# unlearning 0.10, 0.12, 0.14 over the reference (detected), after 0 exactly; finetune's backdoor 84, 85, 86
# points over the reference's 1% (survives), neggrad's -1, 0, +1 (holds 0)
SEEDS = [
    _seed(95.0, 98.0, 0.60, 0.50, 85.0, 0.0, 95.0),
    _seed(94.0, 98.0, 0.64, 0.52, 86.0, 1.0, 90.0),
    _seed(93.0, 98.0, 0.65, 0.51, 87.0, 2.0, 100.0),
]


def test_figures_over_seeds_are_means_with_intervals_and_exactness_is_the_worst_seed():
    rows = [dict(r) for r in SEEDS]
    rows[2].update(exact=0.0, max_probability_difference=0.06)
    del rows[1]["train_auc"]
    over = figures_over_seeds(rows)
    assert over["seeds"] == 3
    assert over["unlearned_accuracy"] == pytest.approx(94.0) and over["unlearned_accuracy_ci"] == pytest.approx(HALF)
    assert over["exact"] == 0.0 and over["max_probability_difference"] == 0.06 and "exact_ci" not in over
    assert "train_auc" not in over  # a figure one seed lacks has no mean


def test_paired_differences_over_seeds_hand_case():
    figures, paired = seeds_tables(SEEDS)
    by_figure = {f["figure"]: f for f in figures}
    assert by_figure["unsharded_accuracy"]["ci"] == 0.0 and by_figure["unlearned_accuracy"]["seeds"] == 3
    paired = {p["of"]: p for p in paired}
    price = paired["unlearned_accuracy - unsharded_accuracy"]
    assert (price["pairs"], price["mean"]) == (3, pytest.approx(-4.0)) and price["ci"] == pytest.approx(HALF)
    leak = paired["forget_auc - retrained_forget_auc"]
    assert leak["mean"] == pytest.approx(0.12) and leak["ci"] == pytest.approx(0.02 * HALF)
    assert paired["finetune/asr_after - retrained/asr_after"]["mean"] == pytest.approx(85.0)
    assert paired["neggrad/accuracy - retrained/accuracy"]["mean"] == pytest.approx(-3.0)
    assert "retrained/accuracy - retrained/accuracy" not in paired  # the reference is not a method


def test_sentences_over_seeds_count_only_differences_whose_interval_excludes_zero():
    found = seeds_findings(SEEDS, [42, 43, 44])
    assert found[0].startswith("**Forgotten exactly** in all 3 seeds")
    assert found[1] == (
        "Test accuracy after unlearning 94.00 ± 2.48%, against 98.00 ± 0.00% for one unsharded model retrained on "
        "the same data: sharding costs 4.00 ± 2.48 points (3 paired seeds)."
    )
    assert "+0.1200 ± 0.0497 before unlearning, +0.0000 ± 0.0000 after" in found[2]
    assert "told the points apart before unlearning and not after: by this audit they are forgotten" in found[2]
    assert found[3].endswith("no detectable backdoor left (+0.0000 ± 0.0000 points over the floor).")
    assert found[4] == "Unlearning saved 5.00 ± 0.00x in samples over retraining the ensemble (expected 5.20 ± 0.00x)."
    finetune, neggrad = found[5:]
    assert finetune == (
        "finetune against the unsharded model retrained from scratch (3 paired seeds): test accuracy -1.00 ± 0.00 "
        "points (a cost), forget-set accuracy +5.00 ± 0.00 points (above the reference: it still knows the "
        "forgotten points), attack success after unlearning the poison +85.00 ± 2.48 points (**the backdoor "
        "survives**)."
    )
    assert "test accuracy -3.00 ± 0.00 points (a cost), forget-set accuracy -15.00 ± 0.00 points (below" in neggrad
    assert "+0.00 ± 2.48 points (no detectable backdoor left)" in neggrad
    # neggrad 5 points below the reference in every seed (DAMAGED_MODEL_POINTS): its forget-set accuracy 15
    # points under the reference's is the damage, not over-unlearning
    damaged = [{**r, "neggrad/accuracy": r["retrained/accuracy"] - 5.0} for r in SEEDS]
    neggrad = seeds_findings(damaged, [42, 43, 44])[-1]
    assert "test accuracy -5.00 ± 0.00 points (**a damaged model**: its low forget-set figures and attack " in neggrad


def test_sentences_over_seeds_say_when_an_audit_shows_nothing_or_a_seed_is_not_exact():
    """The attack no better than the reference before unlearning (differences -0.02, 0, +0.02); sharding
    that costs nothing detectable (-1, 0, +1); one seed not exact; a backdoor that barely took hold."""
    rows = [
        {**r, "forget_auc": r["retrained_forget_auc"] + d, "unsharded_accuracy": r["unlearned_accuracy"] - d * 50}
        for r, d in zip(SEEDS, (-0.02, 0.0, 0.02))
    ]
    rows[1] = {**rows[1], "exact": 0.0}
    rows = [{**r, "backdoor_asr": 12.0} for r in rows]
    found = seeds_findings(rows, [42, 43, 44])
    assert found[0] == "**Not exact** in 1 of 3 seeds (seed 43)."
    assert "no detectable price of sharding (+0.00 ± 2.48 points)" in found[1]
    assert "did not tell them apart better than the reference (its interval holds 0), so it shows nothing" in found[2]
    assert found[3].endswith("The backdoor barely took hold, so its removal shows little.")
    # the forgotten points scored as less likely members than the reference scores them (-0.10, -0.12, -0.14):
    # detected, but no leak, so the audit still shows nothing and the sentence must not say its interval holds 0
    below = [{**r, "forget_auc": r["retrained_forget_auc"] - d} for r, d in zip(SEEDS, (0.10, 0.12, 0.14))]
    found = seeds_findings(below, [42, 43, 44])
    assert "-0.1200 ± 0.0497 before unlearning" in found[2]
    assert "than the reference (they scored as less likely members), so it shows nothing" in found[2]
    unverified = [{k: v for k, v in r.items() if k != "exact"} for r in SEEDS]
    assert seeds_findings(unverified, [1, 2, 3])[0] == "Exactness not checked (`unlearn.verify: false`)."


def test_a_method_that_diverged_in_some_seeds_is_judged_on_the_seeds_it_has():
    """neggrad diverged (no figures) in seeds 43 and 44: its sentence counts the one seed it has, gives it no
    interval and no verdict (one draw shows no difference), and says how many seeds it covers; in two seeds it
    would be paired over two."""
    one = [SEEDS[0], *({k: v for k, v in r.items() if not k.startswith("neggrad/")} for r in SEEDS[1:])]
    neggrad = seeds_findings(one, [42, 43, 44])[-1]
    assert neggrad.startswith("neggrad against the unsharded model retrained from scratch (1 of 3 seeds paired): ")
    assert "test accuracy -3.00 (one seed, no interval) points (no detectable change)" in neggrad
    assert "forget-set accuracy -15.00 (one seed, no interval) points (no detectable difference)" in neggrad
    assert "poison -1.00 (one seed, no interval) points (no detectable backdoor left)" in neggrad
    two = [*SEEDS[:2], one[2]]
    assert "(2 of 3 seeds paired): test accuracy -3.00 ± 0.00 points (a cost)" in seeds_findings(two, [42, 43, 44])[-1]
    # a figure of one seed in a run of several: no interval in the figures' sentences either
    lone = [SEEDS[0], *({k: v for k, v in r.items() if k != "speedup_samples"} for r in SEEDS[1:])]
    assert seeds_findings(lone, [42, 43, 44])[4].startswith("Unlearning saved 5.00x (one seed) in samples")


def test_a_backdoor_that_survives_in_one_seed_is_named_though_the_mean_over_seeds_hides_it():
    """SCRUB leaves 39 points of attack success in seed 46 and none in the other four: +7.8 ± 21.7 points over
    the reference, an interval that holds 0, and yet "no detectable backdoor left" would be false for one draw
    in five; the sentence names the seed. The same for SISA's own backdoor over its floor."""
    rows = [
        {**SEEDS[0], "scrub/accuracy": 98.0, "scrub/forget_accuracy": 95.0, "scrub/asr_after": 1.0} for _ in range(5)
    ]
    rows[4] = {**rows[4], "scrub/asr_after": 40.08, "unlearned_backdoor_asr": 25.0}
    found = seeds_findings(rows, [42, 43, 44, 45, 46])
    scrub = next(f for f in found if f.startswith("scrub "))
    assert scrub.endswith(
        "attack success after unlearning the poison +7.82 ± 21.70 points (not detected over the seeds, but **the "
        "backdoor survives in seed 46 (+39.08 points)**)."
    )
    sisa = next(f for f in found if f.startswith("Backdoor attack success"))
    assert sisa.endswith(
        "not detected over the seeds, but **the backdoor survives in seed 46 (+25.00 points)** (+5.00 ± 13.88 "
        "points over the floor)."
    )
    # below WEAK_BACKDOOR_POINTS in every seed: nothing to name
    rows[4] = {**rows[4], "scrub/asr_after": 15.0, "unlearned_backdoor_asr": 10.0}
    found = seeds_findings(rows, [42, 43, 44, 45, 46])
    assert not any("survives in" in f for f in found)
