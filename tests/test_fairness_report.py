"""What `rayfed fl` concludes, against hand-computed cases: Student-t intervals, paired differences against
FedAvg, effective weights, the uniform-weights note, standardised scores, the uniform control, test-subset
sizes, client selection and the classes no client holds."""

import math

import numpy as np
import pytest
import torch
from simplex_reference import simplex_projection_by_bisection

from rayfed.data.partition import client_test_indices, largest_test_size
from rayfed.engine.fl_engine import weight_figures
from rayfed.fl.report import (
    control_differences,
    never_served_note,
    paired_differences,
    summary_table,
    unfair_baseline_notes,
    uniform_weight_runs,
    verdict_sentences,
)
from rayfed.fl.rows import with_held_out
from rayfed.fl.setup import select_clients
from rayfed.fl.strategies import REGISTRY, LocalResult, strategy_for
from rayfed.fl.strategies.fedauditgan import FedAuditGan, softmax_weights, standardised
from rayfed.fl.strategies.fedavg import FedAvg
from rayfed.fl.strategies.qffl import QFedAvg
from rayfed.fl.strategies.uniform import Uniform
from rayfed.plots.fl import RANGES, band_edges, final_client_accuracies
from rayfed.stats import holm, interval_p_value, mean_interval


def test_mean_interval_hand_case():
    # [1, 2, 3]: mean 2, s = 1, sem = 1/sqrt(3), t(0.975, 2) = 4.302653 -> half-width 2.484138
    mean, half = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert mean_interval([5.0]) == (5.0, None)  # one seed: no interval


def test_interval_p_value_hand_case():
    """With 2 degrees of freedom P(T > t) = (1 - t / sqrt(t^2 + 2)) / 2 in closed form: [1, 2, 3] gives
    t = 2 / (1 / sqrt(3)) = sqrt(12), p = 1 - sqrt(12 / 14) = 0.0741799. p < 0.05 exactly where the interval
    excludes 0: a difference 1% above the half-width passes, 1% below does not."""
    mean, half = mean_interval([1.0, 2.0, 3.0])
    assert interval_p_value(mean, half, 3) == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-6)
    assert interval_p_value(1.01, 1.0, 5) < 0.05 < interval_p_value(0.99, 1.0, 5)


def test_holm_hand_case():
    """[0.01, 0.04, 0.03, 0.005]: sorted 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04
    raised to the 0.06 before it; products past 1 are capped."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0] and holm([]) == []


def test_a_nan_p_value_is_no_effect_and_holm_keeps_it_apart():
    """A test that could not be done (here a NaN half-width makes a NaN p) is no effect in any clause of a
    verdict, whatever its difference. Holm keeps it NaN, wherever it stands, and adjusts the others as if it were
    1: [0.01, NaN, 0.03] -> 0.01 x 3 = 0.03, 0.03 x 2 = 0.06."""
    assert holm([0.01, math.nan, 0.03]) == pytest.approx([0.03, math.nan, 0.06], nan_ok=True)
    assert holm([math.nan, 0.03, 0.01]) == pytest.approx([math.nan, 0.06, 0.03], nan_ok=True)
    row = _pairs("gamma=2", **{"Global Acc": 6.0, "JFI": 0.0, "Worst client": 6.0, "Gap": 0.0, "Flip rate": 0.06})
    for column in ("Global Acc", "Worst client", "Flip rate"):
        row[f"Δ {column} ±"] = math.nan
    for correction in ("holm", "none"):
        sentence = verdict_sentences([row], correction)[1]
        assert "**no detectable difference in fairness**: worst client +6.00 ± nan (p nan)" in sentence
        assert "no detectable change in global accuracy (+6.00 ± nan, p nan)" in sentence
        assert sentence.endswith("no detectable difference in sensitivity (flip rate +0.06 ± nan, p nan).")


def _round(method, gamma, seed, rnd, accuracy, jfi, min_accuracy, gap):
    return {
        "method": method,
        "gamma": gamma,
        "q": None,
        "seed": seed,
        "round": rnd,
        "accuracy": accuracy,
        "jfi": jfi,
        "max_min": 0.5,
        "variance": 1.0,
        "min_accuracy": min_accuracy,
        "max_accuracy": 90.0,
        "gap": gap,
        "bias": None,
        "effective_clients": 3.0,
    }


ROWS = [
    _round("fedavg", None, 1, 1, 10.0, 0.5, 5.0, 50.0),  # an earlier round: not the final figures
    _round("fedavg", None, 1, 2, 80.0, 0.90, 60.0, 30.0),
    _round("fedavg", None, 2, 2, 82.0, 0.92, 62.0, 28.0),
    _round("fedauditgan", 2.0, 1, 2, 81.0, 0.95, 70.0, 20.0),
    _round("fedauditgan", 2.0, 2, 2, 85.0, 0.93, 66.0, 25.0),
]


T2 = 4.302653  # t(0.975, 2): with 3 seeds and differences d, d +- 1, the half-width is T2 / sqrt(3) = 2.484138


def _pairs(label, **deltas):
    """A paired-table row over 3 seeds: each figure's differences (m - 1, m, m + 1) give mean m, half 2.484."""
    row = {"Method": label, "vs": "FedAvg", "Pairs": 3}
    for column, mean in deltas.items():
        row[f"Δ {column}"], row[f"Δ {column} ±"] = mean_interval([mean - 1, mean, mean + 1])
    return row


