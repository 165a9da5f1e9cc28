"""fairness.png: the Fed-AuditGAN notebook's six panels, from the rounds and clients tables; with several
seeds, each curve is the mean over seeds with a 95% Student-t band, each bar the mean with its interval (of a
client, or where each seed has its own federation, of the k-th worst client), both cut to the figure's range."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from rayfed.fl.rows import client_accuracy_column  # noqa: E402
from rayfed.stats import mean_interval  # noqa: E402

PANELS = [
    ("accuracy", "Accuracy (%)", "Global Test Accuracy"),
    ("jfi", "JFI", "Jain's Fairness Index (higher=fairer)"),
    ("max_min", "Min/Max Ratio", "Max-Min Fairness (higher=fairer)"),
    ("variance", "Variance", "Per-Client Accuracy Variance (lower=fairer)"),
    ("gap", "Gap (%)", "Best-Worst Client Gap (lower=fairer)"),
]
PERCENT = (0.0, 100.0)
RANGES = {"accuracy": PERCENT, "jfi": (0.0, 1.0), "max_min": (0.0, 1.0), "variance": (0.0, np.inf), "gap": PERCENT}
"""The values each panel's figure can take (a client's accuracy: PERCENT)."""
BASIS_NAMES = {"test": "held-out test", "train": "own training"}


def _band(values_by_x: dict[int, list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, mean and 95% half-width (0 where there is one value) of grouped values."""
    xs = np.array(sorted(values_by_x))
    intervals = [mean_interval(values_by_x[x]) for x in xs]
    return xs, np.array([m for m, _ in intervals]), np.array([h or 0.0 for _, h in intervals])


def band_edges(mean: np.ndarray, half: np.ndarray, limits: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The drawn band mean ± half, cut to the values the figure can take: with few seeds a t-interval runs past
    them (2 seeds: 12.7 standard errors), and the figure cannot lie there."""
    return np.clip(mean - half, *limits), np.clip(mean + half, *limits)


def _same_run(row: dict[str, Any], run: Any) -> bool:
    return row["method"] == run.name and all(row.get(k) == v for k, v in run.parameters.items())


def final_client_accuracies(
    client_rows: list[dict[str, Any]], run: Any, round_index: int, column: str, ranked: bool
) -> dict[int, list[float]]:
    """The per-client panel's bars of one method run: client id -> its accuracy (`column`) at `round_index` in
    each seed; `ranked`: k -> the k-th worst client's accuracy in each seed (k from 0)."""
    by_seed: dict[int, dict[int, float]] = defaultdict(dict)  # seed -> client -> accuracy
    for c in client_rows:
        if _same_run(c, run) and c["round"] == round_index:
            by_seed[c["seed"]][c["client"]] = c[column]
    bars: dict[int, list[float]] = defaultdict(list)
    for accuracies in by_seed.values():
        for position, value in enumerate(sorted(accuracies.values())) if ranked else accuracies.items():
            bars[position].append(value)
    return dict(bars)


def plot_fairness(
    round_rows: list[dict[str, Any]],
    client_rows: list[dict[str, Any]],
    runs: list[Any],
    basis: str,
    path: Path,
    ranked: bool = False,
) -> None:
    """Five curves over rounds and the final per-client accuracy bars (on the fairness basis), one colour per
    method run; the fairness panels' titles name the basis. `ranked` (each seed its own federation, where a
    client id names another client in every seed): bar k is the k-th worst client of each seed."""
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    colours = plt.cm.tab10(np.arange(len(runs)) % 10)
    for ax, (key, ylabel, title) in zip(axes.flat, PANELS):
        for run, colour in zip(runs, colours):
            by_round: dict[int, list[float]] = defaultdict(list)
            for r in round_rows:
                if _same_run(r, run) and r[key] is not None:
                    by_round[r["round"]].append(r[key])
            if not by_round:
                continue
            xs, mean, half = _band(by_round)
            ax.plot(xs, mean, label=run.label, color=colour, linestyle="--" if run.reference else "-", linewidth=2)
            if half.any():
                ax.fill_between(xs, *band_edges(mean, half, RANGES[key]), color=colour, alpha=0.2)
        ax.set(
            xlabel="Round",
            ylabel=ylabel,
            title=title if key == "accuracy" else f"{title}\nover clients' {BASIS_NAMES[basis]} accuracy",
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(True, alpha=0.3)
    ax = axes[1, 2]
    last_round = max((r["round"] for r in round_rows), default=0)
    width = 0.8 / max(1, len(runs))
    column = client_accuracy_column(basis)
    for i, (run, colour) in enumerate(zip(runs, colours)):
        by_client = final_client_accuracies(client_rows, run, last_round, column, ranked)
        if not by_client:
            continue
        xs, mean, half = _band(by_client)
        low, high = band_edges(mean, half, PERCENT)
        ax.bar(
            xs + i * width,
            mean,
            width,
            yerr=[mean - low, high - mean] if half.any() else None,
            label=run.label,
            color=colour,
            alpha=0.8,
            capsize=2,
        )
    ax.set(
        xlabel="Client, ranked worst to best in each seed" if ranked else "Client ID",
        ylabel="Accuracy (%)",
        title=f"Per-Client {BASIS_NAMES[basis].capitalize()} Accuracy (Round {last_round})"
        + ("\neach seed its own federation: clients ranked" if ranked else ""),
    )
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
