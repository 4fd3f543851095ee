"""MLflow tracking: one run per training, epochs as steps, config/metrics/parameters as artifacts.

The store is local by default (`sqlite:///mlflow.db` in the working
directory) unless `MLFLOW_TRACKING_URI` or the config names another. Runs of
one study share an experiment, so the MLflow UI overlays their curves.

Only per-epoch values are metrics, so the UI's chart view starts with the
curves; single values (best epoch, training time, a study's summary) are
params, which the UI shows as a table. Metric keys have no `/` (see `metric_key`).
"""

from __future__ import annotations

import csv
import importlib.metadata
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig, dump_yaml
from .errors import UserError

DEFAULT_URI = "sqlite:///mlflow.db"
MAX_PARAMS_PER_CALL = 100
PACKAGES = ("imc-osttp", "torch", "aihwkit", "numpy", "mlflow")
BEST = "best/"  # param prefix of a run's values at its best epoch
# MLflow's experiment-kind tag, read by the UI's kind selector. The UI of 3.17 opens every experiment
# in the view of its global GenAI / Model-training switch (GenAI by default), so links carry the view too.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def tracking_uri(configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[f"version.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[f"version.{name}"] = "absent"
    return out


def run_tags(cfg: RunConfig) -> dict[str, str]:
    from .backends import backend_class

    return {"task": cfg.data.task, "rule": cfg.rule.name, **backend_class(cfg).run_tags(cfg),
            "seed": str(cfg.seed), "git_commit": git_commit(), **package_versions()}


_checked: set[str] = set()


def client(uri: str | None = None):
    """An MlflowClient on the store, checked once per process so a broken store is one clear error. A new
    SQLite store is created under a file lock beside it: two processes creating its tables at once would
    both run its migrations, and one would fail."""
    import mlflow  # heavy: imported only when tracking is on

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    resolved = tracking_uri(uri)
    try:
        with _creating(resolved):  # the first query creates or migrates the tables
            mlf = mlflow.MlflowClient(tracking_uri=resolved)
            if resolved not in _checked:
                mlf.search_experiments(max_results=1)
    except Exception as exc:  # sqlalchemy/alembic/mlflow errors of an unusable store
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UserError(f"MLflow store {resolved} is unusable ({first}): set MLFLOW_TRACKING_URI to another "
                        "store or run with tracking.enabled=false (keep the file: it may hold your runs)") from None
    _checked.add(resolved)
    return mlf


@contextmanager
def _creating(uri: str) -> Iterator[None]:
    """Hold `.<file>.lock` beside a local SQLite store while this process first opens it."""
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    if path is None or uri in _checked:
        yield
        return
    from filelock import FileLock

    store = Path(path).absolute()
    store.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(store.with_name(f".{store.name}.lock")):
        yield


def prepare_store(uri: str | None, experiment: str) -> str:
    """Create the store's tables and the experiment in this process, before parallel workers start."""
    return experiment_id(client(uri), experiment)


def experiment_id(mlf, name: str) -> str:
    """The experiment's id, created if missing; tagged as model training (also one an older version made)."""
    key, kind = EXPERIMENT_KIND
    found = mlf.get_experiment_by_name(name)
    if found is None:
        try:
            return mlf.create_experiment(name, tags={key: kind})
        except Exception:  # another process created it first
            found = mlf.get_experiment_by_name(name)
            if found is None:
                raise
    if key not in found.tags:
        mlf.set_experiment_tag(found.experiment_id, key, kind)
    return found.experiment_id


def chart_view(experiment: str) -> str:
    """The UI's address (after host:port) of an experiment's curves, in the model-training view."""
    return f"/#/experiments/{experiment}/runs?workflowType=machine_learning&compareRunsMode=CHART"


def run_name(variant: str, seed: int) -> str:
    return f"{variant}, seed {seed}"


def metric_key(name: str) -> str:
    """The MLflow key of a per-epoch value: `pulses/W1` becomes `pulses.W1`. The UI makes a chart section
    of each `prefix/` and shows those before all other charts: pulse counts, which only analog runs have,
    would come before the curves that compare digital and analog runs."""
    return name.replace("/", ".")


def log_params(mlf, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_CALL):
        mlf.log_batch(run_id, params=items[i : i + MAX_PARAMS_PER_CALL])