def test_verdicts_count_only_differences_whose_interval_excludes_zero():
    """Without correction: worst client +6 and gap -5 (intervals 2.48 wide a side: both exclude 0) are fairer;
    JFI +0.5 holds 0; global accuracy -3 excludes 0: a cost. The p-values are 1 - t / sqrt(t^2 + 2) with
    t = |d| sqrt(3) (2 degrees of freedom)."""
    fairer = _pairs("gamma=2", **{"Global Acc": -3.0, "JFI": 0.5, "Worst client": 6.0, "Gap": -5.0})
    lead, sentence = verdict_sentences([fairer], "none")
    assert lead.startswith("p-values are each figure's own (`metrics.correction: none`)")
    assert "with 4 figures tested in this table, about 0.2 false effects are expected" in lead
    assert "sign test" not in lead  # no difference was the same in every seed
    assert sentence == (
        "gamma=2 vs FedAvg (3 paired seeds): **fairer** on worst client +6.00 ± 2.48 (p 0.0091) and gap -5.00 ± "
        "2.48 (p 0.013); no detectable difference on JFI +0.50 ± 2.48 (p 0.48); at a cost in global accuracy "
        "(-3.00 ± 2.48 points, p 0.035)."
    )
    mixed = _pairs("q=1", **{"Global Acc": 2.6, "JFI": 0.0, "Worst client": -4.0, "Gap": -3.0})
    less = _pairs("gamma=8", **{"Global Acc": 0.0, "JFI": 0.0, "Worst client": -2.6, "Gap": 2.0})
    none = _pairs("Uniform", **{"Global Acc": 1.0, "JFI": 0.0, "Worst client": 2.0, "Gap": -2.0})
    _, mixed_text, less_text, none_text = verdict_sentences([mixed, less, none], "none")
    assert mixed_text.startswith("q=1 vs FedAvg (3 paired seeds): **mixed**: fairer on gap -3.00 ± 2.48 (p 0.03")
    assert "less fair on worst client -4.00 ± 2.48" in mixed_text and "a gain in global accuracy (+2.60" in mixed_text
    assert "**less fair** on worst client -2.60 ± 2.48 (p 0.04" in less_text
    assert "no detectable difference on gap +2.00 ± 2.48 (p 0.07" in less_text
    assert "no detectable change in global accuracy (+0.00 ± 2.48, p 1)" in less_text
    assert none_text.startswith("Uniform vs FedAvg (3 paired seeds): **no detectable difference in fairness**: ")


def test_holm_correction_drops_what_one_table_of_tests_can_find_by_chance():
    """The same row under Holm over its 4 figures: p 0.0091, 0.013, 0.035, 0.48 adjust to 0.0365, 0.0392,
    0.0702, 0.48: worst client and gap stay effects, the accuracy cost (its interval excludes 0) does not. Three
    such rows make 12 tests: 0.0091 x 12 > 0.05, and nothing is left."""
    fairer = _pairs("gamma=2", **{"Global Acc": -3.0, "JFI": 0.5, "Worst client": 6.0, "Gap": -5.0})
    lead, sentence = verdict_sentences([fairer])
    assert lead.startswith("p-values are Holm-adjusted over the 4 figures tested in this table")
    assert sentence == (
        "gamma=2 vs FedAvg (3 paired seeds): **fairer** on worst client +6.00 ± 2.48 (p 0.037) and gap -5.00 ± "
        "2.48 (p 0.039); no detectable difference on JFI +0.50 ± 2.48 (p 0.48); no detectable change in global "
        "accuracy (-3.00 ± 2.48, p 0.07)."
    )
    three = verdict_sentences([fairer, {**fairer, "Method": "gamma=4"}, {**fairer, "Method": "gamma=8"}])
    assert "Holm-adjusted over the 12 figures tested in this table" in three[0]
    assert all("**no detectable difference in fairness**" in sentence for sentence in three[1:])
    assert "(p 0.11)" in three[1]  # 0.0091 x 12, then kept at least as large for the next two


def test_a_difference_the_same_in_every_seed_gets_the_sign_test():
    """Worst client FedAvg 60, 50 and gamma=2 65, 55: +5 in both seeds, an interval of no width and no t-test.
    The exact two-sided sign test gives 2 x 0.5^2 = 0.5 (no verdict); six such seeds 2 x 0.5^6 = 0.03125 (an
    effect), five of -5 2 x 0.5^5 = 0.0625; no difference in any seed, 1."""
    assert interval_p_value(5.0, 0.0, 2) == 0.5 and interval_p_value(-5.0, 0.0, 5) == 0.0625
    assert interval_p_value(5.0, 0.0, 6) == 0.03125 and interval_p_value(0.0, 0.0, 2) == 1.0
    runs = [FedAvg(), FedAuditGan(2.0)]

    def rows(seeds):
        return [
            _round(method, gamma, seed, 2, 80.0, 0.9, worst + 10 * (seed % 2), 30.0)
            for seed in range(1, seeds + 1)
            for method, gamma, worst in (("fedavg", None, 50.0), ("fedauditgan", 2.0, 55.0))
        ]

    lead, two = verdict_sentences(paired_differences(rows(2), runs), "none")
    assert lead.endswith(
        "A difference the same in every seed (± 0) has no t-test; the exact sign test tests it "
        "instead (p = 2 × 0.5^n over n seeds)."
    )
    assert two.startswith(
        "gamma=2 vs FedAvg (2 paired seeds): **no detectable difference in fairness**: worst client +5.00 ± 0.00 "
        "(p 0.5)"
    )
    _, six = verdict_sentences(paired_differences(rows(6), runs), "none")
    assert six.startswith("gamma=2 vs FedAvg (6 paired seeds): **fairer** on worst client +5.00 ± 0.00 (p 0.031)")


def test_one_seed_supports_no_verdict():
    """The hand case's two seeds give intervals 12.7x the sem wide: no figure is an effect; with one pair, a
    single sentence saying there is no verdict to give."""
    runs = [FedAvg(), FedAuditGan(2.0)]
    (_, two) = verdict_sentences(paired_differences(ROWS, runs))
    assert two.startswith("gamma=2 vs FedAvg (2 paired seeds): **no detectable difference in fairness**")
    one = paired_differences([r for r in ROWS if r["seed"] == 1], runs)
    assert verdict_sentences(one) == [
        "One seed: each difference above is a single draw and supports no verdict; `seeds: 5` gives them intervals."
    ]


def test_summary_and_paired_differences_hand_case():
    runs = [FedAvg(), FedAuditGan(2.0)]
    summary = {r["Method"]: r for r in summary_table(ROWS, runs)}
    assert summary["FedAvg"]["Seeds"] == 2 and summary["FedAvg"]["Global Acc"] == pytest.approx(81.0)
    # accuracies 80, 82: s = sqrt(2), sem = 1, t(0.975, 1) = 12.706205
    assert summary["FedAvg"]["Global Acc ±"] == pytest.approx(12.706205, rel=1e-6)
    paired = paired_differences(ROWS, runs)
    assert len(paired) == 1 and paired[0]["Method"] == "gamma=2" and paired[0]["Pairs"] == 2
    # accuracy differences: seed 1: 81 - 80 = 1, seed 2: 85 - 82 = 3 -> mean 2, s = sqrt(2), half 12.706
    assert paired[0]["Δ Global Acc"] == pytest.approx(2.0)
    assert paired[0]["Δ Global Acc ±"] == pytest.approx(12.706205, rel=1e-6)
    # worst client: 70 - 60 = 10, 66 - 62 = 4 -> 7; gap: -10, -3 -> -6.5
    assert paired[0]["Δ Worst client"] == pytest.approx(7.0)
    assert paired[0]["Δ Gap"] == pytest.approx(-6.5)
    assert paired_differences([r for r in ROWS if r["method"] != "fedavg"], runs) == []  # no reference ran


