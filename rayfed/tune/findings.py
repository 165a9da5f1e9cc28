"""What a sweep shows, in sentences printed after its best trial: each reads the sweep table (one row per
trial, as in sweep.parquet) and says what the trials' figures support.

- both: whether the best trial is separated from the runner-up by their 95% intervals over seeds, and what
  its chosen-on figure is worth: chosen on the validation split, its test figure is the unbiased one to
  report; chosen on a test figure, that figure is optimistic (the best of several draws on the same images).
- sisa sweeps: whether every trial forgot exactly, and the trade-off between accuracy after unlearning and the
  unlearning speedup: the trials no other trial beats on both (the Pareto front of the grid).
"""

from __future__ import annotations

import pandas as pd

from rayfed.fl.metrics import FAIRNESS_FIGURES
from rayfed.fl.rows import HELD_OUT_FIGURES
from rayfed.tune.spec import RUN_METRICS

FRONT_METRICS = ("unlearned_accuracy", "speedup_samples")
"""The two figures a SISA configuration trades: accuracy after unlearning (%) and samples saved (x), both up."""


def _reported(table: pd.DataFrame, metrics: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """The trials that finished without error and reported every one of `metrics`."""
    if not set(metrics) <= set(table.columns):
        return table.iloc[:0]
    return table[table["status"] != "ERROR"].dropna(subset=list(metrics))


def ranked_trials(table: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """The trials that ran to the end (TERMINATED) and reported `metric`, best first: an fl trial that ASHA
    stopped early reports an earlier round's figure, not comparable with the others' last round, and an
    interrupted one has not finished."""
    finished = _reported(table[table["status"] == "TERMINATED"], [metric])
    return finished.sort_values(metric, ascending=mode == "min", kind="stable")


def _named(row: pd.Series, params: list[str]) -> str:
    return f"{row['trial_id']} ({', '.join(f'{k}={row[k]}' for k in params)})"


def ranking_sentence(table: pd.DataFrame, metric: str, mode: str, params: list[str]) -> str | None:
    """Whether a sweep separates its best trial from the runner-up by `metric`: their 95% intervals over
    seeds (`<metric>_ci`) apart or overlapping; without intervals, that the ranking is a single draw (one seed a
    trial) or of each trial's worst seed (a sisa figure such as `exact`). None with fewer than two trials that
    ran to the end and reported `metric` (`ranked_trials`)."""
    ranked = ranked_trials(table, metric, mode)
    if len(ranked) < 2:
        return None
    best, second = ranked.iloc[0], ranked.iloc[1]
    runner_up = f"the runner-up {_named(second, params)}"
    ci = f"{metric}_ci"
    seeds = int(best["seeds"]) if "seeds" in ranked and pd.notna(best["seeds"]) else 1
    if ci not in ranked or pd.isna(best[ci]) or pd.isna(second[ci]):
        if seeds > 1:  # a figure kept as its worst seed's (rayfed.sisa.seeds.WORST_OVER_SEEDS): no interval
            return (
                f"By {metric}, the worst of each trial's {seeds} seeds, which has no interval: the best trial "
                f"{best['trial_id']}'s {best[metric]:.4g} against {runner_up}'s {second[metric]:.4g}."
            )
        return (
            f"One seed a trial: the ranking by {metric} is a single draw ({best[metric]:.4g} against "
            f"{runner_up}'s {second[metric]:.4g}); `seeds: 3` or more in the base config gives intervals."
        )
    apart = abs(best[metric] - second[metric]) > best[ci] + second[ci]
    where = ""  # a table from before `federations` was reported says nothing of them
    if "federations" in ranked and pd.notna(best["federations"]):
        where = ", each on its own federation" if int(best["federations"]) == seeds else " on one federation"
    return (
        f"By {metric}, the best trial {best['trial_id']}'s {best[metric]:.4g} ± {best[ci]:.2g} against {runner_up}'s "
        f"{second[metric]:.4g} ± {second[ci]:.2g} (95% intervals over {seeds} seeds{where}): "
        + (
            "the intervals are apart, so the sweep separates them."
            if apart
            else "the intervals overlap, so the sweep does not separate them; more seeds might."
        )
    )


TEST_FIGURES = {
    "fl": ("accuracy", *FAIRNESS_FIGURES, *HELD_OUT_FIGURES),
    "sisa": ("accuracy", "f1", "auroc", "unlearned_accuracy", "retrained_accuracy", "unsharded_accuracy"),
}
"""The figures each run measures on the test set (fl's fairness figures when `fairness_basis` is test)."""


def _test_basis(table: pd.DataFrame, metric: str) -> bool:
    """Whether `metric` is read off the test images in these trials."""
    if metric in ("accuracy", *HELD_OUT_FIGURES) or "fairness_basis" not in table:
        return True
    return bool((table["fairness_basis"] == "test").all())


def selection_sentence(run: str, table: pd.DataFrame, metric: str, mode: str) -> str | None:
    """What the best trial's figure is worth as a report. Chosen on a `val_*` figure: its test twin, which the
    choice never saw, is the one to report. Chosen on a test figure: that figure is optimistic, the best of
    the trials' draws on the same images, and the sentence says how to choose on validation instead. None
    with fewer than two trials that reported `metric` (no choice made), for a metric off the test set, or for a
    `val_*` metric whose twin is not measured on the test set."""
    ranked = ranked_trials(table, metric, mode)
    if len(ranked) < 2:
        return None
    best = ranked.iloc[0]

    def figure(name: str) -> str:
        ci = best.get(f"{name}_ci")
        return f"{best[name]:.4g}" + ("" if ci is None or pd.isna(ci) else f" ± {ci:.2g}")

    if metric.startswith("val_"):
        twin = metric.removeprefix("val_")
        if twin not in best or pd.isna(best[twin]) or not _test_basis(ranked, twin):
            return None  # no test twin to name (train-basis fairness figures are not one)
        return (
            f"Chosen on the validation split ({metric} {figure(metric)}): the test images took no part in the "
            f"choice, so the best trial's test {twin}, {figure(twin)}, is the unbiased figure to report for it."
        )
    if metric not in TEST_FIGURES[run] or not _test_basis(ranked, metric):
        return None
    advice = (
        f"choose on validation instead (base `data.validation_fraction: 0.1`, `tune_config.metric: val_{metric}`) "
        "and report the chosen trial's test figure"
        if f"val_{metric}" in RUN_METRICS[run]
        else "confirm it on images the sweep did not see before reporting it"
    )
    return (
        f"Chosen on the test set: the best trial's {metric}, {figure(metric)}, is the best of {len(ranked)} trials' "
        f"draws on the same test images, so it overstates what its settings give on new images; {advice}."
    )


def exactness_sentence(table: pd.DataFrame, params: list[str]) -> str | None:
    """Whether every sisa trial's unlearned ensemble has, bit for bit, the weights of its reference retrained
    from scratch (`exact`, from each trial's exactness.parquet), naming the trials where it has not. None when
    no trial finished."""
    finished = table[table["status"] == "TERMINATED"]
    if finished.empty:
        return None
    checked = _reported(finished, ["exact"])
    if checked.empty:
        return "Exactness not checked in any trial (`unlearn.verify: false`)."
    unchecked = len(finished) - len(checked)
    tail = f" ({unchecked} trial(s) did not check it)." if unchecked else "."
    inexact = checked[checked["exact"] < 1]
    if inexact.empty:
        every = f"Every trial ({len(checked)})" if not unchecked else f"Every checked trial ({len(checked)})"
        return (
            f"{every} forgot exactly: its unlearned ensemble has, bit for bit, the weights of an ensemble retrained "
            f"from scratch without the forgotten points{tail}"
        )
    listed = "; ".join(
        f"{_named(row, params)}: class probabilities differ by up to {row['max_probability_difference']:.3g}"
        for _, row in inexact.iterrows()
    )
    return (
        f"**Not exact** in {len(inexact)} of {len(checked)} checked trials: {listed}; each trial's summary.md says "
        f"what fixes it{tail}"
    )


def tradeoff_sentence(table: pd.DataFrame, params: list[str]) -> str | None:
    """The trials of a sisa sweep that no other trial beats on both accuracy after unlearning and unlearning
    speedup (the Pareto front), from the most accurate to the cheapest, and how many trials they beat. None
    with fewer than two trials that reported both figures."""
    accuracy, speedup = FRONT_METRICS
    trials = _reported(table, FRONT_METRICS)
    if len(trials) < 2:
        return None

    def beaten(row: pd.Series) -> bool:  # some other trial at least as good on both, better on one
        at_least = (trials[accuracy] >= row[accuracy]) & (trials[speedup] >= row[speedup])
        better = (trials[accuracy] > row[accuracy]) | (trials[speedup] > row[speedup])
        return bool((at_least & better).any())

    front = trials[[not beaten(row) for _, row in trials.iterrows()]]
    front = front.sort_values([accuracy, speedup], ascending=[False, True], kind="stable")
    seeds = int(trials["seeds"].min()) if "seeds" in trials and trials["seeds"].notna().all() else 1
    single = " (one run a trial: each accuracy is a single draw)"
    caveat = f" (means over {seeds} seeds a trial)" if seeds > 1 else single
    if len(front) == 1:
        [best] = [row for _, row in front.iterrows()]
        return (
            f"{_named(best, params)} has both the highest accuracy after unlearning ({best[accuracy]:.2f}%) and the "
            f"highest unlearning speedup ({best[speedup]:.3g}x over retraining the ensemble): no trade-off in this "
            f"sweep{caveat}."
        )
    listed = "; ".join(
        f"{_named(row, params)} {row[accuracy]:.2f}% at {row[speedup]:.3g}x" for _, row in front.iterrows()
    )
    others = len(trials) - len(front)
    return (
        f"Accuracy after unlearning against unlearning speedup (samples, over retraining the ensemble): {len(front)} "
        f"of {len(trials)} trials trade one for the other, no trial beating them on both: {listed}"
        + {0: "", 1: "; the other trial is beaten on both by one of these"}.get(
            others, f"; each of the other {others} is beaten on both by one of these"
        )
        + f"{caveat}."
    )


def sweep_findings(run: str, table: pd.DataFrame, metric: str, mode: str, params: list[str]) -> list[str]:
    """The sentences printed after a sweep's best trial: fl, the ranking's separation and what the chosen
    figure is worth; sisa, exactness, the same two and the accuracy-speedup trade-off."""
    if run == "fl":
        found = [ranking_sentence(table, metric, mode, params), selection_sentence(run, table, metric, mode)]
    else:
        found = [exactness_sentence(table, params), ranking_sentence(table, metric, mode, params)]
        found += [selection_sentence(run, table, metric, mode), tradeoff_sentence(table, params)]
    return [sentence for sentence in found if sentence]
