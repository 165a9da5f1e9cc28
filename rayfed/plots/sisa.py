"""Figures of a `rayfed sisa` run: accuracy per aggregation and stage, unlearning cost vs full retraining,
membership-inference scores before/after unlearning and of the retrained reference, backdoor ASR before/after."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def _grouped_bars(ax, frame: pd.DataFrame, group: str, series: str, value: str) -> None:
    """Bars of `value`, one group per `group` value, one bar per `series` value."""
    table = frame.pivot_table(index=group, columns=series, values=value, sort=False)
    table.plot.bar(ax=ax, rot=0)
    ax.set_ylabel(value)


def plot_accuracy(metrics: list[dict], path: Path) -> None:
    """accuracy.png: test accuracy per aggregation for the trained, unlearned and retrained ensembles."""
    fig, ax = plt.subplots(figsize=(6, 4))
    _grouped_bars(ax, pd.DataFrame(metrics), "aggregation", "stage", "accuracy")
    ax.set_title("SISA ensemble test accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_unlearning_cost(unlearning: list[dict], path: Path) -> None:
    """unlearning_cost.png: samples processed and seconds of unlearning vs retraining every shard."""
    r = unlearning[0]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, unit in zip(axes, ("samples", "seconds")):
        ax.bar(["unlearning", "full retraining"], [r[f"request_{unit}"], r[f"full_{unit}"]], color=["C2", "C3"])
        ax.set_ylabel(unit)
        ax.set_title(f"{r[f'speedup_{unit}']:.2f}x faster")
    fig.suptitle(f"forgetting {len(unlearning)} points (expected speedup {r['expected_speedup']:.2f}x)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_membership(membership: list[dict], path: Path) -> None:
    """membership.png: logistic-regression CV accuracy and loss-threshold AUC per comparison and stage;
    0.5 = members indistinguishable from test points."""
    frame = pd.DataFrame(membership)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, value in zip(axes, ("lr_cv_accuracy", "auc")):
        _grouped_bars(ax, frame, "comparison", "stage", value)
        ax.axhline(0.5, color="k", linestyle="--", linewidth=1)
        ax.set_ylim(0, 1)
    fig.suptitle("membership inference: trained, unlearned, retrained from scratch (the score to match)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_backdoor(backdoor: list[dict], path: Path) -> None:
    """backdoor.png: attack success rate and clean accuracy before and after unlearning the poison."""
    frame = pd.DataFrame(backdoor)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, value in zip(axes, ("asr", "clean_accuracy")):
        _grouped_bars(ax, frame, "aggregation", "stage", value)
        ax.set_ylim(0, 100)
    fig.suptitle(f"backdoor ({frame['mode'][0]}, {frame['poisoned'][0]} poisoned points)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sisa(directory: Path, metrics: list[dict], unlearning: list[dict], membership: list[dict],
              backdoor: list[dict], **_: list[dict]) -> list[Path]:
    """Every figure whose table is not empty, into `directory`; returns their paths."""
    figures = [(metrics, plot_accuracy, "accuracy.png"), (unlearning, plot_unlearning_cost, "unlearning_cost.png"),
               (membership, plot_membership, "membership.png"), (backdoor, plot_backdoor, "backdoor.png")]
    paths = []
    for rows, plot, name in figures:
        if rows:
            plot(rows, directory / name)
            paths.append(directory / name)
    return paths
