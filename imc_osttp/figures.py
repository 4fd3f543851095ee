"""Figures: learning curves per variant (mean ± std over seeds) with the reference lines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