def _audit(method, gamma, seed, flip_rate, bias):
    return {"method": method, "gamma": gamma, "q": None, "seed": seed, "round": 2, "bias": bias, "flip_rate": flip_rate}


AUDIT_ROWS = [
    _audit("fedavg", None, 1, 0.10, 5.0),
    _audit("fedavg", None, 2, 0.12, 6.0),
    _audit("fedauditgan", 2.0, 1, 0.07, 4.0),
    _audit("fedauditgan", 2.0, 2, 0.08, 3.0),
]


def test_held_out_audit_joins_the_final_rows_and_its_flip_rate_is_tested():
    """Without audit rows the tables have no held-out columns; with them, each final row carries its seed's
    figures (not an earlier round's): FedAvg flip rate (0.10 + 0.12) / 2 = 0.11, the paired difference
    (-0.03, -0.04) -> -0.035, B (-1, -3) -> -2. A verdict tests the flip rate as a fifth figure: fewer flips by
    0.06 +- 0.0248 over three seeds is an effect (p 0.0091, as worst client +6 +- 2.48 in the first hand case),
    more flips the other way; Holm over the row's 5 figures (the other four p's are 1) multiplies it by 5."""
    runs = [FedAvg(), FedAuditGan(2.0)]
    assert "Flip rate" not in summary_table(ROWS, runs)[0] and "Δ Flip rate" not in paired_differences(ROWS, runs)[0]
    rows = with_held_out(ROWS, AUDIT_ROWS)
    assert rows[0] == ROWS[0]  # round 1: no audit
    summary = {r["Method"]: r for r in summary_table(rows, runs)}
    assert summary["FedAvg"]["Flip rate"] == pytest.approx(0.11) and summary["gamma=2"]["Held-out B"] == 3.5
    [paired] = paired_differences(rows, runs)
    assert paired["Δ Flip rate"] == pytest.approx(-0.035) and paired["Δ Held-out B"] == pytest.approx(-2.0)
    row = _pairs("gamma=2", **{"Global Acc": 0.0, "JFI": 0.0, "Worst client": 0.0, "Gap": 0.0})
    row["Δ Flip rate"], row["Δ Flip rate ±"] = mean_interval([-0.07, -0.06, -0.05])
    lead, less = verdict_sentences([row], "none")
    assert "with 5 figures tested in this table" in lead
    assert less.endswith("; held-out audit: **less sensitive** (flip rate -0.0600 ± 0.0248, p 0.0091).")
    row["Δ Flip rate"] = 0.06
    assert verdict_sentences([row], "none")[1].endswith("**more sensitive** (flip rate +0.0600 ± 0.0248, p 0.0091).")
    row["Δ Global Acc"] = 6.0  # more flips with more accuracy (p 0.0091 each): read together
    assert verdict_sentences([row], "none")[1].endswith(
        "**more sensitive** (flip rate +0.0600 ± 0.0248, p 0.0091) alongside higher accuracy: a model that "
        "learned less has fewer decisions a perturbation can flip, so read the two together."
    )
    row["Δ Global Acc"] = 0.0
    lead, holm_adjusted = verdict_sentences([row])
    assert "worst client, gap, JFI, global accuracy and flip rate of each of its 1 row over" in lead
    assert holm_adjusted.endswith("**more sensitive** (flip rate +0.0600 ± 0.0248, p 0.046).")  # 0.0091 x 5


def test_the_audit_is_paired_with_each_control_on_the_same_seeds():
    """gamma=2 against uniform and against q-FFL (q=1), not against FedAvg (the first table's) nor controls
    against each other. Uniform's worst client 64 and 60 against Fed-AuditGAN's 70 and 66: +6 on both seeds
    (half-width 0: the sign test's p 2 x 0.5^2 = 0.5, no verdict); q-FFL's 50, 70: +20 and -4, mean 8, half
    12.706 * 12 = 152.47."""
    rows = ROWS + [
        _round("uniform", None, 1, 2, 79.0, 0.94, 64.0, 22.0),
        _round("uniform", None, 2, 2, 83.0, 0.90, 60.0, 29.0),
        {**_round("qffl", None, 1, 2, 70.0, 0.80, 50.0, 40.0), "q": 1.0},
        {**_round("qffl", None, 2, 2, 75.0, 0.99, 70.0, 15.0), "q": 1.0},
    ]
    runs = [FedAvg(), Uniform(), QFedAvg(1.0), FedAuditGan(2.0)]
    paired = {(r["Method"], r["vs"]): r for r in control_differences(rows, runs)}
    assert sorted(paired) == [("gamma=2", "Uniform"), ("gamma=2", "q=1")]
    uniform = paired[("gamma=2", "Uniform")]
    assert (uniform["Pairs"], uniform["Δ Worst client"], uniform["Δ Worst client ±"]) == (2, 6.0, 0.0)
    assert uniform["Δ Global Acc"] == pytest.approx(2.0) and uniform["Δ Gap"] == pytest.approx(-3.0)
    qffl = paired[("gamma=2", "q=1")]
    assert qffl["Δ Worst client"] == pytest.approx(8.0)
    assert qffl["Δ Worst client ±"] == pytest.approx(12.706205 * 12, rel=1e-6)
    (_, first, _) = verdict_sentences([uniform, qffl])
    assert first.startswith(
        "gamma=2 vs Uniform (2 paired seeds): **no detectable difference in fairness**: worst client +6.00 ± 0.00"
    )
    assert control_differences([r for r in rows if r["method"] != "fedauditgan"], runs) == []


