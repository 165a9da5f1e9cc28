"""What a `rayfed sisa` run shows, in sentences: summary.md's first section. Each reads the run's own tables
(lists of row dicts, as written to Parquet) and states a figure beside the reference that gives it its meaning:
the unlearned ensemble against one retrained from scratch, the membership attack against the reference and
against its own power, the backdoor against its clean floor, the cost against the shards and slices it had to
retrain."""

from __future__ import annotations

from collections import Counter

Rows = list[dict]

WEAK_BACKDOOR_POINTS = 20.0
"""A backdoor that raises the attack success rate by fewer percentage points than this over the clean floor has
barely taken hold: its removal then shows little."""

DAMAGED_MODEL_POINTS = 5.0
"""An approximate method whose test accuracy falls this many percentage points or more below the model retrained
from scratch has damaged the model: its low forget-set accuracy and attack success then show the damage, not
forgetting."""

MIA_POINTS_FOR_POWER = 100
"""Points a side below which the membership audit's interval is wide (its TPR at 1% FPR is null there too)."""


def _row(rows: Rows, **match: object) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _points(n: int) -> str:
    return f"{n} point" if n == 1 else f"{n} points"


def _auc(row: dict) -> str:
    return f"{row['auc']:.2f} [{row['auc_low']:.2f}, {row['auc_high']:.2f}]"


NOTHING_FORGOTTEN = (
    "Nothing forgotten (`unlearn.forget: 0`): the ensemble is trained and measured, with no unlearning, exactness "
    "check or membership audit to report."
)


def main_aggregation(aggregations: list[str]) -> str:
    """The aggregation that speaks for the ensemble where one must (its sentences, the price of sharding, the
    baselines' comparison): `mean` (the mean softmax) where the run has it, else the first it has."""
    return "mean" if "mean" in aggregations else aggregations[0]


def _aggregation(rows: Rows) -> str:
    """The aggregation whose rows speak for the ensemble (`main_aggregation` of those the rows have)."""
    return main_aggregation([r["aggregation"] for r in rows])


def exactness_finding(exactness: Rows, forgotten: int) -> str:
    """Whether the unlearned ensemble is, weight for weight, the ensemble retrained from scratch without the
    forgotten points, with the device and kernel mode that make that promise hold."""
    if not exactness:
        return "Exactness not checked (`unlearn.verify: false`): no ensemble was retrained from scratch to compare."
    first = exactness[0]
    setting = f"{first['device']}, deterministic kernels {'on' if first['deterministic'] else 'off'}"
    gap = max(r["max_probability_difference"] for r in exactness)
    same = all(r["predictions_equal"] for r in exactness)
    predictions = (
        f"their predictions on the {first['test_points']} test points are identical"
        if same and gap == 0
        else f"their predictions on the {first['test_points']} test points {'agree' if same else 'differ'}, "
        f"class probabilities by up to {gap:.3g}"
    )
    if all(r["weights_equal"] for r in exactness):
        return (
            f"**Forgotten exactly**: every shard of the unlearned ensemble has, bit for bit, the weights of an "
            f"ensemble retrained from scratch without the {_points(forgotten)} ({setting}); {predictions}."
        )
    hint = "" if first["deterministic"] else " `sisa.deterministic: true` (the default) makes them bit-identical."
    return (
        f"**Not exact**: the unlearned ensemble's weights differ from an ensemble retrained from scratch without "
        f"the {_points(forgotten)} ({setting}); {predictions}.{hint}"
    )


def accuracy_finding(metrics: Rows) -> str | None:
    """Test accuracy trained, unlearned and retrained from scratch: what forgetting cost in accuracy, and
    whether the unlearned ensemble matches the reference."""
    ensemble = [r for r in metrics if r["model"] == "ensemble"]
    if not ensemble:
        return None
    agg = _aggregation(ensemble)
    stages = {r["stage"]: r["accuracy"] for r in ensemble if r["aggregation"] == agg}
    if "unlearned" not in stages:
        return None
    text = f"Test accuracy ({agg}): {stages['trained']:.2f}% trained on every point, {stages['unlearned']:.2f}%"
    text += " after unlearning"
    if "retrained" in stages:
        text += f", {stages['retrained']:.2f}% for the ensemble retrained from scratch without them"
    return text + "."


