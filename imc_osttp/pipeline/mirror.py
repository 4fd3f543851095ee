"""MLflow, the tracking mirror of the record: one run per job, named `<variant>, seed <n>`, with its epochs
logged live as the driver hears them; a sweep's runs nest under one parent run; a deploy job adds one run
per mode. Only the driver writes here.

Every job run is tagged with its run key (`config_hash`, `seed`, `results_version`) and `spec_name`, so a
later driver can square MLflow with the record before it trains (`reconcile`): a run left RUNNING (or
KILLED) whose job is recorded becomes FINISHED, any other run of a current key that is not the recorded one
becomes KILLED. A job has at most one FINISHED run, the one its record row names.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..tracking import RunLogger, client, experiment_id, git_commit, open_run, tracking_uri
from .jobs import Outcome
from .spec import Job, Spec

KIND = "sweep"
TAG_NAME, TAG_HASH, TAG_POINT, TAG_AXES, TAG_SPEC = "sweep_name", "sweep_hash", "point_id", "sweep_axes", "spec_name"
AXIS_TAG = "axis."  # a sweep child's tag prefix: axis label -> the point's value on it
PAGE = 1000


def search(mlf, experiment_id: str, filter_string: str) -> list[Any]:
    """Every run matching the filter, across pages."""
    out, token = [], None
    while True:
        page = mlf.search_runs([experiment_id], filter_string, max_results=PAGE, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def sweep_hash(jobs: list[Job]) -> str:
    """Identifies a sweep's set of runs, so a rerun of the same sweep finds its parent run again."""
    return hashlib.sha1("\n".join(sorted(f"{j.key}:{j.seed}" for j in jobs)).encode()).hexdigest()[:12]


def find_parent(mlf, experiment_id: str, name: str, digest: str) -> Any | None:
    runs = search(mlf, experiment_id, f"tags.kind = '{KIND}' and tags.{TAG_NAME} = '{name}' "
                                      f"and tags.{TAG_HASH} = '{digest}'")
    return min(runs, key=lambda r: r.info.start_time) if runs else None


