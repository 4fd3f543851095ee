"""Where a sweep's runs train: in this process, a spawn process pool, or Ray tasks.

Workers only train and return what they measured (`Outcome`); they never
touch MLflow. The driver logs every run, so the store has a single writer
(SQLite allows one at a time) and Ray nodes need no access to it.
aihwkit's C++ holds the GIL, hence processes, each with one OpenMP thread.
On a Ray cluster the driver also reads the data (into Ray's object store),
so nodes need no data files; they need imc-osttp installed (scripts/setup.sh:
aihwkit is compiled there, which no runtime_env can do per job).
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from ..config import RunConfig
from ..errors import UserError

if TYPE_CHECKING:  # workers import torch only once their initializer has set its threads
    from ..data import TaskData

Executor = Literal["local", "ray"]
EXECUTORS: tuple[str, ...] = ("local", "ray")
K = TypeVar("K")
A = TypeVar("A")
R = TypeVar("R")
ENV = {"OMP_NUM_THREADS": "1"}
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass
class Outcome:
    """What a worker sends back: the run's history and parameters, or the error that ended it."""

    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    parameters: dict[str, np.ndarray] = field(default_factory=dict)
    diverged: bool = False
    seconds: float = 0.0
    error: str | None = None  # "Type: message" then the traceback


def failure(exc: Exception, seconds: float = 0.0) -> Outcome:
    return Outcome(seconds=seconds, error=f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")


def train_point(cfg: RunConfig, data: TaskData | None = None) -> Outcome:
    """Train one run untracked (on `data`, else what `cfg.data` names); an exception becomes `Outcome.error`
    so the sweep goes on."""
    from ..runner import final_parameters, run

    start = time.perf_counter()
    try:
        result, _ = run(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"enabled": False})}),
                        data, progress=False)
    except Exception as exc:  # any failure of one point is recorded, not fatal
        return failure(exc, time.perf_counter() - start)
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
        yield from pool_map(train_point, jobs, workers)


def _init_worker(driver: int) -> None:
    """Pool initializer: die with the driver, then one thread (before torch or aihwkit start their pools)."""
    _exit_with(driver)
    os.environ.update(ENV)
    import torch

    torch.set_num_threads(1)


def _exit_with(driver: int) -> None:
    """A worker would outlive a SIGKILLed driver, training for no one: on Linux the kernel kills it with its
    parent (PR_SET_PDEATHSIG), elsewhere a thread watches the parent's pid."""
    linux = sys.platform.startswith("linux") and ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    if not linux:
        threading.Thread(target=_watch, args=(driver,), daemon=True, name="watch-driver").start()
    if os.getppid() != driver:  # it died before we asked to die with it
        os._exit(1)


def _watch(driver: int) -> None:
    while os.getppid() == driver:
        time.sleep(1.0)
    os._exit(1)


def pool_map(fn: Callable[[A], R], jobs: list[tuple[K, A]], workers: int) -> Iterator[tuple[K, R]]:
    """fn(arg) for every (key, arg) in spawned worker processes that die with this one, as they finish;
    on an error or Ctrl-C the queued jobs are cancelled and those in flight ended."""
    pool = cf.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                                  initializer=_init_worker, initargs=(os.getpid(),))
    try:
        futures = {pool.submit(fn, arg): key for key, arg in jobs}
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


@contextmanager
def ray_session(workers: int, address: str | None) -> Iterator[Any]:
    """Ray for the sweep: the cluster at `address`, else a local Ray with `workers` CPUs; one already
    initialised by the caller is used and left running. A refused connection is a one-line UserError."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    options = {"address": address} if address else {"num_cpus": workers, "include_dashboard": False}
    where = f"the Ray cluster at {address}" if address else "a local Ray"
    try:
        if address:
            with _quiet_stderr():  # Ray's C++ client logs each failed attempt itself; we say it once
                _use_token_auth()
                _probe(ray, address)
        ray.init(runtime_env={"env_vars": ENV}, log_to_driver=False, **options)
    except Exception as exc:  # OSError, Ray's RpcError ("Unauthenticated: ... InvalidAuthToken"), a version
        cause = " ".join(str(exc).split()) or type(exc).__name__  # mismatch: one line
        raise UserError(f"cannot connect to {where}: {cause}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _use_token_auth() -> None:
    """`ray start --head` turns token authentication on where a token exists (~/.ray/auth_token, written by
    `ray get-auth-token --generate`), but ray.init sends a token to an explicit address only under
    RAY_AUTH_MODE=token. Where the user chose no mode and a token is at hand (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or that file), turn it on as Ray itself does for address="auto"."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # Ray < 2.52 has no token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 itself: Ray's C++ logging writes there, past Python's sys.stderr."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _probe(ray: Any, address: str) -> None:
    """One TCP connect and one GCS call, as `ray health-check` makes: for a cluster that is absent or refuses
    the token, ray.init retries for 20 s to minutes, logging a line a second, and then names no cause."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():  # "auto": Ray finds the address itself
        return
    socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    if not address.startswith("ray://"):  # Ray Client speaks its own protocol
        ray._raylet.GcsClient(address=address)


def _datasets(ray: Any, jobs: list[tuple[K, RunConfig]]) -> dict[str, Any]:
    """Each distinct dataset read once here and put in Ray's object store (or the Outcome of failing to read
    it), by `cfg.data`: workers on other nodes have neither the driver's files nor its IMC_OSTTP_DATA."""
    from ..data import load_task

    out: dict[str, Any] = {}
    for _, cfg in jobs:
        key = cfg.data.model_dump_json()
        if key not in out:
            try:
                out[key] = ray.put(load_task(cfg.data))
            except Exception as exc:  # a missing or corrupt file fails the runs that need it, as in a worker
                out[key] = failure(exc)
    return out


def _ray(jobs: list[tuple[K, RunConfig]], workers: int, address: str | None) -> Iterator[tuple[K, Outcome]]:
    """One Ray task per run, fed its dataset from the object store."""
    with ray_session(workers, address) as ray:
        task = ray.remote(num_cpus=1, max_retries=0)(train_point)
        datasets = _datasets(ray, jobs)
        refs, unread = {}, []
        for key, cfg in jobs:
            data = datasets[cfg.data.model_dump_json()]
            if isinstance(data, Outcome):
                unread.append((key, data))
            else:
                refs[task.remote(cfg, data)] = key
        pending = list(refs)
        try:
            yield from unread
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