def membership_finding(membership: Rows) -> str | None:
    """The loss-threshold attack on the forgotten points: after unlearning against the reference that never saw
    them (the score to match) and before unlearning; whether the attack could single them out at all, with its
    power on the training points for scale."""
    unlearned = _row(membership, stage="unlearned", comparison="forget_vs_test")
    if unlearned is None:
        return None
    n = unlearned["n"]
    if unlearned["auc_low"] is None:  # fewer than 2 points a side: no interval
        return (
            f"Membership inference on {n} forgotten point(s) has no interval (it needs 2 a side) and shows "
            "nothing: raise `unlearn.forget` for power."
        )
    text = (
        f"Membership inference on the {n} forgotten points against {n} unseen test points (AUC, 95% interval; "
        f"0.5 = indistinguishable): {_auc(unlearned)} after unlearning"
    )
    retrained = _row(membership, stage="retrained", comparison="forget_vs_test")
    if retrained is not None:
        same = all(unlearned[k] == retrained[k] for k in ("auc", "auc_low", "auc_high"))
        matched = ", matched" if same else ""
        text += f", {_auc(retrained)} for the reference that never saw them (the score to match{matched})"
    trained = _row(membership, stage="trained", comparison="forget_vs_test")
    power = _row(membership, stage="trained", comparison="train_vs_test")
    scale = f"; on training points at large it reaches {_auc(power)} (n={power['n']})" if power else ""
    if trained is not None:
        text += f", {_auc(trained)} before unlearning."
        if trained["auc_low"] <= 0.5:
            text += (
                " Before unlearning the attack did not single these points out either (its interval does not "
                "clear 0.5), "
                f"so this comparison alone cannot show forgetting{scale}."
            )
    else:
        text += "."
    if n < MIA_POINTS_FOR_POWER:
        text += f" With {n} points a side the interval is wide: raise `unlearn.forget` for power."
    return text


def backdoor_finding(backdoor: Rows) -> str | None:
    """Attack success after training on poison and after unlearning exactly the poison, against the floor of the
    ensemble that never saw it; a warning when the backdoor barely took hold."""
    if not backdoor:
        return None
    agg = _aggregation(backdoor)
    clean, trained, unlearned = (_row(backdoor, stage=s, aggregation=agg) for s in ("clean", "trained", "unlearned"))
    text = (
        f"Backdoor ({trained['mode']}, {trained['poisoned']} poisoned training images, {agg}): attack success "
        f"{trained['asr']:.1f}% after training on them, {unlearned['asr']:.1f}% after unlearning exactly them, "
        f"against {clean['asr']:.1f}% for the ensemble that never saw poison; clean accuracy "
        f"{trained['clean_accuracy']:.2f}% then {unlearned['clean_accuracy']:.2f}%."
    )
    if trained["asr"] - clean["asr"] < WEAK_BACKDOOR_POINTS:
        text += (
            " The backdoor barely took hold, so its removal shows little: raise `backdoor.poison` or "
            "`backdoor.poison_fraction`."
        )
    return text


def cost_finding(unlearning: Rows, points: Rows, num_shards: int) -> str | None:
    """Which shards the requests retrained and from which slice: why SISA saved what it saved, beside the
    analytic expectation for requests of that size."""
    if not unlearning:
        return None
    starts = {(p["request"], p["shard"]): p["first_slice"] for p in points}
    resumed = Counter(k for k in starts.values() if k > 0)
    scratch = len(starts) - sum(resumed.values())
    requests = len(unlearning)
    retrained = sum(r["shards_retrained"] for r in unlearning)
    touched = (
        f"The request retrained {retrained} of {num_shards} shards"
        if requests == 1
        else f"The {requests} requests retrained {retrained} of {requests * num_shards} shards (shards x requests)"
    )
    if not resumed:
        touched += " from scratch (each held a forgotten point in its first slice)"
    else:
        at = ", ".join(f"slice {k}: {v}" for k, v in sorted(resumed.items()))
        if scratch:
            touched += f", {scratch} from scratch (a forgotten point in the first slice) and {len(starts) - scratch}"
        touched += f" from a checkpoint (resumed at {at}; slices 0-based)"
    sisa = sum(r["samples_processed"] for r in unlearning)
    ensemble = sum(r["ensemble_retrain_samples"] for r in unlearning)
    expected = sum(r["expected_samples"] for r in unlearning)
    return (
        f"{touched}: a {ensemble / max(1, sisa):.2f}x saving in samples over retraining the ensemble "
        f"(expected for requests of these sizes: {ensemble / max(1.0, expected):.2f}x); it saves most when a "
        "request's points fall in few shards and in late slices."
    )


