"""Running a sweep: train what MLflow does not hold FINISHED yet, log each run as it ends.

Nothing is lost: each finished run is logged at once under the parent, so
Ctrl-C or a kill keeps every finished point (the parent is marked KILLED),
and a rerun trains only the missing, failed or killed (point, seed) pairs.
A point that raises is recorded FAILED with its error and the sweep goes on.
"""

from __future__ import annotations

from contextlib import closing, nullcontext
from dataclasses import dataclass

from tqdm.auto import tqdm

from ..tracking import client, prepare_store, tracking_uri
from . import store
from .executors import Executor, outcomes, ray_session
from .spec import Point, SweepSpec, expand, runs, sweep_hash


@dataclass(frozen=True)
class SweepSummary:
    parent_run_id: str
    tracking_uri: str
    total: int  # (point, seed) pairs in the sweep
    skipped: int  # already FINISHED before this call
    finished: int
    failed: int


def run_sweep(spec: SweepSpec, workers: int | None = None, executor: Executor = "local",
              address: str | None = None, progress: bool = True) -> SweepSummary:
    """Train the sweep's missing runs with `workers` processes (or Ray tasks); returns the counts."""
    workers = workers or spec.workers
    points = expand(spec)
    # Ray is connected before the parent run exists: a missing extra or a refused cluster is a usage
    # error, not a failed sweep
    with ray_session(workers, address) if executor == "ray" else nullcontext():
        return _run(spec, points, workers, executor, address, progress)


def _run(spec: SweepSpec, points: list[Point], workers: int, executor: Executor, address: str | None,
         progress: bool) -> SweepSummary:
    pairs = runs(spec, points)
    tracking = points[0].cfg.tracking
    experiment_id = prepare_store(tracking.uri, tracking.experiment)  # tables and experiment, once
    mlf = client(tracking.uri)
    parent = store.open_parent(mlf, experiment_id, spec, sweep_hash(points, spec.seed_list()))
    try:
        done = store.finished(mlf, experiment_id, parent)
        todo = [(p, s) for p, s in pairs if (p.id, s) not in done]
        finished = failed = 0
        bar = tqdm(total=len(todo), desc=f"sweep {spec.name}", disable=not progress)
        jobs = [((p, s), p.config(s)) for p, s in todo]
        # closing: an error or Ctrl-C here stops the workers at once instead of when garbage-collected
        with closing(outcomes(jobs, workers, executor, address)) as results:
            for (point, seed), outcome in results:
                ok = store.log_child(point, seed, outcome, parent, spec.name)
                finished, failed = finished + ok, failed + (not ok)
                bar.update(1)
                bar.set_postfix(failed=failed, last=f"{point.cfg.name.split('/', 1)[-1]} seed {seed}")
        bar.close()
    except KeyboardInterrupt:
        store.close_parent(mlf, parent, "KILLED")
        raise
    except BaseException as exc:
        store.close_parent(mlf, parent, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    store.close_parent(mlf, parent, "FAILED" if failed else "FINISHED",
                       f"{failed} of {len(todo)} runs failed; see their error tags" if failed else None)
    return SweepSummary(parent, tracking_uri(tracking.uri), len(pairs), len(pairs) - len(todo), finished, failed)
