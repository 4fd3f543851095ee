"""Where a sweep's runs train: in this process, a spawn process pool, or Ray tasks.

Workers only train and return what they measured (`Outcome`); they never
touch MLflow. The driver logs every run, so the store has a single writer
(SQLite allows one at a time) and Ray nodes need no access to it.
aihwkit's C++ holds the GIL, hence processes, each with one OpenMP thread.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

from ..config import RunConfig
from ..errors import UserError

Executor = Literal["local", "ray"]
EXECUTORS: tuple[str, ...] = ("local", "ray")
K = TypeVar("K")
ENV = {"OMP_NUM_THREADS": "1"}


@dataclass
class Outcome:
    """What a worker sends back: the run's history and parameters, or the error that ended it."""

    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    parameters: dict[str, np.ndarray] = field(default_factory=dict)
    diverged: bool = False
    seconds: float = 0.0
    error: str | None = None  # "Type: message" then the traceback


def train_point(cfg: RunConfig) -> Outcome:
    """Train one run untracked; an exception becomes `Outcome.error` so the sweep goes on."""
    from ..runner import final_parameters, run

    start = time.perf_counter()
    try:
        result, _ = run(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"enabled": False})}),
                        progress=False)
    except Exception as exc:  # any failure of one point is recorded, not fatal
        return Outcome(seconds=time.perf_counter() - start,
                       error=f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
    return Outcome(result.history, result.best(), final_parameters(result), result.diverged,
                   time.perf_counter() - start)


def outcomes(jobs: list[tuple[K, RunConfig]], workers: int, executor: Executor = "local",
             address: str | None = None) -> Iterator[tuple[K, Outcome]]:
    """(key, outcome) for every job, in the order they finish."""
    if not jobs:
        return
    if executor == "ray":
        yield from _ray(jobs, workers, address)
    elif workers == 1:
        for key, cfg in jobs:  # no spawn cost, and a debugger works
            yield key, train_point(cfg)
    else:
        yield from _pool(jobs, workers)


def _single_threaded() -> None:
    """Pool initializer: before torch or aihwkit start their thread pools."""
    os.environ.update(ENV)
    import torch

    torch.set_num_threads(1)


def _pool(jobs: list[tuple[K, RunConfig]], workers: int) -> Iterator[tuple[K, Outcome]]:
    pool = cf.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                                  initializer=_single_threaded)
    try:
        futures = {pool.submit(train_point, cfg): key for key, cfg in jobs}
        for fut in cf.as_completed(futures):
            try:
                outcome = fut.result()
            except cf.process.BrokenProcessPool:
                raise UserError("a worker process died (killed, or crashed inside aihwkit); finished runs "
                                "are kept: run the sweep again to train the rest") from None
            yield futures[fut], outcome
    except BaseException:  # Ctrl-C, an error, or the consumer closed us: no one will log what runs now
        _terminate(pool)
        raise
    pool.shutdown(wait=True)


def _terminate(pool: cf.ProcessPoolExecutor) -> None:
    """Cancel the queued runs and end those in flight (Python < 3.14 has no public call for the latter)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


def import_ray() -> Any:
    """Ray is an optional extra: imported only for the Ray executor, with a one-line hint if missing."""
    try:
        import ray
    except ImportError:
        raise UserError("the Ray executor needs ray: pip install 'imc-osttp[ray]'") from None
    return ray


def _ray(jobs: list[tuple[K, RunConfig]], workers: int, address: str | None) -> Iterator[tuple[K, Outcome]]:
    """One Ray task per run: a local Ray with `workers` CPUs, or the cluster at `address`."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        options = {"address": address} if address else {"num_cpus": workers, "include_dashboard": False}
        ray.init(runtime_env={"env_vars": ENV}, log_to_driver=False, **options)
    task = ray.remote(num_cpus=1, max_retries=0)(train_point)
    refs = {task.remote(cfg): key for key, cfg in jobs}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                outcome = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # the task's worker died: only this run fails
                outcome = Outcome(error=f"{type(exc).__name__}: {exc}")
            yield refs[done[0]], outcome
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
