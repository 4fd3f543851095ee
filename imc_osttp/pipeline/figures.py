"""The pipeline's figures: a study's learning curves, a sweep's metric against each axis (a heatmap for a
2-D grid), a deploy's metric against chip time; every curve the mean over seeds with a ±std band.

A sweep's input is the points table of `report.summarize`: one row per point, a column per axis label,
`<metric>_mean`/`_std`, and `backend` ("digital" rows are the reference drawn as horizontal lines, beside
the task's reference lines).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REFERENCE_STYLES = ["--", ":", "-.", (0, (5, 1))]
MODE_COLORS = {"frozen": "C0", "frozen_gdc": "C1", "learning": "C2", "learning_gdc": "C3", "frozen_pcdc": "C4",
               "learning_pcdc": "C5", "learning_gated": "C6", "learning_digital": "C8",
               "learning_transfer": "C9"}  # the same colour in every figure


def numeric(values: pd.Series) -> pd.Series | None:
    """The labels as numbers when every one is a number (grid values), else None (categories)."""
    converted = pd.to_numeric(values, errors="coerce")
    return None if converted.isna().any() else converted


def axis_figure(points: pd.DataFrame, axis: str, others: list[str], metric: str, path: Path, title: str,
                references: dict[str, float]) -> Path:
    """Metric against one axis; one line per combination of the other axes; digital and task references."""
    analog = points[points["backend"] != "digital"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x_num = numeric(analog[axis])
    order = sorted(analog[axis].unique(), key=category_key) if x_num is None else None
    groups = analog.groupby(others, sort=True) if others else [((), analog)]
    for key, frame in groups:
        key = key if isinstance(key, tuple) else (key,)
        frame = frame.assign(_x=numeric(frame[axis]) if order is None else frame[axis].map(order.index))
        frame = frame.sort_values("_x")
        label = ", ".join(f"{o}={k}" for o, k in zip(others, key, strict=True)) or None
        ax.errorbar(frame["_x"], frame[f"{metric}_mean"], yerr=frame[f"{metric}_std"].fillna(0.0),
                    marker="o", capsize=3, label=label, linestyle="-" if order is None else "none")
    styles = iter(REFERENCE_STYLES * 4)
    for name, value in _digital(points, others, metric).items():
        ax.axhline(value, color="black", linestyle=next(styles), linewidth=1, label=f"{name} ({value:.2f})")
    ax.set_ylim(ax.get_ylim())  # task references far from the data stay in the legend only
    for name, value in references.items():
        ax.axhline(value, color="grey", linestyle=next(styles), linewidth=1, label=f"{name} ({value:.2f})")
    if order is not None:
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel(axis)
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def heatmap(points: pd.DataFrame, x_axis: str, y_axis: str, others: list[str], metric: str, path: Path,
            title: str) -> Path:
    """Mean metric over a 2-D grid, one panel per combination of the other axes."""
    analog = points[points["backend"] != "digital"]
    groups = list(analog.groupby(others, sort=True)) if others else [((), analog)]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.5), squeeze=False)
    for ax, (key, frame) in zip(axes[0], groups, strict=True):
        table = frame.assign(_x=numeric(frame[x_axis]), _y=numeric(frame[y_axis])).pivot_table(
            index="_y", columns="_x", values=f"{metric}_mean")
        image = ax.imshow(table.to_numpy(), origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(table.shape[1]), [f"{v:g}" for v in table.columns])
        ax.set_yticks(range(table.shape[0]), [f"{v:g}" for v in table.index])
        for (i, j), value in np.ndenumerate(table.to_numpy()):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white", fontsize=8)
        key = key if isinstance(key, tuple) else (key,)
        ax.set_title(", ".join(f"{o}={k}" for o, k in zip(others, key, strict=True)) or title, fontsize=9)
        ax.set_xlabel(x_axis)
        ax.set_ylabel(y_axis)
        fig.colorbar(image, ax=ax, label=f"{metric} (mean over seeds)")
    fig.suptitle(title)
    return _save(fig, path)


def _digital(points: pd.DataFrame, others: list[str], metric: str) -> dict[str, float]:
    """Reference lines of the digital points, named by their non-knob labels."""
    out = {}
    for _, row in points[points["backend"] == "digital"].iterrows():
        tags = [f"{o}={row[o]}" for o in others if row[o] != "digital"]
        out["digital" + (f" ({', '.join(tags)})" if tags else "")] = float(row[f"{metric}_mean"])
    return out


CATEGORY_ORDER = ("ideal", "only:", "realistic", "all_but:")


def category_key(label: str) -> tuple[int, str]:
    """Ablation labels as the eye compares them: ideal, only:*, realistic, all_but:*; others after."""
    rank = next((i for i, p in enumerate(CATEGORY_ORDER) if str(label).startswith(p)), len(CATEGORY_ORDER))
    return rank, str(label)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def mean_band(ax, frame: pd.DataFrame, x: str, metric: str, label: str, color: str | None = None,
              marker: str | None = None) -> None:
    """The mean over seeds of `metric` against `x` with a ±std band, and each seed's own curve as a thin
    line (a band hides a seed that jumps and recovers)."""
    stats = frame.groupby(x)[metric].agg(["mean", "std"]).sort_index()
    std = stats["std"].fillna(0.0)
    line, = ax.plot(stats.index, stats["mean"], marker=marker, color=color, label=label)
    ax.fill_between(stats.index, stats["mean"] - std, stats["mean"] + std, alpha=0.2, color=line.get_color())
    for _, seed in frame.groupby("seed"):
        seed = seed.sort_values(x)
        ax.plot(seed[x], seed[metric], color=line.get_color(), alpha=0.4, linewidth=0.6)


def learning_curves(history: pd.DataFrame, metric: str, path: Path, title: str,
                    references: dict[str, float] | None = None, ylabel: str | None = None) -> Path:
    """One line per variant (`mean_band`) per epoch, with the reference lines."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, frame in history.groupby("variant", sort=False):
        runs = int(frame.groupby("epoch")[metric].count().max())
        mean_band(ax, frame, "epoch", metric, f"{variant} (n={runs})")
    styles = iter(["--", ":", "-.", (0, (5, 1))])
    for name, value in (references or {}).items():
        ax.axhline(value, color="grey", linestyle=next(styles), linewidth=1, label=f"{name} ({value:.2f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel or metric)
    ax.set_title(title)
    if metric.endswith("nll") and len(history):
        lo = history[metric].min()
        ax.set_ylim(lo - 0.3, max(lo + 4.0, min((references or {}).get("no_context", lo + 4) + 1.0, 20)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def time_curves(rows: pd.DataFrame, metric: str, modes: list[str], times: list[float], names: dict[float, str],
                path: Path, title: str, references: dict[str, float]) -> Path:
    """The metric against log time: one line per mode (mean ± std over seeds), thin lines per seed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode in modes:
        frame = rows[rows["mode"] == mode]
        if not frame.empty:
            mean_band(ax, frame, "time_s", metric, f"{mode} (n={frame['seed'].nunique()})", MODE_COLORS.get(mode), "o")
    for name, value in references.items():
        if name != "random":
            ax.axhline(value, color="grey", linestyle="--", linewidth=1, label=f"{name} ({value:.2f})")
    ax.set_xscale("log")
    ticks = [t for t in times if t in names]
    ax.minorticks_off()
    ax.set_xticks(ticks, [names[t] for t in ticks], rotation=30)
    ax.set_xlabel("time after the last training write (chip clock)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
