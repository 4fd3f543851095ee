"""Reports, read from the record: the table (mean ± std over seeds), the figures, and their MLflow record.

- a study (`variants`): one row per variant, its learning curves, a `(summary)` run holding both;
- a sweep (`axes`): `<name>_runs` and `<name>_points` as CSV and Parquet, the metric against each axis and
  a heatmap for a 2-D grid, logged on the sweep's parent run (also from the parent alone: `--run-id`);
- a deploy: one row per (mode, time) and the metric against chip time.

The metric is the test NLL at the epoch of best validation NLL (JSB), the best test accuracy otherwise.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import RunConfig, load_run_config
from ..deploy import TIME_NAMES
from ..errors import ConfigError, UserError
from ..tracking import BEST, chart_view, client, tracking_uri
from . import figures, mirror
from .record import Record
from .spec import Job, Spec

METRICS = ("test_nll", "test_accuracy")


@dataclass(frozen=True)
class Report:
    """A spec's report.

    Attributes:
        name: the spec's name.
        table: mean ± std over seeds, one row per variant (study), per point (sweep) or per mode and time
            (deploy).
        text: the table as `imc-osttp report` prints it, with the task's reference values and where the
            files are.
        files: the tables and figures written.
    """

    name: str
    table: pd.DataFrame
    text: str
    files: tuple[Path, ...]


def report(spec: Spec, jobs: list[Job], output_dir: str | None = None) -> Report:
    """Write the spec's tables and figures from its record (a sweep's under `output_dir` if given)."""
    rows, history = Record(spec).current(jobs)
    if rows.empty:
        raise ConfigError(f"{spec.name}: nothing recorded yet in {Record(spec).runs}; run it first")
    refs = references(jobs[0].cfg)
    metric = next(m for m in METRICS if m in rows)
    if spec.job == "deploy":
        return deploy_report(spec, rows, metric, refs)
    if spec.nested:
        parent = None
        if jobs[0].cfg.tracking.enabled:
            mlf = client(jobs[0].cfg.tracking.uri)
            experiment = mlf.get_experiment_by_name(jobs[0].cfg.tracking.experiment)
            run = experiment and mirror.find_parent(mlf, experiment.experiment_id, spec.name, mirror.sweep_hash(jobs))
            parent = (mlf, run) if run else None
        axes = [{"label": d.label, "kind": d.kind} for d in spec.dimensions()]
        return sweep_report(spec.name, runs_export(rows, spec.labels()), axes, output_dir or spec.output_dir, refs,
                            parent)
    return study_report(spec, jobs, rows, history, metric, refs)


def references(cfg: RunConfig) -> dict[str, float]:
    """Reference lines from the task's data (random and no-context NLL, or chance); none without the data."""
    from ..data import load_task
    from ..metrics import task_references

    try:
        return task_references(load_task(cfg.data))
    except UserError:
        return {}


# ------------------------------------------------------------------ studies


def study_report(spec: Spec, jobs: list[Job], rows: pd.DataFrame, history: pd.DataFrame, metric: str,
                 refs: dict[str, float]) -> Report:
    record = Record(spec)
    figure = record.runs.with_suffix(".png")
    title = f"{spec.name}: {metric} per epoch (mean ± std over seeds, thin: each seed)"
    figures.learning_curves(history, metric, figure, title, refs)
    grouped = rows.groupby("variant", sort=False)
    table = pd.DataFrame({"rule": grouped["rule"].first(), "backend": grouped["backend"].first(),
                          "seeds": grouped["seed"].count(), f"{metric}_mean": grouped[metric].mean(),
                          f"{metric}_std": grouped[metric].std(ddof=0),
                          "best_epoch_mean": grouped["best_epoch"].mean(),
                          "epoch_time_s": grouped["mean_epoch_time"].mean()})
    lines = [f"{'variant':18s} {'rule':9s} {'backend':8s} {'seeds':>5s} {metric + ' (mean ± std)':>24s} "
             f"{'best epoch':>10s} {'s/epoch':>8s}"]
    for variant, row in table.iterrows():
        lines.append(f"{variant:18s} {row['rule']:9s} {row['backend']:8s} {row['seeds']:5d} "
                     f"{row[f'{metric}_mean']:15.3f} ± {row[f'{metric}_std']:.3f}  "
                     f"{row['best_epoch_mean']:10.1f} {row['epoch_time_s']:8.2f}")
    lines += [f"{'reference: ' + name:44s} {value:15.3f}" for name, value in refs.items()]
    text = "\n".join(lines)
    cfg = jobs[0].cfg
    if cfg.tracking.enabled:
        from ..tracking import log_study_summary

        experiment = log_study_summary(cfg, spec.name, [record.runs, record.history, figure], table)
        uri = tracking_uri(cfg.tracking.uri)
        text += (f"\n\nTable: {record.runs}   figure: {figure}\nMLflow experiment '{spec.name}' in {uri}; "
                 + ui_hint(uri, experiment))
    return Report(spec.name, table, text, (record.runs, record.history, figure))


