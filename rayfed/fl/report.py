"""What a `rayfed fl` run concludes, from its rows: per method run the final round's figures (mean and 95%
Student-t interval over seeds) with the held-out audit of the final models, paired differences against the
reference method (FedAvg) and of the audited runs against the controls (uniform, q-FFL, TERM, AFL) on the same
seeds, with a verdict each (p-values corrected over each table), and what the weights did; written as summary.md,
fairness.png and their wandb copies."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from rayfed.config import EACH_SEED, Config
from rayfed.fl.rows import client_accuracy_column, with_held_out
from rayfed.fl.strategies import Strategy, strategy_for, strategy_runs
from rayfed.plots.fl import plot_fairness
from rayfed.results import RunDirectory, Tracker
from rayfed.stats import holm, interval_p_value, mean_interval, p_text, signed_interval

FINAL_FIGURES = (
    ("Global Acc", "accuracy"),
    ("JFI", "jfi"),
    ("Max-Min", "max_min"),
    ("Variance", "variance"),
    ("Min Acc", "min_accuracy"),
    ("Max Acc", "max_accuracy"),
    ("Gap", "gap"),
    ("Bias", "bias"),
    ("Eff. clients", "effective_clients"),
    ("Held-out B", "held_out_bias"),
    ("Flip rate", "flip_rate"),
)
"""Summary columns -> the figure they show at the final round (the last two from the held-out audit, shown when
it ran)."""
PAIRED_FIGURES = (
    ("Global Acc", "accuracy"),
    ("JFI", "jfi"),
    ("Worst client", "min_accuracy"),
    ("Gap", "gap"),
    ("Flip rate", "flip_rate"),
    ("Held-out B", "held_out_bias"),
)
"""Figures whose difference against the reference method is reported per seed pair (the held-out audit's when
it ran)."""
HELD_OUT_KEYS = ("held_out_bias", "flip_rate")
FAIRNESS_SIGNS = (("worst client", "Worst client", +1), ("gap", "Gap", -1), ("JFI", "JFI", +1))
"""Paired figures that measure fairness: (name in a sentence, paired column, sign of a fairer difference)."""
TESTED_FIGURES = tuple((name, column) for name, column, _ in FAIRNESS_SIGNS) + (
    ("global accuracy", "Global Acc"),
    ("flip rate", "Flip rate"),
)
"""The paired figures a verdict tests: the fairness figures, global accuracy and, when the held-out audit ran, its
flip rate (not its B, which grows with the logits' scale: tests/test_held_out_audit.py)."""
SIGNIFICANCE = 0.05
"""A tested figure counts as an effect where its (adjusted) p-value is below this (a NaN one never does)."""
UNIFORM_TOLERANCE = 0.01
"""Weights within this relative distance of 1/K in every round count as uniform."""


def _run_of(row: dict[str, Any]) -> Strategy:
    return strategy_for(row["method"], row)


def final_by_seed(round_rows: list[dict[str, Any]]) -> dict[Strategy, dict[int, dict[str, Any]]]:
    """run -> seed -> that seeded run's row at its last round."""
    out: dict[Strategy, dict[int, dict[str, Any]]] = defaultdict(dict)
    for row in round_rows:
        mine = out[_run_of(row)]
        if row["seed"] not in mine or row["round"] > mine[row["seed"]]["round"]:
            mine[row["seed"]] = row
    return out


def _shown(
    figures: tuple[tuple[str, str], ...], finals: dict[Strategy, dict[int, dict[str, Any]]]
) -> tuple[tuple[str, str], ...]:
    """`figures` without the held-out audit's when no final row carries them (the audit was off)."""
    audited = any(key in row for by_seed in finals.values() for row in by_seed.values() for key in HELD_OUT_KEYS)
    return tuple((name, key) for name, key in figures if audited or key not in HELD_OUT_KEYS)


def summary_table(round_rows: list[dict[str, Any]], runs: list[Strategy]) -> list[dict[str, Any]]:
    """Per method run: seeds, final round, and each final figure's mean with its interval (`<name> ±`)."""
    finals = final_by_seed(round_rows)
    figures = _shown(FINAL_FIGURES, finals)
    table = []
    for run in runs:
        by_seed = finals.get(run)
        if not by_seed:
            continue
        row: dict[str, Any] = {
            "Method": run.label,
            "Seeds": len(by_seed),
            "Round": max(r["round"] for r in by_seed.values()),
        }
        for name, key in figures:
            values = [r[key] for r in by_seed.values() if r.get(key) is not None]
            mean, half = mean_interval(values) if values else (None, None)
            row[name], row[f"{name} ±"] = mean, half
        table.append(row)
    return table


def _paired_row(
    finals: dict[Strategy, dict[int, dict[str, Any]]], run: Strategy, reference: Strategy
) -> dict[str, Any]:
    """run - reference on every paired figure: the mean difference over the seeds both ran, with its 95%
    interval."""
    seeds = sorted(set(finals[run]) & set(finals[reference]))
    row: dict[str, Any] = {"Method": run.label, "vs": reference.label, "Pairs": len(seeds)}
    for name, key in _shown(PAIRED_FIGURES, finals):
        diffs = [finals[run][s][key] - finals[reference][s][key] for s in seeds]
        row[f"Δ {name}"], row[f"Δ {name} ±"] = mean_interval(diffs) if diffs else (None, None)
    return row


def paired_differences(round_rows: list[dict[str, Any]], runs: list[Strategy]) -> list[dict[str, Any]]:
    """Per method run other than the reference: the mean difference (run - reference) over seeds both ran,
    with its 95% interval; empty when the reference method was not run."""
    finals = final_by_seed(round_rows)
    references = [run for run in finals if type(run).reference]
    if not references:
        return []
    return [_paired_row(finals, run, references[0]) for run in runs if run in finals and run not in references]


def control_differences(round_rows: list[dict[str, Any]], runs: list[Strategy]) -> list[dict[str, Any]]:
    """Per audited run (Fed-AuditGAN at each gamma) against each control that ran, every run that is neither
    the reference nor audited (uniform weights; q-FFL, the fair-FL baseline; TERM, weights from the losses; AFL,
    the minimax mixture): whether the audit does better than dropping size weights, than the field's fair
    baselines, or than weighing clients by their losses, on the same seeds. Empty without both kinds."""
    finals = final_by_seed(round_rows)
    ran = [run for run in runs if run in finals]
    audited = [run for run in ran if type(run).needs_audit]
    controls = [run for run in ran if not type(run).needs_audit and not type(run).reference]
    return [_paired_row(finals, run, control) for run in audited for control in controls]


def _tested(row: dict[str, Any]) -> list[tuple[str, str]]:
    """The TESTED_FIGURES a paired row carries, over two seeds or more (none over one)."""
    if row["Pairs"] < 2:
        return []
    return [(name, column) for name, column in TESTED_FIGURES if row.get(f"Δ {column}") is not None]


def adjusted_p_values(paired: list[dict[str, Any]], correction: str) -> list[dict[str, float]]:
    """Per paired row, each tested figure's (`TESTED_FIGURES` that the row carries) two-sided paired t-test
    p-value (the sign test's where the difference was the same in every seed: `interval_p_value`), for rows over
    two seeds or more (others get none); with `correction: holm`, Holm-adjusted over every figure tested in the
    table, with `none` each figure's own."""
    tested = [(i, column) for i, row in enumerate(paired) for _, column in _tested(row)]
    raw = [
        interval_p_value(paired[i][f"Δ {column}"], paired[i][f"Δ {column} ±"], paired[i]["Pairs"])
        for i, column in tested
    ]
    adjusted = holm(raw) if correction == "holm" else raw
    out: list[dict[str, float]] = [{} for _ in paired]
    for (i, column), p in zip(tested, adjusted, strict=True):
        out[i][column] = p
    return out


def correction_sentence(paired: list[dict[str, Any]], correction: str) -> str:
    """What the verdicts' p-values are adjusted over, what the ± beside them is and, where a tested difference
    was the same in every seed (± 0), that the sign test gave its p (`interval_p_value`)."""
    rows = sum(row["Pairs"] >= 2 for row in paired)
    tested = sum(len(_tested(row)) for row in paired)
    names = [name for name, _ in next((_tested(row) for row in paired if _tested(row)), [])]
    constant = any(row[f"Δ {column} ±"] == 0 for row in paired for _, column in _tested(row))
    sign_test = (
        " A difference the same in every seed (± 0) has no t-test; the exact sign test tests it instead "
        "(p = 2 × 0.5^n over n seeds)."
        if constant
        else ""
    )
    if correction == "holm":
        return (
            f"p-values are Holm-adjusted over the {tested} figures tested in this table ({', '.join(names[:-1])} "
            f"and {names[-1]} of each of its {rows} row{'s' if rows != 1 else ''} over two seeds or more; "
            "`metrics.correction: holm`): "
            f"a figure counts as an effect where its adjusted p < {SIGNIFICANCE:g}, which holds the chance of any "
            "false effect in the table at 5%. Each ± is that figure's own 95% interval, so it can exclude 0 while "
            "the adjusted p does not pass." + sign_test
        )
    return (
        f"p-values are each figure's own (`metrics.correction: none`): a figure counts as an effect where its "
        f"95% interval excludes 0 (p < {SIGNIFICANCE:g}); with {tested} figures tested in this table, about "
        f"{tested * SIGNIFICANCE:.2g} false effects are expected by chance alone." + sign_test
    )


def _sensitivity_clause(row: dict[str, Any], p_values: dict[str, float]) -> str:
    """The held-out audit's part of a verdict: more or less sensitive (flip rate) or no detectable difference;
    where global accuracy moved the same way (fewer flips and less accurate, or more of both), it says so: a
    model that learned less has fewer decisions a perturbation can flip."""
    mean, p = row["Δ Flip rate"], p_values["Flip rate"]
    flips = f"flip rate {signed_interval(mean, row['Δ Flip rate ±'])}, {p_text(p)}"
    if not p < SIGNIFICANCE:  # a NaN p is no effect
        return f"no detectable difference in sensitivity ({flips})"
    clause = f"**{'more' if mean > 0 else 'less'} sensitive** ({flips})"
    accuracy = row["Δ Global Acc"]
    if p_values["Global Acc"] < SIGNIFICANCE and (accuracy > 0) == (mean > 0):
        clause += (
            f" alongside {'higher' if accuracy > 0 else 'lower'} accuracy: a model that learned less has fewer "
            "decisions a perturbation can flip, so read the two together"
        )
    return clause


def verdict_sentences(paired: list[dict[str, Any]], correction: str = "holm") -> list[str]:
    """Per method run in the paired table, over two seeds or more: fairer, less fair, mixed, or no detectable
    difference than the reference, each fairness figure counted only where its paired difference's p-value
    (Holm-adjusted over the table, or its own, as `correction` says: `adjusted_p_values`) is below 0.05; what
    the method did to global accuracy and, when the held-out audit ran, to the share of held-out images whose
    class the auditor's perturbation flips; led by `correction_sentence`. One seed: one sentence saying that
    single draws support no verdict."""
    if paired and all(row["Pairs"] < 2 for row in paired):
        return [
            "One seed: each difference above is a single draw and supports no verdict; `seeds: 5` gives them intervals."
        ]
    sentences = [correction_sentence(paired, correction)]
    for row, p_values in zip(paired, adjusted_p_values(paired, correction), strict=True):
        if row["Pairs"] < 2:
            continue
        better, worse, unclear = [], [], []
        for name, column, sign in FAIRNESS_SIGNS:
            mean = row[f"Δ {column}"]
            text = f"{name} {signed_interval(mean, row[f'Δ {column} ±'])} ({p_text(p_values[column])})"
            if p_values[column] < SIGNIFICANCE:
                (better if sign * mean > 0 else worse).append(text)
            else:  # a NaN p too
                unclear.append(text)
        if better and worse:
            verdict = f"**mixed**: fairer on {' and '.join(better)}, less fair on {' and '.join(worse)}"
        elif better or worse:
            verdict = f"**{'fairer' if better else 'less fair'}** on {' and '.join(better or worse)}"
        else:
            verdict = "**no detectable difference in fairness**"
        if unclear and (better or worse):
            verdict += f"; no detectable difference on {' and '.join(unclear)}"
        elif unclear:
            verdict += f": {', '.join(unclear)}"
        mean, half, p = row["Δ Global Acc"], row["Δ Global Acc ±"], p_values["Global Acc"]
        accuracy = (
            f"at a {'gain' if mean > 0 else 'cost'} in global accuracy "
            f"({signed_interval(mean, half)} points, {p_text(p)})"
            if p < SIGNIFICANCE
            else f"no detectable change in global accuracy ({signed_interval(mean, half)}, {p_text(p)})"
        )
        if "Flip rate" in p_values:
            accuracy += "; held-out audit: " + _sensitivity_clause(row, p_values)
        sentences.append(f"{row['Method']} vs {row['vs']} ({row['Pairs']} paired seeds): {verdict}; {accuracy}.")
    return sentences


def unfair_baseline_notes(paired: list[dict[str, Any]], runs: list[Strategy], correction: str) -> list[str]:
    """For each method built for fairness (`Strategy.unfair_hint`) that the paired table finds less fair than the
    reference on the worst client (its p-value, adjusted as the verdicts' are, below 0.05): that this is the
    opposite of its purpose, what to try, and that verdicts against it mean little until then."""
    hints = {run.label: run.unfair_hint for run in runs if run.unfair_hint}
    notes = []
    for row, p_values in zip(paired, adjusted_p_values(paired, correction), strict=True):
        worst, p = row["Δ Worst client"], p_values.get("Worst client", 1.0)
        if row["Method"] in hints and p < SIGNIFICANCE and worst < 0:
            notes.append(
                f"{row['Method']} is less fair than {row['vs']} on the worst client "
                f"({signed_interval(worst, row['Δ Worst client ±'])}, {p_text(p)}), the opposite of what it is "
                f"for: {hints[row['Method']]}. A verdict of another method against it says little until it does "
                "what it is for."
            )
    return notes


def last_round_clients(client_rows: list[dict[str, Any]]) -> dict[tuple[Strategy, int], list[dict[str, Any]]]:
    """(run, seed) -> the client rows of that run's last round in that seed."""
    last: dict[tuple[Strategy, int], int] = {}
    finals: dict[tuple[Strategy, int], list[dict[str, Any]]] = defaultdict(list)
    for c in client_rows:
        key = (_run_of(c), c["seed"])
        if c["round"] > last.get(key, 0):
            last[key], finals[key] = c["round"], []
        if c["round"] == last[key]:
            finals[key].append(c)
    return finals


def mixture_note(client_rows: list[dict[str, Any]], runs: list[Strategy]) -> str | None:
    """Where the runs that carry a mixture over the clients (AFL's lambda, `clients.parquet`'s `mixture`) left it
    at the last round: over how many clients it spreads, 1/sum lambda_k^2 (N when uniform, 1 at a vertex), and
    its largest share with the clients holding it in each seed (a client id names another client in every seed
    under data.partition_seed: each). Means ± 95% intervals over seeds; None when no run carries a mixture."""
    spread: dict[Strategy, list[float]] = defaultdict(list)
    largest: dict[Strategy, list[float]] = defaultdict(list)
    holders: dict[Strategy, dict[int, tuple[int, ...]]] = defaultdict(dict)  # run -> seed -> the largest's holders
    clients = 0
    for (run, seed), rows in last_round_clients(client_rows).items():
        if rows[0].get("mixture") is None or np.isnan(rows[0]["mixture"]):  # null (NaN when read by pandas)
            continue
        shares = {c["client"]: c["mixture"] for c in rows}
        clients = len(shares)
        spread[run].append(1.0 / sum(x * x for x in shares.values()))
        top = max(shares.values())
        largest[run].append(top)
        holders[run][seed] = tuple(sorted(c for c, share in shares.items() if share >= top - 1e-12))
    ordered = [run for run in runs if run in spread]
    if not ordered:
        return None

    def named(ids: tuple[int, ...]) -> str:
        if len(ids) == clients:
            return "every client alike"
        return f"client{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}"

    def held_by(by_seed: dict[int, tuple[int, ...]]) -> str:
        if len(set(by_seed.values())) == 1:
            return named(next(iter(by_seed.values()))) + (" in every seed" if len(by_seed) > 1 else "")
        return "clients that differ by seed (" + "; ".join(f"seed {s}: {named(c)}" for s, c in by_seed.items()) + ")"

    described = "; ".join(
        f"{run.label} spreads over {_cell(*mean_interval(spread[run]), digits=1)} of the {clients} clients and gives "
        f"its largest share, {_cell(*mean_interval(largest[run]), digits=3)}, to {held_by(holders[run])}"
        for run in ordered
    )
    carriers = _and(sorted({run.title for run in ordered}))
    return (
        f"The mixture {carriers} carries at the last round (`mixture` in clients.parquet; 1/Σλ² clients, "
        f"{clients} when uniform, 1 when one client holds it all): {described}."
    )


def never_served_note(client_rows: list[dict[str, Any]], runs: list[Strategy], basis: str) -> str | None:
    """The runs that got none of some client's images right at their last round in every seed (accuracy on the
    fairness basis `basis`): their worst client is 0 in every seed, so a difference in it between two of them
    is 0 by construction, not a sign of equal fairness. Names the clients: the same ones in every seed, or each
    seed's (they differ by chance, and under data.partition_seed: each a client id means another client in
    every seed). None when no run had a client at 0 in every seed."""
    column = client_accuracy_column(basis)
    zeros: dict[Strategy, dict[int, tuple[int, ...]]] = {}  # run -> seed -> its clients at 0
    for (run, seed), rows in last_round_clients(client_rows).items():
        zeros.setdefault(run, {})[seed] = tuple(sorted(c["client"] for c in rows if c[column] == 0))
    unserved = {run: zeros[run] for run in runs if run in zeros and all(zeros[run].values())}
    if not unserved:
        return None
    images = "held-out test" if basis == "test" else "training"
    if all(len(set(by_seed.values())) == 1 for by_seed in unserved.values()):  # the same clients in every seed
        groups: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for run, by_seed in unserved.items():
            groups[next(iter(by_seed.values()))].append(run.label)
        clients = sorted(set().union(*groups))
        named = f"Client {clients[0]}" if len(clients) == 1 else f"Clients {', '.join(map(str, clients))}"
        listed = (
            _and(next(iter(groups.values())))
            if len(groups) == 1
            else "; ".join(f"{_and(labels)} (client {', '.join(map(str, ids))})" for ids, labels in groups.items())
        )
        subject = (
            f"{named} got none of {'its' if len(clients) == 1 else 'their'} {images} images right at the last round "
            f"in every seed under {listed}"
        )
    else:
        by_seeds: dict[str, list[str]] = defaultdict(list)
        for run, by_seed in unserved.items():
            clients_of = (f"client{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}" for ids in by_seed.values())
            by_seeds["; ".join(f"seed {seed}: {who}" for seed, who in zip(by_seed, clients_of))].append(run.label)
        listed = "; ".join(f"{_and(labels)} ({where})" for where, labels in by_seeds.items())
        subject = f"In every seed a client got none of its {images} images right at the last round under {listed}"
    consequence = (
        "so between two of them Δ Worst client is 0 by construction, not a sign of equal fairness; JFI and "
        "Variance still compare them."
        if len(unserved) > 1
        else "so its worst client shows only that; JFI and Variance compare it with the others."
    )
    return f"{subject}: the worst client is then 0 in every seed and the gap the best client's accuracy, {consequence}"


def _and(words: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def uniform_weight_runs(client_rows: list[dict[str, Any]]) -> dict[Strategy, float]:
    """Runs whose weights come from the audit's scores (`Strategy.needs_audit`: Fed-AuditGAN) that stayed
    within UNIFORM_TOLERANCE of 1/K in every round and seed: run -> the largest |alpha_i K - 1| seen. q-FFL's
    runs are left out: its shares are uniform at q = 0 by design, and its step is no average."""
    rounds: dict[tuple[Strategy, int, int], list[float]] = defaultdict(list)
    for c in client_rows:
        if c["participated"]:
            rounds[(_run_of(c), c["seed"], c["round"])].append(c["weight"])
    deviation: dict[Strategy, float] = {}
    for (run, _, _), weights in rounds.items():
        if not run.needs_audit:
            continue
        w = np.asarray(weights)
        deviation[run] = max(deviation.get(run, 0.0), float(np.max(np.abs(w * len(w) - 1))))
    return {run: d for run, d in deviation.items() if d <= UNIFORM_TOLERANCE}


def _cell(mean: Any, half: Any = None, digits: int | None = None) -> str:
    """`mean ± half` (`mean` without a half-width) to `digits` places: 4 under 10, else 2, unless given."""
    if mean is None:
        return "-"
    if not isinstance(mean, float):
        return str(mean)
    if digits is None:
        digits = 4 if abs(mean) < 10 else 2
    return f"{mean:.{digits}f}" + ("" if half is None else f" ± {half:.{digits}f}")


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table; a column `X ±` is folded into `X` as `mean ± half-width`."""
    header = [h for h in rows[0] if not h.endswith(" ±")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(r[h], r.get(f"{h} ±")) for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def basis_sentence(config: Config, client_rows: list[dict[str, Any]]) -> str:
    """Which per-client accuracy the fairness figures are computed over, and the test subsets' sizes."""
    sizes = [c["test_samples"] for c in client_rows]
    if config.metrics.client_accuracy == "test":
        return (
            f"Fairness figures (JFI, Max-Min, Variance, Min/Max Acc, Gap) are over each client's accuracy on "
            f"its held-out test subset (`metrics.client_accuracy: test`; {min(sizes)}-{max(sizes)} test images "
            "per client, with the client's label mix)."
        )
    return (
        "Fairness figures are over each client's accuracy on its own training images "
        "(`metrics.client_accuracy: train`, the notebook's figure): clients that memorise their data all score "
        "near 100%, so these figures say little about fairness."
    )


def held_out_sentence(config: Config, audit_rows: Sequence[dict[str, Any]]) -> str:
    """What the held-out audit's columns are (and, with a validation split, what its validation twin is for)."""
    m, a = config.metrics, config.audit
    epochs = f"{m.audit_epochs} epoch{'s' if m.audit_epochs != 1 else ''}"
    sentence = (
        f"Held-out B and Flip rate audit each final model with its seed's auditor, the same for every method: a "
        f"fresh audit GAN trained against the model for {epochs} on the {audit_rows[0]['images']} "
        f"test images (`metrics.held_out_audit`), whose perturbations (at most {a.delta_scale:g} per pixel in "
        "[-1, 1]) are then applied to each of them. Flip rate is the share of those images whose predicted class "
        "the perturbation changes (lower: less sensitive); Held-out B is the specification's bias over them, "
        "which also grows with the logits' scale, so the verdicts test the flip rate."
    )
    validation_images = audit_rows[0].get("validation_images") or 0
    if validation_images:
        sentence += (
            f" A second auditor, seeded apart, does the same on the {validation_images} validation images for at least "
            "as many GAN steps (audit.parquet's `val_flip_rate`, `val_bias`): choose settings on that, and the "
            "flip rates above stay figures the choice never saw."
        )
    return sentence


def bias_sentence(config: Config) -> str | None:
    """What the summary's Bias column is a figure of (None without a fedauditgan run, which alone has it)."""
    if "fedauditgan" not in config.fl.methods:
        return None
    return (
        "Bias (audited runs only) is the last round's B_base, which that round's audit GAN measured on the model "
        "entering the round (Theta_old, the one its client updates are scored against, as in the notebook): one "
        "aggregation behind the other columns, and measured by a GAN each run trained against its own model, so "
        "not comparable across runs."
    )


def scoring_sentence(config: Config) -> str | None:
    """How Fed-AuditGAN scored its clients, when that is not the specification's softmax(gamma * S) over logit
    distances (None when it is, or when no fedauditgan run is in the config)."""
    a = config.audit
    if "fedauditgan" not in config.fl.methods or (a.score == "logits" and not a.normalize_scores):
        return None
    measure = (
        f"B (its Bias column, B_base) is the share of the round's {a.n_probes} probe pairs whose predicted class "
        "differs, and S_i = B_base - B_i the share of them client i's update stops flipping, net of those it "
        "starts flipping (`audit.score: decisions`)"
        if a.score == "decisions"
        else "B is the specification's logit distance (`audit.score: logits`)"
    )
    weights = "softmax(gamma * S / std(S)) (`audit.normalize_scores`)" if a.normalize_scores else "softmax(gamma * S)"
    return f"Fed-AuditGAN's scores: {measure}; weights {weights}."


def unheld_classes_sentence(config: Config, unheld: list[int], held_test_percent: float) -> str | None:
    """What it means for the figures that some classes are in no client's training data (None when all are)."""
    if not unheld:
        return None
    one = len(unheld) == 1
    classes = f"Class {unheld[0]} is" if one else f"Classes {', '.join(map(str, unheld))} are"
    return (
        f"{classes} in no client's training data (`data.partition: {config.data.partition}`, "
        f"{config.data.num_clients} clients): no method can learn {'it' if one else 'them'}, so Global Acc, "
        f"over the whole test set, stays below about {held_test_percent:.2f}% (the test images of the other "
        "classes), while each client's test subset holds only the classes that client has."
    )


def validation_sentence(config: Config, images: int, client_sizes: Sequence[int]) -> str | None:
    """What the validation split is and is for (None without one)."""
    if not images:
        return None
    return (
        f"A validation split of {images} training images (`data.validation_fraction: "
        f"{config.data.validation_fraction:g}`, held by no client nor the audit; {min(client_sizes)}-"
        f"{max(client_sizes)} per client, with its label mix) gives rounds.parquet's `val_*` columns, to choose "
        "settings on (a sweep's `val_*` metric); none of the figures above is measured on it."
    )


def interval_sentence(config: Config) -> str:
    """What the ± of the summary measures: training's randomness on one federation, or over federations too
    (data.partition_seed: each); or that one seed has none."""
    if len(config.seed_list) == 1:
        return "One seed: no interval; run with `seeds: 5` to tell effect from noise."
    if config.data.partition_seed == EACH_SEED:
        over = (
            "seeds that each drew their own federation (`data.partition_seed: each`: partition, audit and "
            "validation splits, test subsets), so it covers the federation's draw as well as training's randomness"
        )
    else:
        over = (
            f"seeds on one federation (partition seed {config.partition_seed_of(config.seed)}), so it covers "
            "training's randomness (initial weights, SGD order, GANs), not the federation's draw "
            "(`data.partition_seed: each` draws one per seed)"
        )
    return f"Values are means over seeds ± the half-width of a 95% Student-t interval, over {over}."


def summary_markdown(
    config: Config,
    round_rows: list[dict[str, Any]],
    client_rows: list[dict[str, Any]],
    audit_rows: Sequence[dict[str, Any]] = (),
    notes: Sequence[str] = (),
) -> str:
    """summary.md: the summary table, the paired differences with each method's verdict against the reference
    and each audited run's against the controls (`verdict_sentences`), and the notes: fair baselines found less
    fair than the reference (`unfair_baseline_notes`), clients a run never served (`never_served_note`), where
    AFL left its mixture (`mixture_note`), then `notes` (sentences about the federation itself)."""
    runs = strategy_runs(config)
    seeds = config.seed_list
    round_rows = with_held_out(round_rows, list(audit_rows))
    parts = [
        f"# rayfed fl summary ({config.data.dataset}, {config.data.num_clients} clients, "
        f"{config.fl.rounds} rounds, seeds {', '.join(map(str, seeds))})\n",
        basis_sentence(config, client_rows) + " " + interval_sentence(config) + "\n",
        format_table(summary_table(round_rows, runs)),
    ]
    if audit_rows:
        parts.insert(2, held_out_sentence(config, audit_rows) + "\n")
    for sentence in (scoring_sentence(config), bias_sentence(config)):
        if sentence:
            parts.insert(2, sentence + "\n")
    against_reference = paired_differences(round_rows, runs)
    sections = (
        ("Paired differences against the reference (same seed, same partition)", against_reference),
        ("The audit against the controls (same seed, same partition)", control_differences(round_rows, runs)),
    )
    for heading, paired in sections:
        if paired:
            parts += [f"## {heading}\n", format_table(paired)]
            parts += [f"- {sentence}\n" for sentence in verdict_sentences(paired, config.metrics.correction)]
    never_served = never_served_note(client_rows, runs, config.metrics.client_accuracy)
    mixture = mixture_note(client_rows, runs)
    notes = [
        *unfair_baseline_notes(against_reference, runs, config.metrics.correction),
        *([never_served] if never_served else []),
        *([mixture] if mixture else []),
        *notes,
    ]
    parts += [f"- {note}\n" for note in notes]
    for run, deviation in uniform_weight_runs(client_rows).items():
        parts.append(f"- {uniform_weight_note(run, deviation, client_rows, config.audit.normalize_scores)}\n")
    return "\n".join(parts)


def uniform_weight_note(run: Strategy, deviation: float, client_rows: list[dict[str, Any]], normalized: bool) -> str:
    """What it means that `run`'s weights stayed within UNIFORM_TOLERANCE of 1/K (`uniform_weight_runs`), and
    what would change that: nothing where every client of every round got the same score (no gamma moves
    equal scores), a larger gamma (or standardised scores, when they were off) where the scores differed."""
    scores: dict[tuple[int, int], set[float]] = defaultdict(set)
    for c in client_rows:
        if c["participated"] and c.get("score") is not None and _run_of(c) == run:
            scores[(c["seed"], c["round"])].add(c["score"])
    if scores and all(len(round_scores) == 1 for round_scores in scores.values()):
        remedy = "every client scored the same in every round, so no gamma would have moved its weights"
    else:
        remedy = "raise gamma" + ("" if normalized else " (or set `audit.normalize_scores`)")
    return (
        f"{run.title} {run.label}: in every round its weights stayed within {100 * UNIFORM_TOLERANCE:g}% of "
        f"uniform (largest |alpha_i K - 1| = {100 * deviation:.2f}%): it averaged the clients without size "
        "weights, so its difference from FedAvg is uniform against size weighting, not the audit. Compare it "
        f"with `uniform`; {remedy}."
    )


def write_outputs(
    config: Config,
    run_dir: RunDirectory,
    round_rows: list[dict[str, Any]],
    client_rows: list[dict[str, Any]],
    audit_rows: Sequence[dict[str, Any]] = (),
    notes: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """summary.md, fairness.png and the printed summary (and their wandb copies when tracking); returns the
    summary table's rows."""
    runs = strategy_runs(config)
    summary = summary_table(with_held_out(round_rows, list(audit_rows)), runs)
    text = summary_markdown(config, round_rows, client_rows, audit_rows, notes)
    run_dir.write_text("summary.md", text)
    ranked = len(config.partition_seeds) > 1  # a client id names another client in every federation
    plot_fairness(round_rows, client_rows, runs, config.metrics.client_accuracy, run_dir.file("fairness.png"), ranked)
    tracker = Tracker(config, "Summary-Comparison", run_dir.path, group=run_dir.path.name)
    tracker.log_image("comparison_plot", run_dir.file("fairness.png"))
    tracker.log_table("summary_table", summary)
    tracker.finish()
    print(text)
    return summary
