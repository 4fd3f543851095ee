"""The job kinds: what a worker runs for one job (`run_job`), and the rows the driver records of it.

A worker only computes: it never writes a table or an MLflow run. It returns an `Outcome` (history, best
epoch, final parameters, a deploy job's rows and its per-mode series) and may relay `start` and each epoch
to the driver as they happen (`Relay`), which logs them live.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .spec import Job

if TYPE_CHECKING:
    from ..data import TaskData
    from ..training import RunResult

Relay = Callable[[str, Any], None]  # ("start", None) and ("epoch", (epoch, metrics))
STEPS_PER_DECADE = 100  # MLflow step of deploy time t: round(100·log10(t / 1 s))
LEGACY_BEST = ("test_nll", "valid_nll", "train_nll", "test_accuracy", "spike_rate")  # a study row's first columns


@dataclass
class Series:
    """A run of its own beside a job's run (deploy: one per mode): metrics against a step."""

    name: str
    tags: dict[str, str]
    params: dict[str, Any]
    points: list[tuple[int, dict[str, float]]]


@dataclass
class Outcome:
    """What a worker sends back: the run's history and parameters, or the error that ended it."""

    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    parameters: dict[str, np.ndarray] = field(default_factory=dict)
    diverged: bool = False
    seconds: float = 0.0
    error: str | None = None  # "Type: message" then the traceback
    rows: list[dict[str, Any]] = field(default_factory=list)  # a deploy job's: one per mode and time
    series: list[Series] = field(default_factory=list)


def failure(exc: BaseException, seconds: float = 0.0) -> Outcome:
    return Outcome(seconds=seconds, error=f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")


def run_job(job: Job, data: TaskData | None = None, relay: Relay | None = None) -> Outcome:
    """Run one job (on `data`, else what its config names); an exception becomes `Outcome.error`, so the
    other jobs go on."""
    start = time.perf_counter()
    try:
        outcome = (deploy_job if job.kind == "deploy" else train_job)(job, data, relay or (lambda *_: None))
    except Exception as exc:  # any failure of one job is recorded, not fatal
        return failure(exc, time.perf_counter() - start)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _train(job: Job, data: TaskData | None, relay: Relay) -> tuple[RunResult, TaskData, Outcome]:
    import torch

    from ..data import load_task
    from ..runner import final_parameters
    from ..training import train

    torch.set_num_threads(job.cfg.train.threads or 1)  # one per job: jobs run side by side
    data = data if data is not None else load_task(job.cfg.data)
    relay("start", None)
    result = train(job.cfg, data, on_epoch=lambda epoch, metrics: relay("epoch", (epoch, metrics)), progress=False)
    return result, data, Outcome(result.history, result.best(), final_parameters(result), result.diverged)


def train_job(job: Job, data: TaskData | None, relay: Relay) -> Outcome:
    return _train(job, data, relay)[2]


def deploy_job(job: Job, data: TaskData | None, relay: Relay) -> Outcome:
    """Train the seed, then every mode from its own copy of the trained chip (imc_osttp/deploy.py)."""
    import sys

    from ..deploy import MODES, TIME_NAMES, deploy_mode

    result, data, outcome = _train(job, data, relay)
    if result.diverged or result.net is None:
        raise RuntimeError(f"seed {job.seed} diverged in training; nothing to deploy")
    print(f"{job.cfg.name}: seed {job.seed} trained ({len(result.history)} epochs)", file=sys.stderr, flush=True)

    def show(row: dict[str, Any]) -> None:  # progress of the long modes, one line per evaluation
        value = row.get("test_nll", row.get("test_accuracy"))
        print(f"{job.cfg.name}: seed {job.seed} {row['mode']} at {TIME_NAMES.get(row['time_s'], row['time_s'])}: "
              f"{value:.3f} ({row['updates']} updates)", file=sys.stderr, flush=True)

    settings = job.deploy
    for mode in settings.modes:
        learns = MODES[mode].learns
        rows = deploy_mode(job.cfg, result.net, data, mode, settings.times, settings.adaptation if learns else None,
                           on_time=show, mitigation=settings.mitigation)
        outcome.rows += rows
        params = {f"deploy.{k}": v for k, v in settings.adaptation.model_dump().items()} if learns else {}
        points = [(round(STEPS_PER_DECADE * math.log10(r["time_s"])),
                   {k: float(v) for k, v in r.items() if k not in ("mode", "seed")}) for r in rows]
        outcome.series.append(Series(mode, {"deploy_mode": mode}, params, points))
    return outcome


def record_rows(job: Job, outcome: Outcome, run_id: str) -> list[dict[str, Any]]:
    """The job's rows in the table of record: a training run's summary, or a deploy job's (mode, time) rows."""
    key = {"config_hash": job.key, "results_version": job.version}
    if job.kind == "deploy":
        return [{**job.labels, **row, **key, "trained_run_id": run_id} for row in outcome.rows]
    from ..backends import backend_class

    cfg, best, history = job.cfg, outcome.best, outcome.history
    tags = backend_class(cfg).run_tags(cfg)
    row: dict[str, Any] = {**job.labels, "rule": cfg.rule.name, "backend": tags["backend"],
                           "device_config": tags.get("device_config", ""), "seed": job.seed,
                           "best_epoch": history.index(best) + 1 if best else 0, "epochs": len(history),
                           "diverged": outcome.diverged, "run_id": run_id, **key}
    row.update({k: best[k] for k in LEGACY_BEST if k in best})
    if history and "test_nll" in history[-1]:
        row["final_test_nll"] = history[-1]["test_nll"]
    row["mean_epoch_time"] = sum(h["epoch_time"] for h in history) / max(len(history), 1)
    row.update({k: v for k, v in best.items() if k not in row})
    row["train_seconds"] = outcome.seconds
    row.update({"knob." + k: v for k, v in cfg.backend.knobs.items()})
    return [row]
