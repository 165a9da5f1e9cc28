"""Figures of a `rayfed sisa` run: accuracy per aggregation and stage, the cumulative cost of the requests
against both retraining baselines and the analytic expectation, membership-inference scores before/after
unlearning and of the retrained reference, backdoor ASR, and exact SISA beside approximate unlearning; over
several seeds, their paired differences with intervals."""

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
    """accuracy.png: test accuracy per aggregation for the trained, unlearned and retrained ensembles; the
    unsharded model retrained on the same data as a dashed line (the price of sharding)."""
    frame = pd.DataFrame(metrics)
    fig, ax = plt.subplots(figsize=(6, 4))
    _grouped_bars(ax, frame[frame["model"] == "ensemble"], "aggregation", "stage", "accuracy")
    unsharded = frame[(frame["model"] == "unsharded") & (frame["stage"] == "retrained")]
    if len(unsharded):
        ax.axhline(
            float(unsharded["accuracy"].iloc[0]), color="k", linestyle="--", linewidth=1, label="unsharded, retrained"
        )
        ax.legend(loc="lower right")
    ax.set_title("SISA ensemble test accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_unlearning_cost(unlearning: list[dict], path: Path) -> None:
    """unlearning_cost.png: cumulative samples processed over the requests (SISA, its analytic expectation,
    retraining the ensemble or one unsharded model after each request), and each request's seconds as shard
    work (sum over shards) and wall time."""
    frame = pd.DataFrame(unlearning)
    requests = frame["request"] + 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    ax.plot(requests, frame["cumulative_samples"], "o-", color="C2", label="SISA (measured)")
    ax.plot(requests, frame["expected_cumulative_samples"], "--", color="C2", label="SISA (analytic expectation)")
    ax.plot(requests, frame["ensemble_retrain_samples"].cumsum(), "s-", color="C3", label="retrain the ensemble")
    ax.plot(
        requests, frame["unsharded_retrain_samples"].cumsum(), "^-", color="C0", label="retrain one unsharded model"
    )
    ax.set_xlabel("request")
    ax.set_ylabel("cumulative samples processed")
    ax.set_ylim(bottom=0)
    ax.legend()
    width = 0.4
    axes[1].bar(requests - width / 2, frame["shard_seconds"], width, label="shard work (sum over shards)")
    axes[1].bar(requests + width / 2, frame["wall_seconds"], width, label="wall (shards in parallel)")
    axes[1].set_xlabel("request")
    axes[1].set_ylabel("seconds")
    axes[1].legend()
    fig.suptitle(f"{int(frame['points'].sum())} points in {len(frame)} request(s)")
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


def plot_baselines(baselines: list[dict], path: Path) -> None:
    """baselines.png: exact SISA, the approximate methods and the unsharded model retrained from scratch on cost,
    test accuracy, forget-vs-test membership AUC (95% bootstrap interval) and, where the backdoor audit ran,
    ASR after unlearning the poison (a method it did not measure gets no bar, marked "not measured")."""
    frame = pd.DataFrame(baselines)
    colours = [f"C{i}" for i in range(len(frame))]
    asr = frame["asr_after"].astype(float)
    panels = 4 if asr.notna().any() else 3
    fig, axes = plt.subplots(1, panels, figsize=(panels * max(4.0, 0.9 * len(frame)), 4))
    axes[0].bar(frame["method"], frame["samples_processed"], color=colours)
    axes[0].set_ylabel("samples processed to unlearn")
    axes[1].bar(frame["method"], frame["accuracy"].astype(float), color=colours)  # a diverged method: no bar
    axes[1].set_ylabel("test accuracy (%)")
    auc = frame["forget_mia_auc"].astype(float)
    errors = [auc - frame["forget_mia_auc_low"].astype(float), frame["forget_mia_auc_high"].astype(float) - auc]
    axes[2].bar(frame["method"], auc, yerr=errors, capsize=4, color=colours)
    axes[2].axhline(0.5, color="k", linestyle="--", linewidth=1)
    axes[2].set_ylim(0, 1)
    axes[2].set_ylabel("forget vs test membership AUC")
    if asr.notna().any():
        axes[3].bar(frame["method"], asr, color=colours)
        for position, missing in enumerate(asr.isna()):
            if missing:
                axes[3].text(position, 2, "not measured", ha="center", rotation=90)
        axes[3].set_ylim(0, 100)
        axes[3].set_ylabel("ASR after unlearning the poison (%)")
    fig.suptitle("exact SISA vs approximate unlearning (retrained = the unsharded reference)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_seed_differences(paired: list[dict], path: Path) -> None:
    """seeds.png: each paired difference over seeds (rayfed.sisa.seeds.seeds_tables) as its mean with its 95%
    interval against 0, accuracy and attack success (points) apart from the membership AUCs."""
    frame = pd.DataFrame(paired)
    auc = frame["of"].str.contains("auc")
    panels = [(part, unit) for part, unit in ((frame[~auc], "points"), (frame[auc], "AUC")) if len(part)]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(9, 1.5 + 0.4 * len(frame)),
        squeeze=False,
        gridspec_kw={"height_ratios": [len(part) for part, _ in panels]},
    )
    for ax, (part, unit) in zip(axes[:, 0], panels):
        rows = list(range(len(part)))
        ax.errorbar(part["mean"], rows, xerr=part["ci"].fillna(0.0), fmt="o", capsize=3)
        ax.axvline(0.0, color="k", linestyle="--", linewidth=1)
        ax.set_yticks(rows, part["of"])
        ax.invert_yaxis()
        ax.set_xlabel(f"difference ({unit})")
    axes[0, 0].set_title(f"Paired differences over {int(frame['pairs'].max())} seeds (mean, 95% interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sisa(
    directory: Path,
    metrics: list[dict],
    unlearning: list[dict],
    membership: list[dict],
    backdoor: list[dict],
    baselines: list[dict],
    **_: list[dict],
) -> list[Path]:
    """Every figure whose table is not empty, into `directory`; returns their paths."""
    figures = [
        (metrics, plot_accuracy, "accuracy.png"),
        (unlearning, plot_unlearning_cost, "unlearning_cost.png"),
        (membership, plot_membership, "membership.png"),
        (backdoor, plot_backdoor, "backdoor.png"),
        (baselines, plot_baselines, "baselines.png"),
    ]
    paths = []
    for rows, plot, name in figures:
        if rows:
            plot(rows, directory / name)
            paths.append(directory / name)
    return paths
