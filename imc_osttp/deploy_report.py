"""Deploy reports: the test metric per mode and time (mean ± std over seeds) and its figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .deploy import TIME_NAMES, DeployConfig, deploy_path  # noqa: E402
from .figures import mean_band  # noqa: E402

MODE_COLORS = {"frozen": "C0", "frozen_gdc": "C1", "learning": "C2", "learning_gdc": "C3", "frozen_pcdc": "C4",
               "learning_pcdc": "C5", "learning_gated": "C6", "learning_transfer": "C9",
               "learning_digital": "C8"}  # same in every figure


def metric_of(rows: pd.DataFrame) -> str:
    return "test_nll" if "test_nll" in rows else "test_accuracy"


def deploy_table(rows: pd.DataFrame, deploy: DeployConfig) -> pd.DataFrame:
    """One row per (mode, time): mean and std over seeds of the metric, mean pulses and updates."""
    metric = metric_of(rows)
    grouped = rows.groupby(["mode", "time_s"], sort=False)
    table = pd.DataFrame({"seeds": grouped["seed"].count(), "mean": grouped[metric].mean(),
                          "std": grouped[metric].std(ddof=0), "pulses": grouped["pulses"].mean(),
                          "updates": grouped["updates"].mean()})
    order = [(m, t) for m in deploy.modes for t in deploy.times if (m, t) in table.index]
    return table.reindex(order)


def format_deploy(table: pd.DataFrame, metric: str, refs: dict[str, float]) -> str:
    lines = [f"{'mode':13s} {'time':>9s} {'seeds':>5s} {metric + ' (mean ± std)':>24s} {'updates':>8s} "
             f"{'pulses':>10s}"]
    for (mode, t), row in table.iterrows():
        lines.append(f"{mode:13s} {TIME_NAMES.get(t, f'{t:g} s'):>9s} {int(row['seeds']):5d} "
                     f"{row['mean']:15.3f} ± {row['std']:.3f} {row['updates']:8.0f} {row['pulses']:10.3g}")
    for name, value in refs.items():
        lines.append(f"{'reference: ' + name:30s} {value:15.3f}")
    return "\n".join(lines)


def deploy_figure(rows: pd.DataFrame, deploy: DeployConfig, refs: dict[str, float]) -> Path:
    """The metric against log time: one line per mode (mean ± std over seeds), thin lines per seed."""
    metric = metric_of(rows)
    path = deploy_path(deploy).with_suffix(".png")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode in deploy.modes:
        frame = rows[rows["mode"] == mode]
        if frame.empty:
            continue
        mean_band(ax, frame, "time_s", metric, f"{mode} (n={frame['seed'].nunique()})", MODE_COLORS.get(mode), "o")
    for name, value in refs.items():
        if name != "random":
            ax.axhline(value, color="grey", linestyle="--", linewidth=1, label=f"{name} ({value:.2f})")
    ax.set_xscale("log")
    ticks = [t for t in deploy.times if t in TIME_NAMES]
    ax.minorticks_off()
    ax.set_xticks(ticks, [TIME_NAMES[t] for t in ticks], rotation=30)
    ax.set_xlabel("time after the last training write (chip clock)")
    ax.set_ylabel(metric)
    ax.set_title(f"{deploy.name}: {metric} after deployment (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report_deploy(deploy: DeployConfig, rows: pd.DataFrame) -> str:
    """Write the figure and return the printable table."""
    from .data import load_task
    from .metrics import task_references

    cfg = deploy.run_config(deploy.seeds[0])
    refs = task_references(load_task(cfg.data))
    metric = metric_of(rows)
    fig = deploy_figure(rows, deploy, refs)
    text = format_deploy(deploy_table(rows, deploy), metric, refs)
    return f"{text}\n\nTable: {deploy_path(deploy)}   figure: {fig}"
