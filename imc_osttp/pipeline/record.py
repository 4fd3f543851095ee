"""The store of record: a spec's results tables, written only by its driver, committed with the code.

`<output_dir>/<name>.csv` holds one row per finished training run (a deploy job: one per mode and time),
`<name>_history.csv` one per epoch. Every row carries its run key: `config_hash`, `seed` and
`results_version`. A job is done when its key is in the table; each finished job is appended at once
(history first, its rows last: the rows mark it done), through a temporary file, so an interruption loses
nothing and never leaves half a table. Rows of a current point whose key changed (the spec was edited, or
the code's results version moved on) go to `<name>_stale.csv` / `<name>_stale_history.csv`: kept, never
reused or reported, and the job is trained again.

Tables written before run keys had a results version are migrated once, when a driver first opens them:
their rows are re-keyed where the key's definition changed (a deploy file's hash, a sweep's point id) and
take the version of the job they match (docs/pipeline.md, "Migration").
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import _Strict, config_hash
from ..deploy import DEFAULT_MODES, DEFAULT_TIMES, AdaptationConfig
from .spec import Job, Spec

KEY = ["config_hash", "seed", "results_version"]
ROW_KEY = ["mode", "time_s"]  # what tells a deploy job's rows apart
TEXT = ["config_hash", "results_version", "mode", "run_id", "trained_run_id"]  # never parsed as numbers


class Record:
    """A spec's tables in its output_dir."""

    def __init__(self, spec: Spec) -> None:
        out = Path(spec.output_dir)
        self.spec, self.labels = spec, spec.labels()
        self.runs, self.history = out / f"{spec.name}.csv", out / f"{spec.name}_history.csv"
        self.stale_runs, self.stale_history = out / f"{spec.name}_stale.csv", out / f"{spec.name}_stale_history.csv"
        self.export = out / f"{spec.name}_runs.csv"  # a sweep's report: its record before this version

    def read(self, path: Path) -> pd.DataFrame:
        if not path.exists() or path.stat().st_size == 0:
            return pd.DataFrame()
        return pd.read_csv(path, dtype={c: str for c in [*self.labels, *TEXT]})

    def prepare(self, jobs: list[Job], write: bool = True) -> tuple[set[tuple[str, int]], list[str]]:
        """The ids of the jobs already done, and what changed on the way (each said on stderr): a legacy table
        migrated, stale rows set aside, the history of a job interrupted before its rows were written dropped.
        `write=False` changes no file (a dry run)."""
        runs, history = self.read(self.runs), self.read(self.history)
        notes = []
        if runs.empty and self.spec.nested and self.export.exists():
            runs = self.read(self.export).rename(columns={"point_id": "config_hash"})
        migrated = not runs.empty and "results_version" not in runs
        if migrated:
            runs, history = migrate(runs, history, jobs, self.spec)
            notes.append(f"{self.runs} re-keyed to run keys with a results version (once)" if write else
                         f"{self.runs} predates results versions: a run would re-key it (once)")
        stale = self._stale(runs, jobs)
        if stale.any():
            notes += self._describe(runs[stale], jobs, "they move to {} and are trained again" if write else
                                    "a run would move them to {} and train them again")
        gone, done = set(keys(runs[stale])), set(keys(runs[~stale]))
        ids = {(j.key, j.seed, j.version): j.id for j in jobs}
        moved = mask(history, lambda k: k in gone)
        orphan = mask(history, lambda k: k in ids and k not in done and k not in gone)
        if write and (migrated or stale.any() or orphan.any()):
            append(self.stale_history, history[moved])
            append(self.stale_runs, runs[stale])
            if not history.empty:
                write_csv(self.history, history[~moved & ~orphan])
            if not runs.empty:
                write_csv(self.runs, runs[~stale])  # the runs table last: it is the record of what is done
        for note in notes:
            print(f"{self.spec.name}: {note}", file=sys.stderr)
        return {ids[k] for k in done if k in ids}, notes

    def _stale(self, runs: pd.DataFrame, jobs: list[Job]) -> pd.Series:
        """Rows of a current (labels, seed) whose key differs, and rows of a current key with an older version."""
        if runs.empty:
            return pd.Series(dtype=bool)
        by_point = {(*(j.labels.get(c) for c in self.labels), j.seed): (j.key, j.version) for j in jobs}
        by_id = {j.id: j.version for j in jobs}
        labels = [runs[c] if c in runs else [None] * len(runs) for c in self.labels]
        out = []
        for *point, seed, key, version in zip(*labels, runs["seed"], runs["config_hash"], runs["results_version"],
                                              strict=True):
            current = by_point.get((*point, seed))
            out.append((current is not None and current != (key, version))
                       or by_id.get((key, seed), version) != version)
        return pd.Series(out, index=runs.index, dtype=bool)

    def _describe(self, stale: pd.DataFrame, jobs: list[Job], move: str) -> list[str]:
        now = {j.id: j.version for j in jobs}
        notes = []
        labels = [c for c in self.labels if c in stale]
        for point, rows in stale.groupby(labels, dropna=False) if labels else [((), stale)]:
            point = point if isinstance(point, tuple) else (point,)
            what = " ".join(f"{c} '{v}'" for c, v in zip(labels, point, strict=True)) or "the deploy"
            seeds = sorted(int(s) for s in rows["seed"].unique())
            older = [(v, now[(k, s)]) for k, s, v in zip(rows["config_hash"], rows["seed"], rows["results_version"],
                                                        strict=True) if (k, s) in now]
            why = (f"was trained by an older version of the code (results version {older[0][0]}, now {older[0][1]})"
                   if older else "changed since its rows were written")
            notes.append(f"{what} {why} (seeds {seeds}); {move.format(self.stale_runs)}")
        return notes

    def run_ids(self) -> dict[tuple[str, str, str], str]:
        """(config_hash, seed, results_version) -> the MLflow run id recorded for it."""
        runs = self.read(self.runs)
        if runs.empty or "results_version" not in runs:
            return {}
        column = runs["trained_run_id"] if "trained_run_id" in runs else runs["run_id"]
        return {(k, str(s), v): r for k, s, v, r in zip(runs["config_hash"], runs["seed"], runs["results_version"],
                                                        column.fillna(""), strict=True)}

    def add(self, job: Job, rows: list[dict[str, Any]], history: list[dict[str, float]]) -> None:
        """A finished job: its history first, its rows last (they mark it done)."""
        key = {"config_hash": job.key, "results_version": job.version}
        append(self.history, [{**job.labels, "seed": job.seed, "epoch": i, **h, **key}
                              for i, h in enumerate(history, 1)])
        append(self.runs, rows)

    def current(self, jobs: list[Job]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(rows, history) of the spec's current jobs, labelled as the spec labels them now, in its order."""
        order = {(j.key, j.seed, j.version): (i, j.labels) for i, j in enumerate(jobs)}
        out = []
        for frame in (self.read(self.runs), self.read(self.history)):
            if frame.empty or "results_version" not in frame:
                out.append(pd.DataFrame(columns=[*self.labels, *KEY]))
                continue
            hits = [order.get(k) for k in zip(*(frame[c] for c in KEY), strict=True)]
            frame = frame[[h is not None for h in hits]].copy()
            hits = [h for h in hits if h is not None]
            for label in self.labels:
                frame[label] = [labels.get(label) for _, labels in hits]
            frame["_order"] = [i for i, _ in hits]
            out.append(frame.sort_values("_order", kind="stable").drop(columns="_order"))
        return out[0], out[1]


def keys(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    """The run key of every row."""
    return [] if frame.empty else list(zip(*(frame[c] for c in KEY), strict=True))


def mask(frame: pd.DataFrame, keep) -> pd.Series:
    return pd.Series([bool(keep(k)) for k in keys(frame)], index=frame.index, dtype=bool)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write through a temporary file, so an interruption never leaves half a table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


def append(path: Path, rows: list[dict[str, Any]] | pd.DataFrame) -> None:
    frame = pd.DataFrame(rows)
    if frame.empty:
        return
    if path.exists():
        frame = pd.concat([pd.read_csv(path, dtype={c: str for c in TEXT}), frame], ignore_index=True)
    write_csv(path, frame)


# ------------------------------------------------------------------ migration of tables without a results version


class _LegacyDeploy(_Strict):
    """A deploy file as its rows were keyed before run keys: the hash of these fields."""

    base: dict[str, Any] = {}
    times: list[float] = DEFAULT_TIMES
    modes: list[str] = DEFAULT_MODES
    adaptation: AdaptationConfig | None = None


def legacy_keys(job: Job, spec: Spec) -> list[str]:
    """What a row of this job was keyed by before: a sweep's point id (which also hashed data.path and
    train.threads), a deploy file's hash. A study's hash is the run key itself."""
    keys = [config_hash(job.cfg, {"tracking": True, "name": True, "seed": True, "train": {"engine"}})]
    if job.deploy is not None:
        # a deploy file before run keys had no mitigation section: its hash never covered one
        keys.append(config_hash(_LegacyDeploy(base=spec.base, **job.deploy.model_dump(exclude={"mitigation"})), {}))
    return keys


def migrate(runs: pd.DataFrame, history: pd.DataFrame, jobs: list[Job],
            spec: Spec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Re-key a legacy table's rows and give each row that matches a current job that job's results version
    (a row of no current job gets none: it is never reused). Its history takes the key of the row with its
    labels and seed; duplicate rows of one key (two invocations that both trained it) are dropped."""
    rekey = {(old, j.seed): j.key for j in jobs for old in legacy_keys(j, spec)}
    versions = {j.id: j.version for j in jobs}
    runs = runs.copy()
    runs["config_hash"] = [rekey.get((h, s), h) for h, s in zip(runs["config_hash"], runs["seed"], strict=True)]
    runs["results_version"] = [versions.get((h, s)) for h, s in zip(runs["config_hash"], runs["seed"], strict=True)]
    runs = runs.drop_duplicates([*KEY, *(c for c in ROW_KEY if c in runs)])
    if not history.empty and "config_hash" not in history:
        point = [c for c in spec.labels() if c in history and c in runs]
        runs_keys = runs[[*point, "seed", "config_hash", "results_version"]].drop_duplicates([*point, "seed"])
        history = history.merge(runs_keys, on=[*point, "seed"], how="left").drop_duplicates([*KEY, "epoch"])
    return runs, history
