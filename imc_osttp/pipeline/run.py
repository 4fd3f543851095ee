"""The driver: one invocation at a time per spec, train what the record lacks, record each job as it ends.

Nothing is lost and nothing is trained twice. A second invocation of a spec that is running waits for the
first (a file lock, `<output_dir>/.<name>.lock`; it says so in one line with the other's pid) and then
trains only what is left. Each finished job is recorded at once; Ctrl-C or SIGTERM kills the workers and
marks the unfinished runs KILLED; after a kill -9, the workers die with the driver and the next driver
squares MLflow with the record before it trains (mirror.reconcile). A job that raises is recorded FAILED
in MLflow (with its error) and the others go on; a rerun trains it again.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..tracking import tracking_uri
from .executors import Executor, execute, ray_session
from .jobs import record_rows
from .mirror import Mirror
from .record import Record
from .spec import Job, Spec


@dataclass(frozen=True)
class Summary:
    total: int  # jobs in the spec
    skipped: int  # already recorded before this call
    finished: int
    failed: int
    parent_run_id: str | None
    tracking_uri: str | None
    todo: tuple[Job, ...] = ()  # what was (or, in a dry run, would be) trained

    def line(self, name: str) -> str:
        return (f"{name}: {self.total} runs: {self.skipped} already done, {self.finished} finished now, "
                f"{self.failed} failed")


@contextmanager
def one_at_a_time(spec: Spec, verb: str) -> Iterator[None]:
    """Hold the spec's lock for the whole invocation; if another process holds it, say so and wait."""
    from filelock import FileLock, Timeout

    path = Path(spec.output_dir) / f".{spec.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, on_acquired=_mark_holder)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        holder = path.read_text().strip() or "another process"
        print(f"{verb} {spec.name} is being run by process {holder}; waiting for it to finish, then training "
              "what is left", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _mark_holder(fd: int) -> None:
    """Write this process's pid into the lock file it now holds (the file is the holder's to write)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then let them take their usual way out. An MLflow write
    cut short inside SQLAlchemy leaves its sqlite transaction open, and this process's next write (marking
    the runs KILLED) fails with "database is locked"; a job recorded but not yet marked FINISHED would be
    marked KILLED. Signals are handled in the main thread only: elsewhere this holds nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if caught:
            signal.raise_signal(caught[0])


def run_spec(spec: Spec, verb: str, workers: int | None = None, executor: Executor = "local",
             address: str | None = None, progress: bool = True, dry_run: bool = False) -> Summary:
    """Train the spec's jobs that the record lacks with `workers` processes (or Ray tasks); returns the counts.
    `dry_run`: only say what would be trained (and what is stale), changing nothing."""
    jobs = spec.jobs()
    record = Record(spec)
    if dry_run:
        done, _ = record.prepare(jobs, write=False)
        todo = tuple(j for j in jobs if j.id not in done)
        return Summary(len(jobs), len(jobs) - len(todo), 0, 0, None, None, todo)
    workers = workers or spec.workers
    with one_at_a_time(spec, verb), ray_session(workers, address) if executor == "ray" else nullcontext():
        done, _ = record.prepare(jobs)
        todo = [j for j in jobs if j.id not in done]
        tracked = jobs[0].cfg.tracking.enabled
        mirror = Mirror(spec, jobs) if tracked else None
        if mirror is not None:
            mirror.reconcile(jobs, record.run_ids())
        finished, failed = _train(spec, todo, record, mirror, workers, executor, address, progress)
    return Summary(len(jobs), len(jobs) - len(todo), finished, failed, mirror.parent if mirror else None,
                   tracking_uri(jobs[0].cfg.tracking.uri) if tracked else None, tuple(todo))


def _train(spec: Spec, todo: list[Job], record: Record, mirror: Mirror | None, workers: int, executor: Executor,
           address: str | None, progress: bool) -> tuple[int, int]:
    finished = failed = 0
    ended: set[int] = set()  # a worker's last events may arrive after its outcome: they are dropped
    bar = tqdm(total=len(todo), desc=f"{spec.name}", disable=not progress)

    def on_event(index: int, event: str, payload: Any) -> None:
        if mirror is None or index in ended:
            return
        with uninterrupted():
            if event == "start":
                mirror.start(index, todo[index])
            elif event == "epoch":
                mirror.epoch(index, todo[index], *payload)

    try:
        # closing: an error or Ctrl-C here stops the workers at once instead of when garbage-collected
        with closing(execute(todo, workers, executor, address, on_event)) as results:
            for index, outcome in results:
                job = todo[index]
                ended.add(index)
                with uninterrupted():  # a job is recorded and its run FINISHED, or neither
                    if outcome.error is not None:
                        failed += 1
                        if mirror is not None:
                            mirror.fail(index, job, outcome)
                        print(f"{spec.name}: {job.title or job.kind} seed {job.seed} failed: "
                              f"{outcome.error.splitlines()[0]}", file=sys.stderr)
                    else:
                        run_id = mirror.finish(index, job, outcome) if mirror is not None else ""
                        record.add(job, record_rows(job, outcome, run_id), outcome.history)
                        if mirror is not None:
                            mirror.succeed(index)
                        finished += 1
                bar.update(1)
                bar.set_postfix(failed=failed, last=f"{job.title} seed {job.seed}".strip())
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI raises it as one)
        if mirror is not None:
            with uninterrupted():
                mirror.close("KILLED")
        raise
    except BaseException as exc:
        if mirror is not None:
            with uninterrupted():
                mirror.close("FAILED", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        bar.close()
    if mirror is not None:
        with uninterrupted():
            mirror.close("FAILED" if failed else "FINISHED",
                         f"{failed} of {len(todo)} runs failed; see their error tags" if failed else None)
    return finished, failed