def test_a_fair_baseline_less_fair_than_fedavg_on_the_worst_client_is_flagged():
    """q-FFL exists to raise the worst client; when it comes out significantly below FedAvg there, the summary
    says so and what to try. Worst clients FedAvg 80, 82, 84, q-FFL 50, 54, 52: differences -30, -28, -32, mean
    -30, s = 2, half-width t(0.975, 2) 2 / sqrt(3) = 4.97, p 0.0015 (t = 25.98, 2 degrees of freedom). The note
    gives the p its verdict uses: Holm over the table's 8 figures, six of them constant differences (the sign
    test's 2 x 0.5^3 = 0.25), makes it 8 x 0.0015 = 0.012. Uniform, no fairness method, is not flagged; nor is
    q-FFL where its difference is not significant (-1, +1, 0)."""
    fedavg = [_round("fedavg", None, seed, 2, 75.0, 0.99, worst, 15.0) for seed, worst in zip((1, 2, 3), (80, 82, 84))]
    uniform = [_round("uniform", None, seed, 2, 70.0, 0.9, worst, 40.0) for seed, worst in zip((1, 2, 3), (50, 54, 52))]

    def qffl(worsts):
        return [{**_round("qffl", None, seed, 2, 60.0, 0.9, w, 40.0), "q": 1.0} for seed, w in zip((1, 2, 3), worsts)]

    runs = [FedAvg(), Uniform(), QFedAvg(1.0, 3.795)]
    for correction, p in (("holm", "0.012"), ("none", "0.0015")):
        [note] = unfair_baseline_notes(
            paired_differences(fedavg + uniform + qffl((50, 54, 52)), runs), runs, correction
        )
        assert note.startswith(f"q=1 is less fair than FedAvg on the worst client (-30.00 ± 4.97, p {p}), the opposite")
        assert "try a smaller `qffl.lipschitz`" in note
    assert unfair_baseline_notes(paired_differences(fedavg + uniform + qffl((79, 83, 84)), runs), runs, "none") == []


def test_a_client_a_run_never_served_is_named_and_what_it_does_to_the_worst_client_said():
    """Client 0 is at 0% on its test images at the last round of both seeds under FedAvg and gamma=2 (their
    worst client is 0 throughout, so their difference in it is 0 by construction); uniform reached it in one
    seed, and uniform's 0s at round 1 are not its last round: neither is named. On the train basis nobody is."""

    def rows(method, gamma, test_accuracy):  # (seed, round, client) -> test accuracy
        return [
            {"method": method, "gamma": gamma, "q": None, "seed": seed, "round": rnd, "client": client}
            | {"test_accuracy": acc, "accuracy": 100.0}
            for (seed, rnd, client), acc in test_accuracy.items()
        ]

    served_late = {(s, 1, c): 0.0 for s in (1, 2) for c in (0, 1)} | {(1, 2, 0): 0.0, (1, 2, 1): 90.0}
    client_rows = (
        rows("fedavg", None, {(1, 2, 0): 0.0, (1, 2, 1): 80.0, (2, 2, 0): 0.0, (2, 2, 1): 70.0, (1, 1, 0): 50.0})
        + rows("uniform", None, served_late | {(2, 2, 0): 40.0, (2, 2, 1): 60.0})
        + rows("fedauditgan", 2.0, {(1, 2, 0): 0.0, (1, 2, 1): 100.0, (2, 2, 0): 0.0, (2, 2, 1): 90.0})
    )
    runs = [FedAvg(), Uniform(), FedAuditGan(2.0)]
    note = never_served_note(client_rows, runs, "test")
    assert note.startswith("Client 0 got none of its held-out test images right at the last round in every seed ")
    assert "under FedAvg and gamma=2: the worst client is then 0 in every seed" in note
    assert "between two of them Δ Worst client is 0 by construction" in note and "Uniform" not in note
    only_fedavg = never_served_note(client_rows[:5], runs, "test")
    assert "under FedAvg: " in only_fedavg and "so its worst client shows only that" in only_fedavg
    assert never_served_note(client_rows, runs, "train") is None
    # a client at 0 in every seed, but not the same one (by chance, or each seed on its own federation): the
    # worst client is 0 in every seed all the same
    moving = rows("fedavg", None, {(1, 2, 0): 0.0, (1, 2, 1): 80.0, (2, 2, 0): 70.0, (2, 2, 1): 0.0})
    note = never_served_note(moving + client_rows[5:], runs, "test")
    assert note.startswith(
        "In every seed a client got none of its held-out test images right at the last round under "
        "FedAvg (seed 1: client 0; seed 2: client 1); gamma=2 (seed 1: client 0; seed 2: client 0): the worst "
        "client is then 0 in every seed"
    )


def test_the_per_client_bars_pair_a_client_over_seeds_or_its_rank_where_each_seed_has_its_own_federation():
    """Client 0 of seed 1 and client 0 of seed 2 are one client on a shared federation (a bar over seeds); with a
    federation per seed they are two, so the bars are the worst, middle and best client of each seed."""
    final = {(1, 0): 10.0, (1, 1): 50.0, (1, 2): 30.0, (2, 0): 90.0, (2, 1): 20.0, (2, 2): 60.0}
    client_rows = [
        {"method": "fedavg", "gamma": None, "q": None, "seed": seed, "round": 3, "client": client, "test_accuracy": acc}
        for (seed, client), acc in final.items()
    ] + [{"method": "fedavg", "gamma": None, "q": None, "seed": 1, "round": 2, "client": 0, "test_accuracy": 99.0}]
    by_id = final_client_accuracies(client_rows, FedAvg(), 3, "test_accuracy", ranked=False)
    assert by_id == {0: [10.0, 90.0], 1: [50.0, 20.0], 2: [30.0, 60.0]}
    by_rank = final_client_accuracies(client_rows, FedAvg(), 3, "test_accuracy", ranked=True)
    assert by_rank == {0: [10.0, 20.0], 1: [30.0, 60.0], 2: [50.0, 90.0]}
    assert final_client_accuracies(client_rows, Uniform(), 3, "test_accuracy", ranked=True) == {}


def test_the_drawn_bands_stop_where_the_figures_do():
    """Two seeds at 10% and 60% accuracy: mean 35, t(1) 12.706 x 25 = 317.7, drawn as [0, 100], not [-282.7,
    352.7]; a JFI band stays in [0, 1]; a variance band has no top; a narrow band is left as it is."""
    mean, half = np.array([35.0, 50.0]), np.array([317.65, 2.0])
    low, high = band_edges(mean, half, RANGES["accuracy"])
    assert low.tolist() == [0.0, 48.0] and high.tolist() == [100.0, 52.0]
    assert [x.tolist() for x in band_edges(np.array([0.75]), np.array([0.5]), RANGES["jfi"])] == [[0.25], [1.0]]
    assert band_edges(np.array([500.0]), np.array([900.0]), RANGES["variance"])[1].tolist() == [1400.0]
    assert RANGES["gap"] == RANGES["accuracy"] == (0.0, 100.0)