class RunLogger:
    """Logs one training run; `open_run` makes one, `start_run` wraps it for a single process."""

    def __init__(self, mlf, run_id: str, cfg: RunConfig) -> None:
        self.mlf, self.run_id, self.cfg = mlf, run_id, cfg
        self._tmp = tempfile.TemporaryDirectory()
        self.workdir = Path(self._tmp.name)
        self.rows: list[dict[str, float]] = []

    def log_params(self, params: dict[str, Any]) -> None:
        log_params(self.mlf, self.run_id, params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_key(k), float(v), now, step) for k, v in metrics.items() if np.isfinite(v)]
        self.mlf.log_batch(self.run_id, metrics=items)

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Log an epoch's metrics at once, so an interrupted run keeps its history."""
        self.log_metrics(metrics, step=epoch)
        self.rows.append({"epoch": epoch, **metrics})

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.mlf.log_artifact(self.run_id, str(path), folder)

    def finish(self, params: dict[str, np.ndarray] | None, summary: dict[str, float]) -> None:
        """Artifacts (metrics CSV, final parameters) and summary metrics of the finished run."""
        if self.rows:
            path = self.workdir / "metrics.csv"
            fields = sorted({k for row in self.rows for k in row}, key=lambda k: (k != "epoch", k))
            with path.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
                writer.writerows(self.rows)
            self.log_artifact(path)
        if params:
            path = self.workdir / "final_parameters.npz"
            np.savez_compressed(path, **params)
            self.log_artifact(path)
        if summary:
            self.log_params({BEST + k: v for k, v in summary.items()})

    def end(self, status: str, error: str | None = None) -> None:
        """FINISHED, KILLED or FAILED (with the error as a tag)."""
        if error:
            self.mlf.set_tag(self.run_id, "error", error[:5000])
        self.mlf.set_terminated(self.run_id, status)
        self._tmp.cleanup()


def open_run(cfg: RunConfig, experiment: str | None = None, parent_run_id: str | None = None,
             extra_tags: dict[str, str] | None = None, variant: str | None = None) -> RunLogger:
    """A RUNNING MLflow run for `cfg`, named by its `variant` (default: the config's name) and seed, with the
    config as params and as config.yaml."""
    mlf = client(cfg.tracking.uri)
    exp = experiment_id(mlf, experiment or cfg.tracking.experiment or cfg.name)
    variant = variant or cfg.name
    tags = {**run_tags(cfg), "variant": variant, **(extra_tags or {})}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = mlf.create_run(exp, tags=tags, run_name=run_name(variant, cfg.seed))
    logger = RunLogger(mlf, run.info.run_id, cfg)
    logger.log_params(cfg.flat())
    path = logger.workdir / "config.yaml"
    path.write_text(dump_yaml(cfg))
    logger.log_artifact(path)
    return logger


@contextmanager
def start_run(cfg: RunConfig) -> Iterator[RunLogger]:
    """`open_run` for the length of a block: FINISHED on success, KILLED on Ctrl-C, FAILED otherwise."""
    logger = open_run(cfg)
    try:
        yield logger
    except KeyboardInterrupt:
        logger.end("KILLED")
        raise
    except BaseException as exc:
        logger.end("FAILED", f"{type(exc).__name__}: {exc}")
        raise
    logger.end("FINISHED")


def log_study_summary(cfg: RunConfig, experiment: str, artifacts: list[Path], table: Any) -> str:
    """A summary run in the study's experiment holding its files, and its table (one row per variant)
    as params `<variant>/<column>`: the UI lists them as a table, where metrics would be bar charts.
    It replaces the summary of an earlier report (deleted: its table is out of date). Returns the
    experiment's id."""
    mlf = client(cfg.tracking.uri)
    exp = experiment_id(mlf, experiment)
    for old in mlf.search_runs([exp], "tags.kind = 'study_summary'"):
        mlf.delete_run(old.info.run_id)
    run = mlf.create_run(exp, tags={"kind": "study_summary", "git_commit": git_commit()},
                         run_name=f"{experiment} (summary)")
    for path in artifacts:
        if path.exists():
            mlf.log_artifact(run.info.run_id, str(path))
    log_params(mlf, run.info.run_id, {f"{variant}/{column}": _cell(value) for variant, row in table.iterrows()
                                      for column, value in row.items()})
    mlf.set_terminated(run.info.run_id, "FINISHED")
    return exp


def _cell(value: Any) -> Any:
    """Six significant digits for floats: the table is for reading; the CSV artifacts keep full precision."""
    return f"{value:.6g}" if isinstance(value, float) else value
