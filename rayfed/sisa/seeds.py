"""`rayfed sisa` over several seeds (`seeds: n`). Each seed is a whole run in `seed<k>/` (its own layout,
forget set, initial weights, SGD order, poison and audits); this module reads a run's tables into one row of
figures (`run_figures`: also what a Tune trial reports) and says what the seeds show together: each figure's
mean with its 95% Student-t interval, and the paired differences over seeds that carry a conclusion (the price
of sharding, the membership leak before and after unlearning, the backdoor left, each approximate method
against the unsharded model retrained from scratch), in sentences that count a difference only where its
interval excludes 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from rayfed.results import RunDirectory, read_table
from rayfed.sisa.findings import DAMAGED_MODEL_POINTS, NOTHING_FORGOTTEN, WEAK_BACKDOOR_POINTS
from rayfed.stats import mean_interval, signed_interval

SEED_FIGURES = (
    ("accuracy", "test accuracy trained on every point (%)"),
    ("unlearned_accuracy", "test accuracy after unlearning (%)"),
    ("retrained_accuracy", "test accuracy retrained from scratch (%)"),
    ("unsharded_accuracy", "one unsharded model retrained on the same data (%)"),
    ("speedup_samples", "unlearning speedup over retraining the ensemble (samples, x)"),
    ("expected_speedup", "its analytic expectation (x)"),
    ("exact", "exact (1: every shard's weights bit-identical to the reference's)"),
    ("forget_auc", "membership AUC on the forget set, trained"),
    ("unlearned_forget_auc", "membership AUC on the forget set, unlearned"),
    ("retrained_forget_auc", "membership AUC on the forget set, reference"),
    ("train_auc", "membership AUC on training points at large (the attack's power)"),
    ("backdoor_asr", "backdoor attack success, trained on poison (%)"),
    ("unlearned_backdoor_asr", "backdoor attack success, poison unlearned (%)"),
    ("clean_backdoor_asr", "backdoor attack success, never poisoned (%)"),
)
"""Figures of a run (`run_figures` keys) summarised over seeds, with what each is."""


@dataclass(frozen=True)
class Difference:
    """A paired difference over seeds: `minuend` - `subtrahend` of the same seed."""

    name: str
    minuend: str
    subtrahend: str


DIFFERENCES = (
    Difference(
        "price of sharding (after unlearning - one unsharded model retrained), points",
        "unlearned_accuracy",
        "unsharded_accuracy",
    ),
    Difference(
        "after unlearning - retrained from scratch (accuracy, points)", "unlearned_accuracy", "retrained_accuracy"
    ),
    Difference(
        "membership leak before unlearning (forget-set AUC trained - reference)", "forget_auc", "retrained_forget_auc"
    ),
    Difference(
        "membership leak after unlearning (forget-set AUC unlearned - reference)",
        "unlearned_forget_auc",
        "retrained_forget_auc",
    ),
    Difference("backdoor strength (ASR trained - never poisoned), points", "backdoor_asr", "clean_backdoor_asr"),
    Difference(
        "backdoor left (ASR unlearned - never poisoned), points", "unlearned_backdoor_asr", "clean_backdoor_asr"
    ),
)
BASELINE_FIGURES = (
    "accuracy",
    "forget_accuracy",
    "asr_after",
    "samples_processed",
    "retained_accuracy",
    "val_accuracy",
    "val_retrain_gap",
)
"""What `run_figures` reports per unsharded method of baselines.parquet, as `<method>/<figure>` (the `val_` ones
with a validation split: a sweep chooses a method's settings on them)."""


def run_figures(run_dir: RunDirectory, aggregation: str) -> dict[str, float]:
    """One `rayfed sisa` run's final figures from its tables (ensemble figures of `aggregation`): accuracy
    trained, unlearned, retrained and of the unsharded reference, speedups, exactness, membership AUCs, attack
    success, `val_accuracy`, `val_unlearned_accuracy`, `val_retrained_accuracy` with a validation split, and
    `<method>/<figure>` of each unsharded method with `unlearn.baselines`."""

    def table(name: str) -> list[dict[str, Any]]:
        path = run_dir.file(f"{name}.parquet")
        return read_table(path) if path.exists() else []

    figures: dict[str, float] = {}
    prefixes = {"trained": "", "unlearned": "unlearned_", "retrained": "retrained_", "clean": "clean_"}
    for row in table("metrics"):
        if row["model"] == "ensemble" and row["aggregation"] == aggregation:
            prefix = prefixes[row["stage"]]
            figures[f"{prefix}accuracy"] = row["accuracy"]
            if not prefix:
                figures.update(f1=row["f1"], auroc=row["auroc"])
        elif row["model"] == "unsharded" and row["stage"] == "retrained":
            figures["unsharded_accuracy"] = row["accuracy"]
    for row in table("validation"):
        if row["aggregation"] == aggregation:
            figures[f"val_{prefixes[row['stage']]}accuracy"] = row["accuracy"]
    unlearning = table("unlearning")
    if unlearning:  # over all requests: samples of retraining after each one / samples of unlearning
        samples = max(1, sum(r["samples_processed"] for r in unlearning))
        figures["speedup_samples"] = sum(r["ensemble_retrain_samples"] for r in unlearning) / samples
        figures["speedup_vs_unsharded"] = sum(r["unsharded_retrain_samples"] for r in unlearning) / samples
        figures["expected_speedup"] = sum(r["ensemble_retrain_samples"] for r in unlearning) / max(
            1.0, sum(r["expected_samples"] for r in unlearning)
        )
    exactness = table("exactness")
    if exactness:  # exact: every shard's weights bit-identical to the reference retrained from scratch
        figures["exact"] = float(all(r["weights_equal"] for r in exactness))
        figures["max_probability_difference"] = max(r["max_probability_difference"] for r in exactness)
    for row in table("membership"):
        if row["comparison"] == "forget_vs_test" and row["auc"] is not None:
            figures[f"{prefixes[row['stage']]}forget_auc"] = row["auc"]
        elif row["comparison"] == "train_vs_test" and row["stage"] == "trained":
            figures["train_auc"] = row["auc"]
    for row in table("backdoor"):
        if row["aggregation"] == aggregation:
            figures[f"{prefixes[row['stage']]}backdoor_asr"] = row["asr"]
    for row in table("baselines"):
        if row["model"] == "unsharded":
            figures.update({f"{row['method']}/{k}": row[k] for k in BASELINE_FIGURES if row.get(k) is not None})
    return figures


def seed_dir(run_dir: RunDirectory, seed: int) -> RunDirectory:
    """The run directory of one seed of a run over several seeds."""
    return RunDirectory(run_dir.file(f"seed{seed}"))


def seed_rows(run_dir: RunDirectory, seeds: list[int], aggregation: str) -> list[dict[str, float]]:
    """`run_figures` of each seed's run, in the order of `seeds`."""
    return [run_figures(seed_dir(run_dir, seed), aggregation) for seed in seeds]


WORST_OVER_SEEDS = {"exact": min, "max_probability_difference": max}
"""Figures that hold for every seed or none: over seeds the worst seed's, not a mean."""


def figures_over_seeds(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each figure every seed has: its mean with `<figure>_ci` (the 95% Student-t half-width), or for
    WORST_OVER_SEEDS the worst seed's, and `seeds`: what a Tune trial over several seeds reports, as an fl
    trial does."""
    out: dict[str, float] = {"seeds": len(rows)}
    for key in (k for k in rows[0] if all(r.get(k) is not None for r in rows)):
        values = [r[key] for r in rows]
        if key in WORST_OVER_SEEDS:
            out[key] = WORST_OVER_SEEDS[key](values)
        else:
            out[key], out[f"{key}_ci"] = mean_interval(values)
    return out


def _values(rows: list[dict[str, float]], key: str) -> list[float]:
    return [r[key] for r in rows if r.get(key) is not None]


def _paired(rows: list[dict[str, float]], minuend: str, subtrahend: str) -> list[float]:
    return [r[minuend] - r[subtrahend] for r in rows if r.get(minuend) is not None and r.get(subtrahend) is not None]


def approximate_methods(rows: list[dict[str, float]]) -> list[str]:
    """The approximate unlearning methods the seeds ran (`<method>/accuracy` keys other than `retrained`)."""
    methods = {k.split("/")[0] for r in rows for k in r if k.endswith("/accuracy")}
    return sorted(methods - {"retrained"})


def differences(rows: list[dict[str, float]]) -> list[Difference]:
    """DIFFERENCES plus, per approximate method, its figures minus the retrained unsharded model's."""
    extra = [
        Difference(f"{m}: {label} - retrained unsharded model's", f"{m}/{key}", f"retrained/{key}")
        for m in approximate_methods(rows)
        for key, label in (
            ("accuracy", "test accuracy"),
            ("forget_accuracy", "forget-set accuracy"),
            ("asr_after", "attack success after unlearning the poison"),
        )
    ]
    return [*DIFFERENCES, *extra]


def seeds_tables(rows: list[dict[str, float]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per figure: seeds, mean, 95% half-width; per paired difference: pairs, mean, 95% half-width), only
    for figures the runs have."""
    figures = []
    for key, meaning in SEED_FIGURES:
        values = _values(rows, key)
        if values:
            mean, half = mean_interval(values)
            figures.append({"figure": key, "meaning": meaning, "seeds": len(values), "mean": mean, "ci": half})
    paired = []
    for d in differences(rows):
        diffs = _paired(rows, d.minuend, d.subtrahend)
        if diffs:
            mean, half = mean_interval(diffs)
            of = f"{d.minuend} - {d.subtrahend}"
            paired.append({"difference": d.name, "of": of, "pairs": len(diffs), "mean": mean, "ci": half})
    return figures, paired


class Estimate(NamedTuple):
    """A figure or paired difference over seeds: its mean, the half-width of its 95% Student-t interval (None
    from fewer than 2 seeds) and how many seeds (pairs) it covers."""

    mean: float
    half: float | None
    n: int

    def signed(self) -> str:
        """`+m ± h`, or `+m (one seed, no interval)`."""
        if self.half is None:
            return f"{self.mean:+.2f} (one seed, no interval)"
        return signed_interval(self.mean, self.half)

    def plain(self, unit: str) -> str:
        """`m ± h<unit>` (2 decimals), or `m<unit> (one seed)`."""
        if self.half is None:
            return f"{self.mean:.2f}{unit} (one seed)"
        return f"{self.mean:.2f} ± {self.half:.2f}{unit}"

    def detected(self) -> bool:
        """Whether the sentences count it as a difference: its 95% interval excludes 0, which one seed cannot
        show. A zero-width interval (the same nonzero difference in every seed) counts, unlike in `rayfed fl`,
        whose verdicts give it the sign test (6 agreeing seeds to reach p < 0.05, rayfed.stats): here the
        claims a user acts on are "no leak left" and "no backdoor left", which such a test would make easier to
        claim (a backdoor at 100% attack success after unlearning in each of 5 seeds would be "not detected")."""
        return self.half is not None and abs(self.mean) > self.half


def _interval(rows: list[dict[str, float]], minuend: str, subtrahend: str | None = None) -> Estimate:
    values = _paired(rows, minuend, subtrahend) if subtrahend else _values(rows, minuend)
    return Estimate(*mean_interval(values), len(values))


def _seeds(estimate: Estimate, runs: int) -> str:
    """`5 paired seeds`, or `3 of 5 seeds paired` where the others lack the figure."""
    return f"{estimate.n} paired seeds" if estimate.n == runs else f"{estimate.n} of {runs} seeds paired"


def _surviving(rows: list[dict[str, float]], seeds: list[int], minuend: str, subtrahend: str) -> str | None:
    """The seeds whose attack success after unlearning the poison is WEAK_BACKDOOR_POINTS or more over its
    reference (`seed 46 (+39.08 points)`), which a mean over the seeds can hide; None where none is."""
    over = [
        f"seed {seed} ({r[minuend] - r[subtrahend]:+.2f} points)"
        for seed, r in zip(seeds, rows)
        if r.get(minuend) is not None
        and r.get(subtrahend) is not None
        and r[minuend] - r[subtrahend] >= WEAK_BACKDOOR_POINTS
    ]
    return ", ".join(over) or None


def _backdoor_verdict(left: Estimate, surviving: str | None) -> str:
    """What the backdoor left after unlearning the poison (`left`, points over the reference, paired over
    seeds) says: it survives or a residue is left where the interval excludes 0, else none detectable, unless
    it survived in some seed (`_surviving`), which the verdict then names: "no backdoor left" is the claim a
    user acts on, and a mean over seeds must not make it for a backdoor that one draw keeps."""
    if left.detected():
        return "**the backdoor survives**" if left.mean >= WEAK_BACKDOOR_POINTS else "a residual backdoor"
    if surviving:
        return f"not detected over the seeds, but **the backdoor survives in {surviving}**"
    return "no detectable backdoor left"


def _baseline_sentence(rows: list[dict[str, float]], seeds: list[int], method: str) -> str:
    """One approximate method against the unsharded model retrained from scratch, paired over seeds: test
    accuracy, forget-set accuracy (above the reference: it still knows the points; below: it over-unlearned,
    which makes them stand out) and the backdoor left after unlearning the poison (`_backdoor_verdict`)."""

    def against(key: str) -> Estimate:
        return _interval(rows, f"{method}/{key}", f"retrained/{key}")

    accuracy, forget = against("accuracy"), against("forget_accuracy")
    if accuracy.mean <= -DAMAGED_MODEL_POINTS:
        cost = "**a damaged model**: its low forget-set figures and attack success are not forgetting"
    else:
        cost = "a cost" if accuracy.mean < 0 else "a gain"
    text = (
        f"{method} against the unsharded model retrained from scratch ({_seeds(accuracy, len(rows))}): test "
        f"accuracy {accuracy.signed()} points ({cost if accuracy.detected() else 'no detectable change'}), "
        f"forget-set accuracy {forget.signed()} points ("
    )
    if not forget.detected():
        text += "no detectable difference)"
    elif forget.mean > 0:
        text += "above the reference: it still knows the forgotten points)"
    else:
        text += "below the reference: it over-unlearned, which makes the forgotten points stand out)"
    if _paired(rows, f"{method}/asr_after", "retrained/asr_after"):
        left = against("asr_after")
        verdict = _backdoor_verdict(left, _surviving(rows, seeds, f"{method}/asr_after", "retrained/asr_after"))
        text += f", attack success after unlearning the poison {left.signed()} points ({verdict})"
    return text + "."


def seeds_findings(rows: list[dict[str, float]], seeds: list[int]) -> list[str]:
    """What the seeds show together: exactness in how many seeds, the price of sharding, whether the
    membership attack could tell the forgotten points apart before unlearning (and after), the backdoor left,
    the unlearning speedup and each approximate method against the retrained unsharded model."""
    found = []
    exact = [s for s, r in zip(seeds, rows) if r.get("exact") == 1.0]
    checked = [s for s, r in zip(seeds, rows) if r.get("exact") is not None]
    if not any("unlearned_accuracy" in r for r in rows):  # no seed unlearned anything
        found.append(NOTHING_FORGOTTEN)
    elif not checked:
        found.append("Exactness not checked (`unlearn.verify: false`).")
    elif len(exact) == len(checked):
        found.append(
            f"**Forgotten exactly** in all {len(checked)} seeds: every shard's weights bit-identical to the "
            "ensemble retrained from scratch without the forgotten points."
        )
    else:
        missed = ", ".join(str(s) for s in checked if s not in exact)
        found.append(f"**Not exact** in {len(checked) - len(exact)} of {len(checked)} seeds (seed {missed}).")
    if _paired(rows, "unlearned_accuracy", "unsharded_accuracy"):
        price = _interval(rows, "unlearned_accuracy", "unsharded_accuracy")
        verdict = (
            f"sharding costs {-price.mean:.2f} ± {price.half:.2f} points"
            if price.detected() and price.mean < 0
            else f"no detectable price of sharding ({price.signed()} points)"
        )
        found.append(
            f"Test accuracy after unlearning {_interval(rows, 'unlearned_accuracy').plain('%')}, against "
            f"{_interval(rows, 'unsharded_accuracy').plain('%')} for one unsharded model retrained on the same "
            f"data: {verdict} ({_seeds(price, len(rows))})."
        )
    if _paired(rows, "forget_auc", "retrained_forget_auc"):
        before = _interval(rows, "forget_auc", "retrained_forget_auc")
        after = _interval(rows, "unlearned_forget_auc", "retrained_forget_auc")
        text = (
            f"Membership inference on the forgotten points, AUC against the reference that never saw them "
            f"({_seeds(before, len(rows))}): {before.signed()} before unlearning, {after.signed()} after."
        )
        if after.detected():
            text += " After unlearning the attack still scores them differently from the reference that never saw them."
        elif before.detected() and before.mean > 0:
            text += (
                " The attack told the points apart before unlearning and not after: by this audit they are forgotten."
            )
        else:
            held = "its interval holds 0" if not before.detected() else "they scored as less likely members"
            text += (
                f" Even before unlearning the attack did not tell them apart better than the reference ({held}), "
                "so it shows nothing here: the exactness check and the backdoor do."
            )
        found.append(text)
    if _values(rows, "backdoor_asr"):
        strength = _interval(rows, "backdoor_asr", "clean_backdoor_asr")
        left = _interval(rows, "unlearned_backdoor_asr", "clean_backdoor_asr")
        surviving = _surviving(rows, seeds, "unlearned_backdoor_asr", "clean_backdoor_asr")
        text = (
            f"Backdoor attack success {_interval(rows, 'backdoor_asr').plain('%')} after training on the poison, "
            f"{_interval(rows, 'unlearned_backdoor_asr').plain('%')} after unlearning it, "
            f"{_interval(rows, 'clean_backdoor_asr').plain('%')} never poisoned: "
            f"{_backdoor_verdict(left, surviving)} ({left.signed()} points over the floor)."
        )
        if strength.mean < WEAK_BACKDOOR_POINTS:
            text += " The backdoor barely took hold, so its removal shows little."
        found.append(text)
    if _values(rows, "speedup_samples"):
        found.append(
            f"Unlearning saved {_interval(rows, 'speedup_samples').plain('x')} in samples over retraining the "
            f"ensemble (expected {_interval(rows, 'expected_speedup').plain('x')})."
        )
    for method in approximate_methods(rows):
        found.append(_baseline_sentence(rows, seeds, method))
    return found


def _markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def seeds_summary(title: str, rows: list[dict[str, float]], seeds: list[int], aggregation: str) -> str:
    """summary.md of a run over several seeds: what its figures are computed over, what the seeds show, the
    figures and the paired differences (mean ± 95% half-width), and where each seed's own run directory is."""
    figures, paired = seeds_tables(rows)
    basis = (
        f"Ensemble figures use the `{aggregation}` aggregation (`mean` where `sisa.aggregation` has it); accuracies "
        "are on the held-out test split; membership scores the forgotten points against as many unseen test points."
    )
    lines = [f"# {title}, seeds {', '.join(map(str, seeds))}", "", basis, "", "## What these seeds show", ""]
    lines += [f"- {sentence}" for sentence in seeds_findings(rows, seeds)]
    lines += ["", "## Figures over seeds (mean ± half-width of a 95% Student-t interval)", ""]
    lines += [_markdown(figures, ["figure", "meaning", "seeds", "mean", "ci"]), ""]
    if paired:
        columns = ["difference", "of", "pairs", "mean", "ci"]
        lines += ["## Paired differences (same seed)", "", _markdown(paired, columns), ""]
    lines += [f"Each seed's run: `seed<k>/` ({', '.join(f'seed{s}/' for s in seeds)}), with its own summary."]
    return "\n".join(lines) + "\n"
