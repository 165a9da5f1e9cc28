"""The rows of `rounds.parquet`, `clients.parquet` and `audit.parquet`: one dataclass each, the one source of
the tables' schemas, the summary's columns and the metric names Ray Tune reports.

Each row also carries the parameter column of every registered strategy (`gamma`, `q`, ...; null where the
row's method has no such parameter), placed after `method`."""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints

import pyarrow as pa

from rayfed.fl.metrics import fairness_summary
from rayfed.fl.strategies import Strategy, parameter_columns, strategy_for


@dataclass
class RoundRow:
    """One method run's round."""

    method: str
    seed: int
    """The run seed (model init, SGD order, GAN, probes)."""
    round: int
    """From 1."""
    accuracy: float
    """Global test accuracy of Theta_new, percent."""
    bias: float | None
    """B_base: the round's audit GAN on Theta_old, the model entering the round, which its updates are scored
    against (so one aggregation behind `accuracy`; null for methods without the audit)."""
    jfi: float
    max_min: float
    variance: float
    min_accuracy: float
    max_accuracy: float
    mean_accuracy: float
    gap: float
    val_accuracy: float | None
    """Global validation accuracy of Theta_new, percent (null without `data.validation_fraction`). The `val_*`
    figures are what settings are chosen on (a sweep's metric), so that the test figures stay unseen by the
    choice and estimate the chosen setting without its selection bias."""
    val_jfi: float | None
    """Jain's index over the clients' validation accuracies (null without a validation split)."""
    val_min_accuracy: float | None
    """The worst client's validation accuracy, percent (null without a validation split)."""
    val_gap: float | None
    """Best minus worst client validation accuracy, points (null without a validation split)."""
    fairness_basis: str
    """What the fairness figures above are computed over: `test` (each client's held-out subset) or `train`
    (its own training images, the notebook's figure)."""
    participants: int
    effective_clients: float | None
    """1 / sum alpha_i^2 over the round's weights: K for uniform weights, 1 when one client takes all."""
    max_weight: float | None
    score_spread: float | None
    """Standard deviation of S_i over the round's scored clients (null without scores)."""
    seconds: float


@dataclass
class ClientRow:
    """One client in one method run's round."""

    method: str
    seed: int
    round: int
    client: int
    num_samples: int
    test_samples: int
    """Size of the client's held-out test subset."""
    loss: float | None
    """F_i(Theta_old): training loss at the global model before local training (null if it did not report)."""
    accuracy: float
    """On its own training images through the training transform (the notebook's per-client figure)."""
    test_accuracy: float
    """On its held-out test subset (its label mix, no augmentation)."""
    validation_samples: int
    """Size of the client's validation subset (0 without a validation split)."""
    validation_accuracy: float | None
    """On its validation subset (its label mix, no augmentation; null without a validation split)."""
    bias: float | None
    """B_i of Theta_old + dw_i (null without the audit)."""
    score: float | None
    """S_i = B_base - B_i (null without the audit)."""
    weight: float
    """The strategy's weight of the update (alpha_i; 0 when the client did not take part)."""
    mixture: float | None
    """Its share of the mixture the strategy carries out of the round, whether it took part or not (AFL's
    lambda_i after the round's ascent); null for the strategies that carry none."""
    participated: bool
    retries: int
    rejected: str | None
    """Why its update was not aggregated, or null."""


def client_accuracy_column(basis: str) -> str:
    """The ClientRow field the fairness figures are computed over for `metrics.client_accuracy` = basis."""
    return "test_accuracy" if basis == "test" else "accuracy"


@dataclass
class AuditRow:
    """The held-out audit of one method run's final model (`rayfed.fl.held_out_audit`)."""

    method: str
    seed: int
    round: int
    """The round whose model was audited (the last)."""
    bias: float
    """B over the held-out images and their perturbations (L1 of the logit difference, mean over images)."""
    flip_rate: float
    """Share of held-out images whose predicted class the auditor's perturbation changes."""
    images: int
    """Held-out (test) images the auditor trained on and measured."""
    val_bias: float | None
    """B of the validation split's auditor over the validation images (null without a validation split)."""
    val_flip_rate: float | None
    """Share of validation images whose predicted class that auditor's perturbation changes (null without)."""
    validation_images: int
    """Validation images that auditor trained on and measured (0 without a validation split)."""
    seconds: float
    """Wall time of both audits."""


VALIDATION_FIGURES = ("val_accuracy", "val_jfi", "val_min_accuracy", "val_gap")
"""A round row's validation figures: `val_<figure>` is `<figure>` measured on the validation split."""


def validation_figures(global_accuracy: float | None, client_accuracies: list[float | None]) -> dict[str, Any]:
    """A round's `val_*` figures from the global validation accuracy and each client's (all None without a
    validation split)."""
    if global_accuracy is None:
        return dict.fromkeys(VALIDATION_FIGURES)
    summary = fairness_summary(client_accuracies)
    return {"val_accuracy": global_accuracy, **{name: summary[name[4:]] for name in VALIDATION_FIGURES[1:]}}


HELD_OUT_FIGURES = {"held_out_bias": "bias", "flip_rate": "flip_rate"}
"""The held-out audit's test figures, as a round row names them -> their audit.parquet column (the round row's
own `bias` is B_base)."""
AUDIT_FIGURES = {**HELD_OUT_FIGURES, "val_held_out_bias": "val_bias", "val_flip_rate": "val_flip_rate"}
"""What a round row takes from its run's audit.parquet row: the test figures and their validation twins."""


def with_held_out(round_rows: list[dict[str, Any]], audit_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each round row with its seeded run's held-out audit figures (AUDIT_FIGURES; None for a column the audit
    rows lack, as tables written before the validation auditor do) added where the audit covered that round;
    the others as they are."""
    found = {(strategy_for(a["method"], a), a["seed"], a["round"]): a for a in audit_rows}
    out = []
    for row in round_rows:
        audit = found.get((strategy_for(row["method"], row), row["seed"], row["round"]))
        out.append(row if audit is None else {**row, **{k: audit.get(v) for k, v in AUDIT_FIGURES.items()}})
    return out


def _arrow_type(tp: Any) -> pa.DataType:
    if get_origin(tp) in (Union, types.UnionType):
        tp = next(a for a in get_args(tp) if a is not type(None))
    return {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}[tp]


def schema(row_type: type) -> pa.Schema:
    """The Parquet schema of a row type: `method`, the strategies' parameter columns, then its fields."""
    hints = get_type_hints(row_type)
    fields = [(f.name, _arrow_type(hints[f.name])) for f in dataclasses.fields(row_type)]
    return pa.schema(fields[:1] + [(c, pa.float64()) for c in parameter_columns()] + fields[1:])


def as_dict(row: RoundRow | ClientRow | AuditRow, run: Strategy) -> dict[str, Any]:
    """The table row: the dataclass's fields with the run's parameter columns after `method`."""
    values = dataclasses.asdict(row)
    return {"method": values.pop("method"), **run.parameters, **values}


ROUND_METRICS = tuple(
    f.name
    for f in dataclasses.fields(RoundRow)
    if _arrow_type(get_type_hints(RoundRow)[f.name]) in (pa.float64(), pa.int64()) and f.name != "seed"
)
"""The numeric figures of a round (what a Tune trial reports)."""