def _backdoor_after(row: dict, reference: dict) -> str:
    """The attack success of an approximate method before and after unlearning the poison, and whether the
    backdoor survived it: still WEAK_BACKDOOR_POINTS or more over the reference that never saw the poison."""
    if row["asr_before"] - reference["asr_after"] < WEAK_BACKDOOR_POINTS:
        verdict = "too weak a backdoor to tell"
    elif row["asr_after"] - reference["asr_after"] >= WEAK_BACKDOOR_POINTS:
        verdict = "**the backdoor survives**"
    else:
        verdict = "the backdoor is gone"
    return (
        f", attack success {row['asr_before']:.1f}% before unlearning the poison and {row['asr_after']:.1f}% after "
        f"({verdict})"
    )


def baselines_finding(baselines: Rows, forgotten: int) -> str | None:
    """Approximate unlearning of one unsharded model (each `unlearn.baselines` method) against the same model
    retrained from scratch without the forgotten points: the figures to match (test and forget-set accuracy;
    with a backdoor, attack success once the poison is unlearned), what each method reached and cost in
    samples (with a validation split, its `val_retrain_gap`), and exact SISA's cost beside them."""
    reference = _row(baselines, method="retrained")
    approximate = [r for r in baselines if not r["exact"]]
    if reference is None or not approximate:
        return None
    backdoor = reference["asr_after"] is not None
    match = f"test accuracy {reference['accuracy']:.2f}%, forget-set accuracy {reference['forget_accuracy']:.1f}%"
    if backdoor:
        match += f", attack success {reference['asr_after']:.1f}% retrained without the poison"

    def reached(row: dict) -> str:
        saving = reference["samples_processed"] / max(1, row["samples_processed"])
        cost = f"{row['method']} {row['samples_processed']} samples ({saving:.1f}x fewer)"
        if row.get("diverged"):
            return f"{cost}, **diverged** (no figures)"
        text = f"{cost}, test accuracy {row['accuracy']:.2f}%"
        below = reference["accuracy"] - row["accuracy"]
        if below >= DAMAGED_MODEL_POINTS:
            text += f" (**{below:.2f} points below the reference: a damaged model**, its low figures not forgetting)"
        text += f", forget-set accuracy {row['forget_accuracy']:.1f}%"
        if row.get("val_retrain_gap") is not None:
            text += f", {row['val_retrain_gap']:.2f} points from the reference (val_retrain_gap)"
        return text + (_backdoor_after(row, reference) if backdoor else "")

    text = (
        f"Approximate unlearning of one unsharded model against it retrained from scratch without the "
        f"{_points(forgotten)} ({reference['samples_processed']} samples; {match}: the figures to match): "
        + "; ".join(reached(r) for r in approximate)
    )
    sisa = _row(baselines, method="sisa")
    if sisa is not None:
        ensemble = f"test accuracy {sisa['accuracy']:.2f}%"
        requests = sisa.get("requests", 1)
        served = f" over its {requests} requests" if requests > 1 else ""
        text += f"; exact SISA {sisa['samples_processed']} samples{served} for its ensemble ({ensemble})"
    gap = any(r.get("val_retrain_gap") is not None for r in approximate)
    return text + (
        f". One forgotten point is {100 / forgotten:.1f} points of forget-set accuracy; a method that keeps it "
        "above the reference's may still remember them (their membership AUCs are in baselines.parquet)"
        + (
            ", and one far below it over-unlearned them. val_retrain_gap is the mean absolute gap to the "
            "reference's forget-set, retained and validation accuracy: choose a method's settings on it "
            "(tune_configs/neggrad_alpha.yaml, scrub_max_epochs.yaml)."
            if gap
            else "."
        )
    )


def sisa_findings(tables: dict[str, Rows], forgotten: int, num_shards: int) -> list[str]:
    """summary.md's sentences, in order: exactness, accuracy, membership, backdoor, cost, approximate baselines
    (those the run has)."""
    found = [exactness_finding(tables["exactness"], forgotten) if forgotten else NOTHING_FORGOTTEN]
    found += [
        accuracy_finding(tables["metrics"]),
        membership_finding(tables["membership"]),
        backdoor_finding(tables["backdoor"]),
        cost_finding(tables["unlearning"], tables["unlearning_points"], num_shards),
        baselines_finding(tables["baselines"], forgotten) if forgotten else None,
    ]
    return [f for f in found if f]
