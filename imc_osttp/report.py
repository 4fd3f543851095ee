"""Study reports: the result table (mean ± std over seeds), the figure, and their MLflow record."""

from __future__ import annotations

import pandas as pd

from .data import load_task
from .figures import learning_curves
from .metrics import task_references
from .study import StudyConfig, current_rows, read_table, study_paths
from .tracking import chart_view, tracking_uri


def references(study: StudyConfig) -> dict[str, float]:
    """Reference lines computed from the study's data: random and no-context NLL, or chance accuracy."""
    cfg = study.run_config(next(iter(study.variants)), study.seeds[0])
    return task_references(load_task(cfg.data))


def summary_table(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per variant: mean ± std of `metric` over seeds, and the seeds' count."""
    grouped = runs.groupby("variant", sort=False)
    table = pd.DataFrame({"rule": grouped["rule"].first(), "backend": grouped["backend"].first(),
                          "seeds": grouped["seed"].count(), f"{metric}_mean": grouped[metric].mean(),
                          f"{metric}_std": grouped[metric].std(ddof=0),
                          "best_epoch_mean": grouped["best_epoch"].mean(),
                          "epoch_time_s": grouped["mean_epoch_time"].mean()})
    return table


def format_table(table: pd.DataFrame, metric: str, refs: dict[str, float]) -> str:
    lines = [f"{'variant':18s} {'rule':9s} {'backend':8s} {'seeds':>5s} {metric + ' (mean ± std)':>24s} "
             f"{'best epoch':>10s} {'s/epoch':>8s}"]
    for variant, row in table.iterrows():
        lines.append(f"{variant:18s} {row['rule']:9s} {row['backend']:8s} {row['seeds']:5d} "
                     f"{row[f'{metric}_mean']:15.3f} ± {row[f'{metric}_std']:.3f}  "
                     f"{row['best_epoch_mean']:10.1f} {row['epoch_time_s']:8.2f}")
    for name, value in refs.items():
        lines.append(f"{'reference: ' + name:44s} {value:15.3f}")
    return "\n".join(lines)


def report_study(study: StudyConfig, runs: pd.DataFrame) -> str:
    """Write the figure, log table and figure to MLflow, and return the printable table."""
    runs_csv, hist_csv, fig_path = study_paths(study)
    history = current_rows(study, read_table(hist_csv))
    metric = "test_nll" if "test_nll" in runs else "test_accuracy"
    refs = references(study)
    title = f"{study.name}: {metric} per epoch (mean ± std over seeds, thin: each seed)"
    learning_curves(history, metric, fig_path, title, refs)
    table = summary_table(runs, metric)
    table = table.reindex([v for v in study.variants if v in table.index])  # the study file's order
    text = format_table(table, metric, refs)
    base = study.run_config(next(iter(study.variants)), study.seeds[0])
    if base.tracking.enabled:
        from .tracking import log_study_summary

        experiment = log_study_summary(base, study.name, [runs_csv, hist_csv, fig_path], table)
        uri = tracking_uri(base.tracking.uri)
        text += (f"\n\nTable: {runs_csv}   figure: {fig_path}\nMLflow experiment '{study.name}' in {uri}; "
                 + ui_hint(uri, experiment))
    return text


def ui_hint(uri: str, experiment: str) -> str:
    """Where to see the study's curves: on the tracking server, or in a UI started on the local store."""
    if uri.startswith(("http://", "https://")):
        return f"its curves: {uri.rstrip('/')}{chart_view(experiment)}"
    return (f"open the UI with:\n  .venv/bin/mlflow ui --backend-store-uri {uri}\n"
            f"and its curves at http://127.0.0.1:5000{chart_view(experiment)}")
