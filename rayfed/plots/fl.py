"""fairness.png: the Fed-AuditGAN notebook's six panels, from the rounds and clients tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PANELS = [
    ("accuracy", "Accuracy (%)", "Global Test Accuracy"),
    ("jfi", "JFI", "Jain's Fairness Index (higher=fairer)"),
    ("max_min", "Min/Max Ratio", "Max-Min Fairness (higher=fairer)"),
    ("variance", "Variance", "Per-Client Accuracy Variance (lower=fairer)"),
    ("gap", "Gap (%)", "Best-Worst Client Gap (lower=fairer)"),
]


def plot_fairness(round_rows: list[dict[str, Any]], client_rows: list[dict[str, Any]], runs: list[Any],
                  path: Path) -> None:
    """Five curves over rounds and the final per-client accuracy bars, one colour per method run."""
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    colours = plt.cm.tab10(np.arange(len(runs)))
    for ax, (key, ylabel, title) in zip(axes.flat, PANELS):
        for run, colour in zip(runs, colours):
            mine = sorted((r for r in round_rows if r["method"] == run.method and r["gamma"] == run.gamma),
                          key=lambda r: r["round"])
            ax.plot([r["round"] for r in mine], [r[key] for r in mine], label=run.label, color=colour,
                    linestyle="--" if run.method == "fedavg" else "-", linewidth=2)
        ax.set(xlabel="Round", ylabel=ylabel, title=title)
        ax.legend()
        ax.grid(True, alpha=0.3)
    ax = axes[1, 2]
    last_round = max((r["round"] for r in round_rows), default=0)
    width = 0.8 / max(1, len(runs))
    for i, (run, colour) in enumerate(zip(runs, colours)):
        final = sorted((c for c in client_rows if c["method"] == run.method and c["gamma"] == run.gamma
                        and c["round"] == last_round), key=lambda c: c["client"])
        ax.bar(np.array([c["client"] for c in final]) + i * width, [c["accuracy"] for c in final], width,
               label=run.label, color=colour, alpha=0.8)
    ax.set(xlabel="Client ID", ylabel="Accuracy (%)", title=f"Per-Client Accuracy (Round {last_round})")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
