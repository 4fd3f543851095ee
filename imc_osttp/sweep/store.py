"""The MLflow record of a sweep: one parent run, one nested child run per point and seed.

The parent is found again by its tags (sweep name + hash of its runs), so a
rerun continues it. A child is FINISHED, FAILED (with the worker's error
tag and traceback), or KILLED; one left RUNNING by a dead driver is marked
KILLED before the sweep decides what to train.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from ..errors import UserError
from ..tracking import git_commit, start_run
from .executors import Outcome
from .spec import Point, SweepSpec

KIND = "sweep"
TAG_NAME, TAG_HASH, TAG_POINT, TAG_AXES = "sweep_name", "sweep_hash", "point_id", "sweep_axes"
TAG_HOST, TAG_PID = "driver_host", "driver_pid"
AXIS_TAG = "axis."  # child tag prefix: axis label -> the point's value on it
PAGE = 1000


class WorkerError(Exception):
    """A run that raised in its worker; the message is the worker's error line."""


def search(mlf, experiment_id: str, filter_string: str) -> list[Any]:
    """Every run matching the filter, across pages."""
    out, token = [], None
    while True:
        page = mlf.search_runs([experiment_id], filter_string, max_results=PAGE, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def find_parent(mlf, experiment_id: str, name: str, sweep_hash: str) -> Any | None:
    runs = search(mlf, experiment_id, f"tags.kind = '{KIND}' and tags.{TAG_NAME} = '{name}' "
                                      f"and tags.{TAG_HASH} = '{sweep_hash}'")
    return min(runs, key=lambda r: r.info.start_time) if runs else None


def open_parent(mlf, experiment_id: str, spec: SweepSpec, sweep_hash: str) -> str:
    """The sweep's parent run, created or found again, RUNNING under this driver."""
    tags = {"kind": KIND, TAG_NAME: spec.name, TAG_HASH: sweep_hash, TAG_HOST: socket.gethostname(),
            TAG_PID: str(os.getpid()), "git_commit": git_commit(), TAG_AXES: json.dumps(axes(spec))}
    run = find_parent(mlf, experiment_id, spec.name, sweep_hash)
    if run is None:
        run = mlf.create_run(experiment_id, tags=tags, run_name=f"{spec.name} (sweep)")
        mlf.log_dict(run.info.run_id, spec.model_dump(mode="json"), "sweep.yaml")
        return run.info.run_id
    _check_no_live_driver(run)
    if "error" in run.data.tags:  # of an earlier attempt; this one ends with its own status
        mlf.delete_tag(run.info.run_id, "error")
    for key, value in tags.items():
        mlf.set_tag(run.info.run_id, key, value)
    mlf.update_run(run.info.run_id, status="RUNNING")
    return run.info.run_id


def axes(spec: SweepSpec) -> list[dict[str, Any]]:
    """What the report needs to know of each axis: its label, kind and key."""
    return [{"label": d.label, "kind": d.kind, "key": d.key} for d in spec.dimensions()]


def _check_no_live_driver(run: Any) -> None:
    tags = run.data.tags
    if run.info.status != "RUNNING" or tags.get(TAG_HOST) != socket.gethostname():
        return
    pid = int(tags.get(TAG_PID, "0"))
    if pid and pid != os.getpid() and _alive(pid):
        raise UserError(f"sweep {tags.get(TAG_NAME)} is being run by process {pid} on this machine; "
                        f"wait for it or stop it first")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def children(mlf, experiment_id: str, parent_id: str) -> list[Any]:
    return search(mlf, experiment_id, f"tags.`mlflow.parentRunId` = '{parent_id}'")


def finished(mlf, experiment_id: str, parent_id: str) -> set[tuple[str, int]]:
    """(point id, seed) of the FINISHED children; children left RUNNING by a dead driver become KILLED."""
    done = set()
    for run in children(mlf, experiment_id, parent_id):
        if run.info.status == "RUNNING":
            mlf.set_tag(run.info.run_id, "error", "stale: its sweep driver stopped while logging it")
            mlf.set_terminated(run.info.run_id, "KILLED")
        elif run.info.status == "FINISHED":
            done.add((run.data.tags[TAG_POINT], int(run.data.tags["seed"])))
    return done


def log_child(point: Point, seed: int, outcome: Outcome, parent_id: str, sweep_name: str) -> bool:
    """Record one run under the parent; False if it failed in its worker (recorded FAILED)."""
    tags = {TAG_NAME: sweep_name, TAG_POINT: point.id, **{AXIS_TAG + k: v for k, v in point.labels.items()}}
    variant = " ".join(f"{k}={v}" for k, v in point.labels.items())
    try:
        with start_run(point.config(seed), parent_run_id=parent_id, extra_tags=tags, variant=variant) as logger:
            if outcome.error is not None:
                path = logger.workdir / "error.txt"
                path.write_text(outcome.error)
                logger.log_artifact(path)
                raise WorkerError(outcome.error.split("\n", 1)[0])
            for epoch, metrics in enumerate(outcome.history, 1):
                logger.on_epoch(epoch, metrics)
            logger.finish(outcome.parameters, outcome.best)
            logger.log_params({"train_seconds": outcome.seconds, "diverged": outcome.diverged})
    except WorkerError:
        return False
    return True


def close_parent(mlf, parent_id: str, status: str, error: str | None = None) -> None:
    if error:
        mlf.set_tag(parent_id, "error", error[:5000])
    mlf.set_terminated(parent_id, status)