def ui_hint(uri: str, experiment: str) -> str:
    """Where to see the study's curves: on the tracking server, or in a UI started on the local store."""
    if uri.startswith(("http://", "https://")):
        return f"its curves: {uri.rstrip('/')}{chart_view(experiment)}"
    return (f"open the UI with:\n  .venv/bin/mlflow ui --backend-store-uri {uri}\n"
            f"and its curves at http://127.0.0.1:5000{chart_view(experiment)}")


# ------------------------------------------------------------------ sweeps


def runs_export(rows: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """A sweep's runs as `<name>_runs` has them: point id, seed, run, backend, rule, labels, knobs, metrics."""
    rows = rows.rename(columns={"config_hash": "point_id"}).drop(columns=["results_version"])
    knobs = sorted(c for c in rows if c.startswith("knob."))
    first = ["point_id", "seed", "run_id", "backend", "rule", *labels, *knobs]
    return rows[first + [c for c in rows if c not in first]]


def find_run_parent(run_id: str) -> tuple[Any, Any]:
    mlf = client()
    try:
        parent = mlf.get_run(run_id)
    except Exception:  # MLflow raises its own error types per store
        raise ConfigError(f"--run-id {run_id}: no such run in {tracking_uri()}") from None
    if parent.data.tags.get("kind") != mirror.KIND:
        raise ConfigError(f"--run-id {run_id}: not a sweep's parent run")
    return mlf, parent


def report_parent(run_id: str, output_dir: str | Path) -> Report:
    """A sweep's report from its MLflow parent run alone (no spec, no record on this machine)."""
    mlf, parent = find_run_parent(run_id)
    axes = json.loads(parent.data.tags.get(mirror.TAG_AXES, "[]"))
    rows = []
    for run in mirror.search(mlf, parent.info.experiment_id, f"tags.`mlflow.parentRunId` = '{run_id}'"):
        if run.info.status != "FINISHED":
            continue
        tags, params = run.data.tags, run.data.params
        single = {**run.data.metrics, **params}  # single values: params now, metrics in older stores
        row: dict[str, Any] = {"point_id": tags[mirror.TAG_POINT], "seed": int(tags["seed"]),
                               "run_id": run.info.run_id, "backend": tags.get("backend", ""),
                               "rule": tags.get("rule", "")}
        row.update({a["label"]: tags.get(mirror.AXIS_TAG + a["label"], "") for a in axes})
        row.update({"knob." + k.removeprefix("backend.knobs."): _number(v) for k, v in params.items()
                    if k.startswith("backend.knobs.")})
        row.update({k.removeprefix(BEST): float(v) for k, v in single.items() if k.startswith(BEST)})
        row["train_seconds"] = float(single.get("train_seconds", "nan"))
        rows.append(row)
    if not rows:
        raise ConfigError(f"sweep run {run_id}: no finished runs yet")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_run_config(mlf.download_artifacts(rows[0]["run_id"], "config.yaml", tmp))
    return sweep_report(parent.data.tags[mirror.TAG_NAME], pd.DataFrame(rows), axes, output_dir, references(cfg),
                        (mlf, parent))


def points_table(runs: pd.DataFrame, axes: list[str], metric: str) -> pd.DataFrame:
    """One row per point: its labels and knobs, mean ± std of `metric` over seeds, and the seed count."""
    grouped = runs.groupby("point_id", sort=False)
    fixed = list(dict.fromkeys(["backend", "rule", *axes, *sorted(c for c in runs if c.startswith("knob."))]))
    table = grouped[fixed].first()
    table[f"{metric}_mean"] = grouped[metric].mean()
    table[f"{metric}_std"] = grouped[metric].std(ddof=0)
    table["seeds"] = grouped["seed"].count()
    return table.sort_values([*axes, "backend"]).reset_index()


def sweep_report(name: str, runs: pd.DataFrame, axes_info: list[dict[str, Any]], output_dir: str | Path,
                 refs: dict[str, float], parent: tuple[Any, Any] | None) -> Report:
    """Write the sweep's tables and figures under `output_dir`, log them on its parent run if there is one
    (`parent`: an MLflow client and the run)."""
    axes = [a["label"] for a in axes_info]
    metric = next(m for m in METRICS if m in runs)
    points = points_table(runs, axes, metric)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, frame in ((f"{name}_runs", runs), (f"{name}_points", points)):
        for suffix, write in ((".csv", frame.to_csv), (".parquet", frame.to_parquet)):
            write(out / f"{stem}{suffix}", index=False)
            paths.append(out / f"{stem}{suffix}")
    for axis in axes:
        others = [a for a in axes if a != axis]
        paths.append(figures.axis_figure(points, axis, others, metric, out / f"{name}_{_slug(axis)}.png",
                                         f"{name}: {metric} against {axis}", refs))
    grids = [a["label"] for a in axes_info if a["kind"] == "grid"
             and figures.numeric(points.loc[points["backend"] != "digital", a["label"]]) is not None]
    if len(grids) == 2:
        others = [a for a in axes if a not in grids]
        paths.append(figures.heatmap(points, grids[0], grids[1], others, metric, out / f"{name}_heatmap.png",
                                     f"{name}: {metric}"))
    text = "\n".join([_format_points(points, axes, metric),
                      *(f"reference {name}: {value:.3f}" for name, value in refs.items())])
    text += f"\n\nTables and figures: {out}/{name}_*"
    if parent is not None:
        mlf, run = parent
        for path in paths:
            mlf.log_artifact(run.info.run_id, str(path), "report")
        text += f"\nMLflow parent run {run.info.run_id} in {mlf.tracking_uri}"
    return Report(name, points, text, tuple(paths))


def _format_points(points: pd.DataFrame, axes: list[str], metric: str) -> str:
    table = points[list(dict.fromkeys(["backend", *axes, "seeds"]))].copy()
    table[metric] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(points[f"{metric}_mean"], points[f"{metric}_std"],
                                                           strict=True)]
    return table.to_string(index=False)


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