def test_weight_figures_hand_case():
    figures = weight_figures([0.5, 0.25, 0.25, 0.0], [0.1, -0.1, 0.0, None])  # the 0 is a rejected update
    assert figures["effective_clients"] == pytest.approx(1 / (0.25 + 0.0625 + 0.0625))
    assert figures["max_weight"] == 0.5
    assert figures["score_spread"] == pytest.approx(math.sqrt(0.02 / 3))
    assert weight_figures([0.25] * 4, [None] * 4) == {
        "effective_clients": 4.0,
        "max_weight": 0.25,
        "score_spread": None,
    }


def _client(method, gamma, seed, rnd, weight):
    return {
        "method": method,
        "gamma": gamma,
        "q": None,
        "seed": seed,
        "round": rnd,
        "weight": weight,
        "participated": True,
    }


def test_uniform_weight_note_only_for_audited_runs_within_one_percent():
    """The note says the audit's scores left the weights uniform: Fed-AuditGAN at gamma=2 within 1% is named;
    not at gamma=8, nor uniform, nor q-FFL, whose shares are 1/K at q = 0 by design (and near it at q = 1)."""
    near = [_client("fedauditgan", 2.0, 1, 1, w) for w in (0.3340, 0.3330, 0.3330)]
    far = [_client("fedauditgan", 8.0, 1, 1, w) for w in (0.5, 0.3, 0.2)]
    uniform = [_client("uniform", None, 1, 1, 1 / 3) for _ in range(3)]
    qffl = [_client("qffl", None, 1, 1, w) | {"q": q} for q, w in [(0.0, 1 / 3)] * 3 + [(1.0, 0.3335)] * 3]
    found = uniform_weight_runs(near + far + uniform + qffl)
    assert list(found) == [FedAuditGan(2.0)]
    assert found[FedAuditGan(2.0)] == pytest.approx(0.002)  # |0.334 * 3 - 1|


def test_uniform_weight_note_names_equal_scores_or_a_gamma_too_small():
    from rayfed.fl.report import uniform_weight_note

    def scored(scores, rnd=1):
        return [_client("fedauditgan", 2.0, 1, rnd, 1 / 3) | {"score": s} for s in scores]

    equal = scored([0.0, 0.0, 0.0]) + scored([0.25, 0.25, 0.25], rnd=2)  # equal within each round
    note = uniform_weight_note(FedAuditGan(2.0), 0.0, equal, normalized=True)
    assert "every client scored the same in every round, so no gamma" in note and "raise gamma" not in note
    close = equal + scored([0.001, 0.0, -0.001], rnd=3)  # one round told them apart, by too little for gamma 2
    assert uniform_weight_note(FedAuditGan(2.0), 0.002, close, normalized=True).endswith("`uniform`; raise gamma.")
    assert "(or set `audit.normalize_scores`)" in uniform_weight_note(FedAuditGan(2.0), 0.002, close, normalized=False)


def test_standardised_scores_make_gamma_scale_free():
    scores = [1.0, 2.0, 3.0]  # std = sqrt(2/3)
    assert standardised(scores) == pytest.approx([s / math.sqrt(2 / 3) for s in scores])
    tiny = [s * 1e-3 for s in scores]  # the same ranking at a thousandth of the size
    assert softmax_weights(standardised(tiny), 2.0) == pytest.approx(softmax_weights(standardised(scores), 2.0))
    assert softmax_weights(tiny, 2.0) != pytest.approx(softmax_weights(scores, 2.0))
    assert standardised([0.5, 0.5]) == [0.5, 0.5]


def test_summary_names_how_fed_auditgan_scored_only_where_it_left_the_specification():
    from rayfed.config import load_config
    from rayfed.fl.report import scoring_sentence

    assert scoring_sentence(load_config(None, [])) is None  # the specification's softmax(gamma * S) over logits
    assert scoring_sentence(load_config(None, ["audit.score=decisions", "fl.methods=[fedavg]"])) is None
    normalised = scoring_sentence(load_config(None, ["audit.normalize_scores=true"]))
    assert "logit distance" in normalised and "softmax(gamma * S / std(S))" in normalised
    decisions = scoring_sentence(load_config(None, ["audit.score=decisions", "audit.n_probes=300"]))
    assert "share of the round's 300 probe pairs whose predicted class differs" in decisions
    assert "weights softmax(gamma * S)." in decisions


def test_summary_says_the_bias_column_is_of_the_model_entering_the_last_round():
    from rayfed.config import load_config
    from rayfed.fl.report import bias_sentence

    assert bias_sentence(load_config(None, ["fl.methods=[fedavg]"])) is None
    said = bias_sentence(load_config(None, []))
    assert "last round's B_base" in said and "model entering the round (Theta_old" in said


def test_uniform_strategy_averages_the_models():
    theta = {"w": torch.tensor([0.0, 0.0]), "n": torch.tensor(4)}
    updates = [
        LocalResult(0, 10, {"w": torch.tensor([1.0, 0.0]), "n": torch.tensor(2)}, 1.0),
        LocalResult(1, 90, {"w": torch.tensor([0.0, 3.0]), "n": torch.tensor(2)}, 1.0),
    ]
    decision = Uniform().aggregate(theta, updates, None)
    assert decision.weights == [0.5, 0.5]  # 1/K, whatever the sizes (FedAvg: 0.1, 0.9)
    assert torch.allclose(decision.state["w"], torch.tensor([0.5, 1.5]))
    assert decision.state["n"].item() == 6 and decision.state["n"].dtype == torch.int64
    assert FedAvg().aggregate(theta, updates, None).weights == pytest.approx([0.1, 0.9])


def test_registry_names_labels_and_rows_round_trip():
    assert {"fedavg", "uniform", "fedauditgan"} <= set(REGISTRY)
    assert FedAuditGan(2.0).label == "gamma=2" and FedAuditGan(2.0).file_label == "fedauditgan_gamma2"
    assert strategy_for("fedauditgan", {"gamma": 8.0, "q": None}) == FedAuditGan(8.0)
    assert strategy_for("uniform", {"gamma": None}) == Uniform()


def test_largest_test_subset_hand_case():
    client = np.array([0, 0, 0, 1])  # shares 0.75, 0.25
    test = np.array([0] * 30 + [1] * 5 + [2] * 40)
    assert largest_test_size(client, test, 3) == 20  # min(30 / 0.75, 5 / 0.25)
    picked = client_test_indices(client, test, "max", 3, np.random.RandomState(0))
    assert len(picked) == 20 and len(set(picked.tolist())) == 20  # no image repeated
    assert np.bincount(test[picked], minlength=3).tolist() == [15, 5, 0]


