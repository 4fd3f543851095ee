"""Sweep reports: every point's knobs and final metric (mean ± std over seeds), as tables and figures.

Everything is read back from MLflow (the parent run and its FINISHED
children), so a report needs no local state and works from a parent run id.
The metric is the test NLL at the epoch of best validation NLL for JSB
(param `best/test_nll`), the best test accuracy for classification tasks.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import load_run_config
from ..errors import ConfigError, UserError
from ..tracking import BEST, client, tracking_uri
from . import figures, store
from .spec import KNOB_PREFIX, SweepSpec, expand, sweep_hash

METRICS = ("test_nll", "test_accuracy")


def find_sweep_parent(spec: SweepSpec) -> tuple[Any, Any]:
    """(client, parent run) of a sweep file's runs."""
    points = expand(spec)
    tracking = points[0].cfg.tracking
    mlf = client(tracking.uri)
    experiment = mlf.get_experiment_by_name(tracking.experiment)
    parent = None if experiment is None else store.find_parent(
        mlf, experiment.experiment_id, spec.name, sweep_hash(points, spec.seed_list()))
    if parent is None:
        raise ConfigError(f"sweep {spec.name}: no runs of it in {tracking_uri(tracking.uri)}; "
                          f"run `imc-osttp sweep` first")
    return mlf, parent


def find_run_parent(run_id: str) -> tuple[Any, Any]:
    mlf = client()
    try:
        parent = mlf.get_run(run_id)
    except Exception:  # MLflow raises its own error types per store
        raise ConfigError(f"--run-id {run_id}: no such run in {tracking_uri()}") from None
    if parent.data.tags.get("kind") != store.KIND:
        raise ConfigError(f"--run-id {run_id}: not a sweep's parent run")
    return mlf, parent


def runs_table(mlf, parent: Any, axes: list[str]) -> pd.DataFrame:
    """One row per FINISHED child: point id, seed, axis labels, knob values, best/* params."""
    rows = []
    for run in store.children(mlf, parent.info.experiment_id, parent.info.run_id):
        if run.info.status != "FINISHED":
            continue
        tags, params = run.data.tags, run.data.params
        single = {**run.data.metrics, **params}  # single values: params now, metrics in older stores
        row: dict[str, Any] = {"point_id": tags[store.TAG_POINT], "seed": int(tags["seed"]),
                               "run_id": run.info.run_id, "backend": tags.get("backend", ""),
                               "rule": tags.get("rule", "")}
        row.update({a: tags.get(store.AXIS_TAG + a, "") for a in axes})
        row.update({"knob." + k.removeprefix(KNOB_PREFIX): _number(v) for k, v in params.items()
                    if k.startswith(KNOB_PREFIX)})
        row.update({k.removeprefix(BEST): float(v) for k, v in single.items() if k.startswith(BEST)})
        row["train_seconds"] = float(single.get("train_seconds", "nan"))
        rows.append(row)
    if not rows:
        raise ConfigError(f"sweep run {parent.info.run_id}: no finished runs yet")
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame, axes: list[str], metric: str) -> pd.DataFrame:
    """One row per point: its labels and knobs, mean ± std of `metric` over seeds, and the seed count."""
    grouped = runs.groupby("point_id", sort=False)
    fixed = list(dict.fromkeys(["backend", "rule", *axes, *sorted(c for c in runs if c.startswith("knob."))]))
    table = grouped[fixed].first()
    table[f"{metric}_mean"] = grouped[metric].mean()
    table[f"{metric}_std"] = grouped[metric].std(ddof=0)
    table["seeds"] = grouped["seed"].count()
    return table.sort_values([*axes, "backend"]).reset_index()


def report_sweep(mlf, parent: Any, output_dir: str | Path = "results") -> str:
    """Write tables and figures under `output_dir`, log them on the parent run; returns the printable table."""
    name = parent.data.tags[store.TAG_NAME]
    axes_info = json.loads(parent.data.tags.get(store.TAG_AXES, "[]"))
    axes = [a["label"] for a in axes_info]
    runs = runs_table(mlf, parent, axes)
    metric = next(m for m in METRICS if m in runs)
    points = summarize(runs, axes, metric)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, frame in ((f"{name}_runs", runs), (f"{name}_points", points)):
        for suffix, write in ((".csv", frame.to_csv), (".parquet", frame.to_parquet)):
            write(out / f"{stem}{suffix}", index=False)
            paths.append(out / f"{stem}{suffix}")
    refs = references(mlf, runs["run_id"].iloc[0])
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
    for path in paths:
        mlf.log_artifact(parent.info.run_id, str(path), "report")
    return format_points(points, axes, metric, refs) + (
        f"\n\nTables and figures: {out}/{name}_*\nMLflow parent run {parent.info.run_id} in {mlf.tracking_uri}")


def references(mlf, run_id: str) -> dict[str, float]:
    """The task's reference lines from one child's config (random and no-context NLL, or chance)."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as progress_bar

    from ..data import load_task
    from ..metrics import task_references

    before = progress_bar.get_raw()
    progress_bar.set("false")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_run_config(mlf.download_artifacts(run_id, "config.yaml", tmp))
    finally:
        if before is None:
            progress_bar.unset()
        else:
            progress_bar.set(before)
    try:
        data = load_task(cfg.data)
    except UserError:  # the data is not on this machine: no reference lines
        return {}
    return task_references(data)


def format_points(points: pd.DataFrame, axes: list[str], metric: str, refs: dict[str, float]) -> str:
    table = points[list(dict.fromkeys(["backend", *axes, "seeds"]))].copy()
    table[metric] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(points[f"{metric}_mean"], points[f"{metric}_std"],
                                                           strict=True)]
    lines = [table.to_string(index=False)]
    lines += [f"reference {name}: {value:.3f}" for name, value in refs.items()]
    return "\n".join(lines)


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