# ------------------------------------------------------------------ deploys


def deploy_report(spec: Spec, rows: pd.DataFrame, metric: str, refs: dict[str, float]) -> Report:
    """One row per (mode, time): mean and std over seeds of the metric, mean pulses and updates; the figure."""
    grouped = rows.groupby(["mode", "time_s"], sort=False)
    table = pd.DataFrame({"seeds": grouped["seed"].count(), "mean": grouped[metric].mean(),
                          "std": grouped[metric].std(ddof=0), "pulses": grouped["pulses"].mean(),
                          "updates": grouped["updates"].mean()})
    table = table.reindex([(m, t) for m in spec.modes for t in spec.times if (m, t) in table.index])
    path = Record(spec).runs
    figure = figures.time_curves(rows, metric, spec.modes, spec.times, TIME_NAMES, path.with_suffix(".png"),
                                 f"{spec.name}: {metric} after deployment (mean ± std over seeds)", refs)
    lines = [f"{'mode':13s} {'time':>9s} {'seeds':>5s} {metric + ' (mean ± std)':>24s} {'updates':>8s} "
             f"{'pulses':>10s}"]
    for (mode, t), row in table.iterrows():
        lines.append(f"{mode:13s} {TIME_NAMES.get(t, f'{t:g} s'):>9s} {int(row['seeds']):5d} "
                     f"{row['mean']:15.3f} ± {row['std']:.3f} {row['updates']:8.0f} {row['pulses']:10.3g}")
    lines += [f"{'reference: ' + name:30s} {value:15.3f}" for name, value in refs.items()]
    text = "\n".join(lines) + f"\n\nTable: {path}   figure: {figure}"
    return Report(spec.name, table, text, (path, figure))
