"""Figures of a sweep (matplotlib Agg, PNG), drawn from its sweep table.

- fl: final accuracy and JFI against each swept number (gamma, lambda1, lambda2, ...), one line per value of
  the other swept keys, FedAvg's figures of the same trials as a dashed reference: `fl_<key>.png`.
- sisa: S x R heatmaps of accuracy and unlearning speedup: `sisa_heatmaps.png`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rayfed.fl.strategies import REGISTRY  # noqa: E402

FL_PANELS = (("accuracy", "final accuracy (%)"), ("jfi", "final JFI"))
SISA_PANELS = (("accuracy", "accuracy"), ("speedup_samples", "unlearning speedup (samples)"))
REFERENCE = next(cls.name for cls in REGISTRY.values() if cls.reference)
"""The baseline method whose per-trial figures are drawn as a dashed line (`fedavg/accuracy`, ...)."""
FINISHED = ("TERMINATED", "EARLY_STOPPED")
"""Trials whose final figures are plotted (ASHA's early-stopped ones at the round they reached)."""


def _numeric(table: pd.DataFrame, key: str) -> bool:
    return key in table and pd.api.types.is_numeric_dtype(table[key]) and table[key].nunique() > 1


def plot_fl_param(table: pd.DataFrame, key: str, others: list[str], path: Path) -> None:
    """Final accuracy and JFI against one swept key; one line per combination of the other keys."""
    fig, axes = plt.subplots(1, len(FL_PANELS), figsize=(5 * len(FL_PANELS), 4))
    groups = table.groupby(others, dropna=False) if others else [((), table)]
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        label = ", ".join(f"{k}={v}" for k, v in zip(others, values)) or None
        group = group.groupby(key).mean(numeric_only=True).reset_index()
        for ax, (metric, _) in zip(axes, FL_PANELS):
            if metric in group:
                ax.plot(group[key], group[metric], marker="o", label=label)
    for ax, (metric, title) in zip(axes, FL_PANELS):
        reference = f"{REFERENCE}/{metric}"
        if reference in table and table[reference].notna().any():
            ax.axhline(table[reference].mean(), color="gray", linestyle="--", label="FedAvg")
        if table[key].min() > 0 and table[key].max() / table[key].min() >= 10:
            ax.set_xscale("log")
        ax.set(xlabel=key, title=title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sisa_heatmaps(table: pd.DataFrame, path: Path) -> None:
    """S x R heatmaps (mean over trials with the same S and R) of accuracy and unlearning speedup."""
    panels = [(m, t) for m, t in SISA_PANELS if m in table]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (metric, title) in zip(axes[0], panels):
        grid = table.pivot_table(index="sisa.shards", columns="sisa.slices", values=metric, aggfunc="mean")
        values = grid.to_numpy(dtype=float)
        image = ax.imshow(values, cmap="viridis", origin="lower", aspect="auto")
        ax.set_xticks(range(len(grid.columns)), [str(c) for c in grid.columns])
        ax.set_yticks(range(len(grid.index)), [str(i) for i in grid.index])
        middle = (np.nanmin(values) + np.nanmax(values)) / 2
        for (i, j), value in pd.DataFrame(values).stack().items():
            ax.text(
                j, i, f"{value:.3g}", ha="center", va="center", fontsize=9, color="black" if value > middle else "white"
            )  # readable on viridis' light and dark ends
        ax.set(xlabel="slices R", ylabel="shards S", title=title)
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(run: str, table: pd.DataFrame, keys: list[str], folder: Path) -> list[Path]:
    """The sweep's figures in folder (those its table has the columns for); returns their paths."""
    finished = table[table["status"].isin(FINISHED)]
    if finished.empty:
        return []
    paths = []
    if run == "fl":
        swept = [k for k in keys if _numeric(finished, k)]
        for key in swept:
            path = folder / f"fl_{key}.png"
            plot_fl_param(finished, key, [k for k in swept if k != key], path)
            paths.append(path)
    elif {"sisa.shards", "sisa.slices"} <= set(finished.columns):
        path = folder / "sisa_heatmaps.png"
        plot_sisa_heatmaps(finished, path)
        paths.append(path)
    return paths