def test_select_clients_count_or_fraction():
    assert select_clients(10, None, None, 0, 1) == list(range(10))
    one = select_clients(10, 1, None, 0, 1)
    assert len(one) == 1
    assert len(select_clients(10, None, 1.0, 0, 1)) == 10 and len(select_clients(10, None, 0.3, 0, 1)) == 3


# ---------------------------------------------------------------------------------------------- q-FFL


def test_qffl_two_client_hand_case():
    """One parameter w = 1, L = 10, q = 2, F = (2, 1), dw = (-0.1, 0.2):
    dW_k = -L dw_k = (1, -2); Delta_k = F_k^2 dW_k = (4, -2), sum 2;
    h_k = q F_k^(q-1) dW_k^2 + L F_k^q = (2*2*1 + 10*4, 2*1*4 + 10*1) = (44, 18); w' = 1 - 2 / 62."""
    from rayfed.fl.strategies.qffl import QFedAvg, loss_shares, qffl_step

    state = {"w": torch.tensor([1.0])}
    deltas = [{"w": torch.tensor([-0.1])}, {"w": torch.tensor([0.2])}]
    new = qffl_step(state, deltas, [2.0, 1.0], q=2.0, lipschitz=10.0, parameters=["w"])
    assert new["w"].item() == pytest.approx(1.0 - 2.0 / 62.0, rel=1e-6)
    assert loss_shares([2.0, 1.0], 2.0) == pytest.approx([0.8, 0.2])
    updates = [LocalResult(0, 5, deltas[0], 2.0), LocalResult(1, 5, deltas[1], 1.0)]
    decision = QFedAvg(2.0, 10.0).aggregate(state, updates, None, frozenset())
    assert decision.state["w"].item() == pytest.approx(1.0 - 2.0 / 62.0, rel=1e-6)
    assert decision.weights == pytest.approx([0.8, 0.2])