class Mirror:
    """The MLflow side of one driver's pass over a spec's jobs."""

    def __init__(self, spec: Spec, jobs: list[Job]) -> None:
        tracking = jobs[0].cfg.tracking
        self.spec, self.uri = spec, tracking_uri(tracking.uri)
        self.mlf = client(tracking.uri)
        self.experiment = experiment_id(self.mlf, tracking.experiment)
        self.parent = self._open_parent(jobs) if spec.nested else None
        self.open: dict[int, RunLogger] = {}

    def _open_parent(self, jobs: list[Job]) -> str:
        """The sweep's parent run, created or found again, RUNNING under this driver."""
        digest = sweep_hash(jobs)
        axes = [{"label": d.label, "kind": d.kind, "key": d.key} for d in self.spec.dimensions()]
        tags = {"kind": KIND, TAG_NAME: self.spec.name, TAG_HASH: digest, "git_commit": git_commit(),
                TAG_AXES: json.dumps(axes)}
        run = find_parent(self.mlf, self.experiment, self.spec.name, digest)
        if run is None:
            run = self.mlf.create_run(self.experiment, tags=tags, run_name=f"{self.spec.name} (sweep)")
            self.mlf.log_dict(run.info.run_id, self.spec.model_dump(mode="json"), "sweep.yaml")
            return run.info.run_id
        if "error" in run.data.tags:  # of an earlier attempt; this one ends with its own status
            self.mlf.delete_tag(run.info.run_id, "error")
        for key, value in tags.items():
            self.mlf.set_tag(run.info.run_id, key, value)
        self.mlf.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id

    def reconcile(self, jobs: list[Job], recorded: dict[tuple[str, str, str], str]) -> None:
        """Square MLflow with the record (`Record.run_ids`) before training: see the module's docstring."""
        current = {(j.key, str(j.seed), j.version) for j in jobs}
        for status in ("RUNNING", "FINISHED", "KILLED"):
            for run in search(self.mlf, self.experiment, f"attributes.status = '{status}' and "
                                                         f"tags.{TAG_SPEC} = '{self.spec.name}'"):
                tags = run.data.tags
                key = (tags.get("config_hash"), tags.get("seed"), tags.get("results_version"))
                if key not in current:
                    continue
                ours = key in recorded and recorded[key] in (run.info.run_id, tags.get("trained_run_id"))
                if ours and status != "FINISHED":  # its driver stopped between recording it and marking it
                    self.mlf.set_terminated(run.info.run_id, "FINISHED")
                elif not ours and status != "KILLED":
                    self.mlf.set_tag(run.info.run_id, "error", "not in the record: its driver stopped before "
                                     "recording it, or its row was removed")
                    self.mlf.set_terminated(run.info.run_id, "KILLED")

    def start(self, index: int, job: Job) -> RunLogger:
        """The job's run, RUNNING from its first event (or its end, where no events came)."""
        if index not in self.open:
            name = f"{job.title} trained".strip() if job.kind == "deploy" else job.title
            self.open[index] = open_run(job.cfg, parent_run_id=self.parent, extra_tags=self._tags(job),
                                        variant=name or job.cfg.name)
        return self.open[index]

    def _tags(self, job: Job) -> dict[str, str]:
        tags = {TAG_SPEC: self.spec.name, "config_hash": job.key, "results_version": job.version}
        if self.parent:
            tags.update({TAG_NAME: self.spec.name, TAG_POINT: job.key,
                         **{AXIS_TAG + k: v for k, v in job.labels.items()}})
        return tags

    def epoch(self, index: int, job: Job, epoch: int, metrics: dict[str, float]) -> None:
        logger = self.start(index, job)
        if epoch > len(logger.rows):  # an epoch relayed after its job's outcome was logged
            logger.on_epoch(epoch, metrics)

    def finish(self, index: int, job: Job, outcome: Outcome) -> str:
        """Log what the job's run still lacks (epochs not relayed, artifacts, values at its best epoch) and its
        series' runs; the run stays RUNNING until `succeed`, after the record has it. Returns the run id."""
        logger = self.start(index, job)
        for epoch, metrics in enumerate(outcome.history[len(logger.rows):], len(logger.rows) + 1):
            logger.on_epoch(epoch, metrics)
        logger.finish(outcome.parameters, outcome.best)
        logger.log_params({"train_seconds": outcome.seconds, "diverged": outcome.diverged})
        for series in outcome.series:
            run = open_run(job.cfg, parent_run_id=self.parent, variant=f"{job.title} {series.name}".strip(),
                           extra_tags={**self._tags(job), **series.tags, "trained_run_id": logger.run_id})
            run.log_params(series.params)
            for step, metrics in series.points:
                run.log_metrics(metrics, step=step)
            run.end("FINISHED")
        return logger.run_id

    def succeed(self, index: int) -> None:
        self.open.pop(index).end("FINISHED")

    def fail(self, index: int, job: Job, outcome: Outcome) -> None:
        """A job that raised in its worker: FAILED, with the error line as a tag and the traceback as a file."""
        logger = self.start(index, job)
        path = logger.workdir / "error.txt"
        path.write_text(outcome.error or "")
        logger.log_artifact(path)
        self.open.pop(index).end("FAILED", (outcome.error or "").split("\n", 1)[0])

    def close(self, status: str, error: str | None = None) -> None:
        """End the parent with `status`, and every job run still open (when interrupted) KILLED, or FAILED
        with the error."""
        for index in list(self.open):
            self.open.pop(index).end("FAILED" if status == "FAILED" and error else "KILLED", error)
        if status != "FINISHED":
            # a run whose creation the interrupt cut short is in MLflow but not yet in `open`
            for run in search(self.mlf, self.experiment, f"attributes.status = 'RUNNING' and "
                                                         f"tags.{TAG_SPEC} = '{self.spec.name}'"):
                if self.parent is None or run.data.tags.get("mlflow.parentRunId") == self.parent:
                    self.mlf.set_terminated(run.info.run_id, "KILLED")
        if self.parent:
            if error:
                self.mlf.set_tag(self.parent, "error", error[:5000])
            self.mlf.set_terminated(self.parent, status)
