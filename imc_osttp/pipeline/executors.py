"""Where jobs run: in this process, a spawn process pool whose workers die with the driver, or Ray tasks.

Workers only compute and return what they measured (`Outcome`); they never touch a table or MLflow, and
they relay `start` and each epoch to the driver (a queue), which logs them as they happen. The driver is
the single writer of the record and of MLflow (SQLite allows one at a time; Ray nodes need no access).
aihwkit's C++ holds the GIL, hence processes, each with one OpenMP thread. Workers ignore SIGINT and
SIGTERM: the driver decides, and kills them when it is interrupted; if it dies, the kernel kills them.
On a Ray cluster the driver also reads the data (into Ray's object store), so nodes need no data files;
they need imc-osttp installed (scripts/setup.sh: aihwkit is compiled there, which no runtime_env can do).
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import logging
import multiprocessing as mp
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from ..errors import UserError

if TYPE_CHECKING:  # workers import torch only once their initializer has set its threads
    from .jobs import Outcome
    from .spec import Job

Executor = Literal["local", "ray"]
EXECUTORS: tuple[str, ...] = ("local", "ray")
ENV = {"OMP_NUM_THREADS": "1"}
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL = 0.5  # seconds between looks at the relay queue while jobs run
OnEvent = Callable[[int, str, Any], None]  # (job index, "start" | "epoch", payload), called in the driver
_relay: Any = None  # a pool worker's queue to the driver


def execute(jobs: list[Job], workers: int, executor: Executor, address: str | None,
            on_event: OnEvent) -> Iterator[tuple[int, Outcome]]:
    """(index, outcome) of every job, in the order they finish; `on_event` hears each start and epoch."""
    if not jobs:
        return
    if executor == "ray":
        yield from _ray(jobs, workers, address, on_event)
    elif workers == 1:
        from . import jobs as kinds

        for i, job in enumerate(jobs):  # no spawn cost, and a debugger works
            yield i, kinds.run_job(job, relay=lambda event, payload, i=i: on_event(i, event, payload))
    else:
        yield from _pool(jobs, workers, on_event)


def _init_worker(driver: int, relay: Any) -> None:
    """Pool initializer: die with the driver, leave signals to it, then one thread (before torch or
    aihwkit start their pools)."""
    global _relay
    _exit_with(driver)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _relay = relay
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


def _pool_job(index: int, job: Job) -> Outcome:
    from . import jobs as kinds

    return kinds.run_job(job, relay=lambda event, payload: _relay.put((index, event, payload)))


def _drain(relay: Any, on_event: OnEvent) -> None:
    while True:
        try:
            on_event(*relay.get_nowait())
        except queue.Empty:
            return


def _pool(jobs: list[Job], workers: int, on_event: OnEvent) -> Iterator[tuple[int, Outcome]]:
    """Every job in spawned worker processes that die with this one; on an error, Ctrl-C or SIGTERM the
    queued jobs are cancelled and the workers killed."""
    ctx = mp.get_context("spawn")
    relay = ctx.Queue()
    pool = cf.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx,
                                  initializer=_init_worker, initargs=(os.getpid(), relay))
    try:
        futures = {pool.submit(_pool_job, i, job): i for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            done, pending = cf.wait(pending, timeout=POLL, return_when=cf.FIRST_COMPLETED)
            _drain(relay, on_event)
            for fut in done:
                try:
                    outcome = fut.result()
                except cf.process.BrokenProcessPool:
                    raise UserError("a worker process died (killed, or crashed inside aihwkit); finished runs "
                                    "are kept: run again to train the rest") from None
                yield futures[fut], outcome
    except BaseException:  # Ctrl-C, SIGTERM, an error, or the consumer closed us: no one will record what runs now
        _kill(pool)
        raise
    pool.shutdown(wait=True)


def _kill(pool: cf.ProcessPoolExecutor) -> None:
    """Cancel the queued jobs and kill those in flight (they ignore SIGTERM; Python < 3.14 has no public call)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.kill()
    for process in processes:
        process.join()  # reaped here, not left to the exit of this process


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
    notices = logging.getLogger(maybe_enable_token_auth_if_token_available.__module__)
    level = notices.level
    notices.setLevel(logging.ERROR)  # its "token authentication is enabled" notice: the user made the token
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        notices.setLevel(level)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 itself: Ray's C++ logging writes there, past Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()  # Python's buffered warnings (Ray's token notice) go to /dev/null too
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


def _datasets(ray: Any, jobs: list[Job]) -> dict[str, Any]:
    """Each distinct dataset read once here and put in Ray's object store (or the Outcome of failing to read
    it), by `cfg.data`: workers on other nodes have neither the driver's files nor its IMC_OSTTP_DATA."""
    from ..data import load_task
    from .jobs import failure

    out: dict[str, Any] = {}
    for job in jobs:
        key = job.cfg.data.model_dump_json()
        if key not in out:
            try:
                out[key] = ray.put(load_task(job.cfg.data))
            except Exception as exc:  # a missing or corrupt file fails the jobs that need it, as in a worker
                out[key] = failure(exc)
    return out


def run_job(index: int, job: Job, data: Any, relay: Any) -> Outcome:
    """A Ray task (`ray::run_job`): one job on its dataset from the object store, relaying to the driver's
    queue actor."""
    from . import jobs as kinds

    return kinds.run_job(job, data, lambda event, payload: relay.put_nowait((index, event, payload)))


def _ray(jobs: list[Job], workers: int, address: str | None, on_event: OnEvent) -> Iterator[tuple[int, Outcome]]:
    """One Ray task per job, fed its dataset from the object store; epochs come back through a queue actor."""
    from ray.util.queue import Empty, Queue

    from .jobs import Outcome

    with ray_session(workers, address) as ray:
        task = ray.remote(num_cpus=1, max_retries=0)(run_job)
        relay = Queue(actor_options={"num_cpus": 0})
        datasets = _datasets(ray, jobs)
        refs, unread = {}, []
        for i, job in enumerate(jobs):
            data = datasets[job.cfg.data.model_dump_json()]
            if isinstance(data, Outcome):
                unread.append((i, data))
            else:
                refs[task.remote(i, job, data, relay)] = i
        pending = list(refs)
        try:
            yield from unread
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL)
                try:
                    for event in relay.get_nowait_batch(relay.qsize()):
                        on_event(*event)
                except Empty:
                    pass
                for ref in done:
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # the task's worker died: only this job fails
                        outcome = Outcome(error=f"{type(exc).__name__}: {exc}")
                    yield refs[ref], outcome
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            relay.shutdown()