def test_auto_lipschitz_turns_a_constant_gradient_s_local_steps_back_into_that_gradient():
    """qffl.lipschitz: auto is the L at which L (w^t - w_k) is the client's gradient when it holds through its
    local steps: on a linear loss g.w (a constant gradient) torch's momentum SGD, `sgd_epochs`' optimizer, runs
    tau steps and L (w_0 - w_tau) gives g back; at one step of plain SGD L is the paper's 1/lr."""
    from rayfed.fl.strategies.qffl import GradientMatchingLipschitz, heavy_ball_displacement
    from rayfed.training import sgd

    assert heavy_ball_displacement(3, 0.5) == pytest.approx(1 + 1.5 + 1.75)  # v_t = 1, 1.5, 1.75
    assert heavy_ball_displacement(4, 0.0) == 4.0
    g = torch.tensor([0.3, -1.2, 2.0])
    for epochs, samples, momentum in [(3, 46, 0.9), (2, 17, 0.5), (1, 16, 0.0)]:
        w = torch.zeros(3, requires_grad=True)
        optimizer = sgd([w], torch.device("cpu"), lr=0.01, momentum=momentum)
        steps = epochs * (samples // 16 + (samples % 16 > 1))  # a last batch of one joins the one before
        for _ in range(steps):
            optimizer.zero_grad()
            (g * w).sum().backward()
            optimizer.step()
        lipschitz = GradientMatchingLipschitz(lr=0.01, momentum=momentum, epochs=epochs, batch_size=16)([samples])
        torch.testing.assert_close(lipschitz * (0 - w.detach()), g, rtol=1e-5, atol=1e-6)
    assert GradientMatchingLipschitz(lr=0.01, momentum=0.0, epochs=1, batch_size=16)([16]) == pytest.approx(100.0)


def test_auto_lipschitz_hand_case_and_the_step_it_gives():
    """Clients of 24 and 46 samples, batch 16, 3 epochs: tau = 6 and 9 steps; at momentum 0.9
    m(6) = 1 + 1.9 + 2.71 + 3.439 + 4.0951 + 4.68559 = 17.82969, m(9) = m(6) + 5.217031 + 5.6953279 + 6.12579511
    = 34.86784401; L = 1 / (0.01 (m(6) + m(9)) / 2) = 3.795244. The strategy steps with that L, its config default."""
    from rayfed.config import load_config
    from rayfed.fl.strategies.qffl import GradientMatchingLipschitz, QFedAvg, qffl_step

    config = load_config(None, ["fl.methods=[qffl]"])
    [run] = QFedAvg.runs(config)
    assert run.lipschitz == GradientMatchingLipschitz(lr=0.01, momentum=0.9, epochs=3, batch_size=16)
    assert run.lipschitz([24, 46]) == pytest.approx(1 / (0.01 * (17.82969 + 34.86784401) / 2), rel=1e-9)
    assert run.lipschitz([24, 46]) == pytest.approx(3.795244, rel=1e-6)
    state = {"w": torch.tensor([1.0, -1.0])}
    deltas = [{"w": torch.tensor([-0.1, 0.3])}, {"w": torch.tensor([0.2, 0.1])}]
    updates = [LocalResult(0, 24, deltas[0], 2.0), LocalResult(1, 46, deltas[1], 1.0)]
    expected = qffl_step(state, deltas, [2.0, 1.0], q=1.0, lipschitz=3.795244, parameters=["w"])
    torch.testing.assert_close(run.aggregate(state, updates, None).state["w"], expected["w"], rtol=1e-6, atol=0)
    paper = QFedAvg.runs(load_config(None, ["fl.methods=[qffl]", "qffl.lipschitz=null"]))[0]
    assert paper.lipschitz == pytest.approx(100.0)


def test_qffl_with_q_0_is_the_uniform_average_of_the_models():
    from rayfed.fl.strategies.qffl import QFedAvg

    torch.manual_seed(0)
    theta = {
        "conv.weight": torch.randn(3, 2),
        "bn.running_mean": torch.randn(3),
        "bn.num_batches_tracked": torch.tensor(10),
    }
    updates = [
        LocalResult(
            i,
            10 * (i + 1),
            {
                "conv.weight": torch.randn(3, 2),
                "bn.running_mean": torch.randn(3),
                "bn.num_batches_tracked": torch.tensor(3),
            },
            float(i + 1),
        )
        for i in range(3)
    ]
    buffers = frozenset({"bn.running_mean", "bn.num_batches_tracked"})
    qffl = QFedAvg(0.0, 1 / 0.01).aggregate(theta, updates, None, buffers)
    uniform = Uniform().aggregate(theta, updates, None)
    for key in theta:
        torch.testing.assert_close(qffl.state[key], uniform.state[key], rtol=1e-6, atol=1e-7)
    assert qffl.weights == pytest.approx([1 / 3] * 3)


def test_qffl_gives_high_loss_clients_more_weight_as_q_grows():
    from rayfed.fl.strategies.qffl import loss_shares

    shares = [loss_shares([0.5, 1.0, 2.0], q) for q in (0.0, 1.0, 5.0)]
    assert shares[0] == pytest.approx([1 / 3] * 3)
    assert shares[1][2] > shares[0][2] and shares[2][2] > 0.9  # the worst client dominates at q = 5


# ---------------------------------------------------------------------------------------------- TERM


def test_term_two_client_hand_case():
    """One parameter w = 1, t = 1, F = (2, 1), dw = (-0.1, 0.2): alpha = (e^2, e^1) / (e^2 + e^1) =
    (e / (e + 1), 1 / (e + 1)) = (0.7310586, 0.2689414); w' = 1 - 0.1 * 0.7310586 + 0.2 * 0.2689414 = 0.9806824.
    At t = 0 the weights are 1/K whatever the losses; at t = 20 the worse client has all but e^-20 of them."""
    from rayfed.fl.strategies.term import TiltedAverage

    state = {"w": torch.tensor([1.0])}
    updates = [
        LocalResult(0, 5, {"w": torch.tensor([-0.1])}, 2.0),
        LocalResult(1, 50, {"w": torch.tensor([0.2])}, 1.0),  # size plays no part
    ]
    decision = TiltedAverage(1.0).aggregate(state, updates, None, frozenset())
    assert decision.weights == pytest.approx([math.e / (math.e + 1), 1 / (math.e + 1)], rel=1e-12)
    assert decision.weights == pytest.approx([0.7310586, 0.2689414], abs=1e-7)
    assert decision.state["w"].item() == pytest.approx(0.9806824, abs=1e-7)
    assert TiltedAverage(0.0).aggregate(state, updates, None).weights == pytest.approx([0.5, 0.5])
    assert TiltedAverage(20.0).aggregate(state, updates, None).weights[1] == pytest.approx(math.exp(-20), rel=1e-6)


@pytest.mark.parametrize(
    "run, column, key",
    [
        pytest.param(("term", 1.0), "tilt", "term.tilt", id="term"),
        pytest.param(("afl", 1.0), "lambda_lr", "afl.lambda_lr", id="afl"),
    ],
)
def test_loss_weighted_methods_are_controls_of_fed_auditgan_and_flagged_when_less_fair_than_fedavg(run, column, key):
    """TERM and AFL weigh by the clients' losses what Fed-AuditGAN weighs by their audit scores: the summary sets
    each gamma against them as against uniform; and, methods built for fairness, they are flagged where they
    lower the worst client (80, 82, 84 under FedAvg, 50, 54, 52 under the method: -30 ± 4.97, p 0.0015
    unadjusted)."""
    method, value = run
    control = REGISTRY[method](value)
    fedavg = [_round("fedavg", None, seed, 2, 75.0, 0.99, worst, 15.0) for seed, worst in zip((1, 2, 3), (80, 82, 84))]
    rows = [
        {**_round(method, None, seed, 2, 60.0, 0.9, w, 40.0), column: value} for seed, w in zip((1, 2, 3), (50, 54, 52))
    ]
    gan = [_round("fedauditgan", 2.0, seed, 2, 70.0, 0.95, 60.0, 20.0) for seed in (1, 2, 3)]
    runs = [FedAvg(), control, FedAuditGan(2.0)]
    controls = control_differences(fedavg + rows + gan, runs)
    assert [(row["Method"], row["vs"]) for row in controls] == [("gamma=2", f"{column}=1")]
    assert controls[0]["Δ Worst client"] == pytest.approx(8.0)
    [note] = unfair_baseline_notes(paired_differences(fedavg + rows, runs), runs, "none")
    assert note.startswith(f"{column}=1 is less fair than FedAvg on the worst client (-30.00 ± 4.97, p 0.0015)")
    assert f"swings from one to the next (rounds.parquet's `max_weight`): try a smaller `{key}`" in note


# ---------------------------------------------------------------------------------------------- AFL


def test_simplex_projection_hand_cases():
    """(1.5, 1.0): theta = (2.5 - 1) / 2 = 0.75, so (0.75, 0.25); (2.5, 1.0): only the first stays, theta = 1.5,
    so (1, 0); a point on the simplex stays; a point below it moves up evenly; and random points agree with a
    bisection on theta."""
    from rayfed.fl.strategies.afl import project_to_simplex

    assert project_to_simplex(np.array([1.5, 1.0])) == pytest.approx([0.75, 0.25], abs=1e-15)
    assert project_to_simplex(np.array([2.5, 1.0])) == pytest.approx([1.0, 0.0], abs=1e-15)
    assert project_to_simplex(np.array([0.2, 0.5, 0.3])) == pytest.approx([0.2, 0.5, 0.3], abs=1e-15)
    assert project_to_simplex(np.array([0.2, 0.3, 0.2])) == pytest.approx([0.3, 0.4, 0.3], abs=1e-15)
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.normal(0, 2, size=7)
        assert project_to_simplex(v) == pytest.approx(simplex_projection_by_bisection(v), abs=1e-9)


def test_afl_hand_case_weights_from_the_carried_mixture_and_ascent_on_the_losses():
    """N = 4 clients, the round holds clients 0 and 2 (m = 2), lambda = (0.4, 0.3, 0.1, 0.2) carried in:
    alpha = (0.4, 0.1) / 0.5 = (0.8, 0.2); w' = 1 + 0.8 * (-0.1) + 0.2 * 0.2 = 0.96 (sizes play no part).
    With eta = 0.1 and F = (2, 1): v = (4 / 2) (2, 0, 1, 0) = (4, 0, 2, 0), lambda + eta v =
    (0.8, 0.3, 0.3, 0.2), sum 1.6; all four stay positive, theta = 0.6 / 4 = 0.15: lambda' = (0.65, 0.15, 0.15,
    0.05). The first round starts from the uniform 1/N; eta = 0 never leaves it."""
    from rayfed.fl.strategies.afl import AgnosticAverage

    state = {"w": torch.tensor([1.0])}
    updates = [
        LocalResult(0, 5, {"w": torch.tensor([-0.1])}, 2.0),
        LocalResult(2, 50, {"w": torch.tensor([0.2])}, 1.0),
    ]
    decision = AgnosticAverage(0.1, 4).aggregate(state, updates, None, frozenset(), [0.4, 0.3, 0.1, 0.2])
    assert decision.weights == pytest.approx([0.8, 0.2], abs=1e-12)
    assert decision.state["w"].item() == pytest.approx(0.96, abs=1e-7)
    assert decision.carried == pytest.approx([0.65, 0.15, 0.15, 0.05], abs=1e-12)
    first = AgnosticAverage(0.1, 4).aggregate(state, updates, None)
    assert first.weights == pytest.approx([0.5, 0.5]) and sum(first.carried) == pytest.approx(1.0)
    # from 1/4 each: (0.25, 0.25, 0.25, 0.25) + 0.1 (4, 0, 2, 0) = (0.65, 0.25, 0.45, 0.25), theta 0.15
    assert first.carried == pytest.approx([0.5, 0.1, 0.3, 0.1], abs=1e-12)
    assert AgnosticAverage(0.0, 4).aggregate(state, updates, None).carried == pytest.approx([0.25] * 4)


def test_afl_leaves_the_model_where_it_is_when_the_mixture_gives_the_round_nothing():
    """lambda = (1, 0, 0): a round of clients 1 and 2 has no weight to share; Theta stays, lambda still ascends
    (v = (3/2) (0, F_1, F_2))."""
    from rayfed.fl.strategies.afl import AgnosticAverage

    state = {"w": torch.tensor([1.0])}
    updates = [LocalResult(1, 5, {"w": torch.tensor([-0.1])}, 2.0), LocalResult(2, 5, {"w": torch.tensor([0.2])}, 2.0)]
    decision = AgnosticAverage(0.1, 3).aggregate(state, updates, None, frozenset(), [1.0, 0.0, 0.0])
    assert decision.weights == [0.0, 0.0] and decision.state["w"].item() == 1.0
    # (1, 0.3, 0.3), sum 1.6, theta 0.2: (0.8, 0.1, 0.1)
    assert decision.carried == pytest.approx([0.8, 0.1, 0.1], abs=1e-12)


def test_the_mixture_afl_left_is_summarised_by_its_spread_and_largest_share_hand_case():
    """Two seeds, 3 clients, the last round's lambda: seed 1 (0.5, 0.25, 0.25): 1/sum lambda^2 = 1/0.375 = 8/3;
    seed 2 (0.2, 0.6, 0.2): 1/0.44 = 25/11. Spread 2.470 ± 12.706 * 0.197 = 2.5 ± 2.5 (t 12.706, sem = half the
    difference), largest share 0.55 ± 12.706 * 0.05 = 0.550 ± 0.635; the largest is client 0's in seed 1 and
    client 1's in seed 2. Round 1 is not the last; FedAvg carries no mixture (null, NaN as pandas reads it);
    eta 0 stays uniform: every client alike, 3 of 3."""
    from rayfed.fl.report import mixture_note
    from rayfed.fl.strategies.afl import AgnosticAverage

    def rows(method, value, seed, rnd, mixture):
        return [
            {"method": method, "lambda_lr": value, "seed": seed, "round": rnd, "client": client, "mixture": share}
            for client, share in enumerate(mixture)
        ]

    afl = (
        rows("afl", 0.1, 1, 1, [1.0, 0.0, 0.0])
        + rows("afl", 0.1, 1, 2, [0.5, 0.25, 0.25])
        + rows("afl", 0.1, 2, 2, [0.2, 0.6, 0.2])
    )
    fedavg = rows("fedavg", None, 1, 2, [None] * 3) + rows("fedavg", None, 2, 2, [math.nan] * 3)
    runs = [FedAvg(), AgnosticAverage(0.1, 3), AgnosticAverage(0.0, 3)]
    note = mixture_note(fedavg + afl, runs)
    assert note == (
        "The mixture AFL carries at the last round (`mixture` in clients.parquet; 1/Σλ² clients, 3 when uniform, 1 "
        "when one client holds it all): lambda_lr=0.1 spreads over 2.5 ± 2.5 of the 3 clients and gives its largest "
        "share, 0.550 ± 0.635, to clients that differ by seed (seed 1: client 0; seed 2: client 1)."
    )
    assert mixture_note(fedavg, runs) is None
    uniform = rows("afl", 0.0, 1, 2, [1 / 3] * 3) + rows("afl", 0.0, 2, 2, [1 / 3] * 3)
    assert mixture_note(uniform, runs).endswith(
        "lambda_lr=0 spreads over 3.0 ± 0.0 of the 3 clients and gives its largest share, 0.333 ± 0.000, to every "
        "client alike in every seed."
    )


def test_classes_no_client_holds_and_the_global_accuracy_they_cap_hand_case():
    from rayfed.config import load_config
    from rayfed.data import ImageData
    from rayfed.fl.report import unheld_classes_sentence
    from rayfed.fl.setup import ClientData, Federation

    train_y, test_y = torch.tensor([0, 2, 2]), torch.tensor([0, 0, 1, 2, 2, 2])  # class 1: 1 of 6 test images
    data = ImageData(
        "hand", torch.zeros(3, 1, 2, 2), train_y, torch.zeros(6, 1, 2, 2), test_y, (0.0,), (1.0,), 4, False
    )
    clients = [
        ClientData(0, data.train_x[:1], train_y[:1], np.array([0])),
        ClientData(1, data.train_x[1:], train_y[1:], np.array([3])),
    ]
    federation = Federation(data, None, clients)
    assert federation.unheld_classes == [1, 3]  # class 3 has no test image either
    assert federation.held_test_percent == pytest.approx(500 / 6)
    everyone = Federation(data, None, [ClientData(0, data.train_x, torch.tensor([0, 1, 2]), np.array([0]))])
    assert everyone.unheld_classes == [3] and everyone.held_test_percent == 100.0
    config = load_config(None, ["data.num_clients=2"])
    sentence = unheld_classes_sentence(config, federation.unheld_classes, federation.held_test_percent)
    assert sentence.startswith("Classes 1, 3 are in no client's training data (`data.partition: extreme`, 2 clients)")
    assert "stays below about 83.33%" in sentence
    assert unheld_classes_sentence(config, [7], 90.0).startswith("Class 7 is in no client's")
    assert "no method can learn it, so" in unheld_classes_sentence(config, [7], 90.0)
    assert "no method can learn them, so" in sentence
    assert unheld_classes_sentence(config, [], 100.0) is None
