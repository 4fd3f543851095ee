"""The public Python API: everything the `imc-osttp` command does, as functions (the command calls them).

A run config is a `RunConfig`, a mapping shaped like its YAML, or a YAML file's path or a shipped one's name;
a study, sweep or deploy spec likewise a `Spec`, a mapping, a path or a name. `overrides` are dotted keys
(`{"optim.lr": 1e-3}`) or sections, applied over the config or spec as `--set` does. Bad input raises a
`ConfigError` (or `DataError`) whose message is one line naming the key or the file.

    import imc_osttp

    result = imc_osttp.train({"data": {"task": "synthetic"}, "train": {"epochs": 2}})
    study = imc_osttp.run_study("jsb_quick", overrides={"base.train.epochs": 1})
    print(study.table)

Importing `imc_osttp` imports none of torch, aihwkit, pandas or MLflow: each function imports what it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from .alignment import Alignment
    from .audio import Cochlea
    from .config import ConfigSource
    from .data import TaskData
    from .pipeline.executors import Executor
    from .pipeline.report import Report
    from .pipeline.run import Summary
    from .pipeline.spec import JobKind, Spec, SpecSource
    from .training import RunResult

Overrides = Mapping[str, Any]


def train(config: ConfigSource, overrides: Overrides | None = None, *, data: TaskData | None = None,
          progress: bool = True) -> RunResult:
    """Train one run (`imc-osttp train`): logged to MLflow when `tracking.enabled` (its run id in
    `RunResult.run_id`), on `data` if given, else on the task its config names.

    `result.best()` is the epoch the run is judged by, `result.history` every epoch's metrics,
    `result.net` the trained network."""
    from .config import as_run_config
    from .runner import run

    return run(as_run_config(config, overrides), data, progress)


def run_study(spec: SpecSource, overrides: Overrides | None = None, *, workers: int | None = None,
              executor: Executor = "local", ray_address: str | None = None, dry_run: bool = False,
              progress: bool = True) -> StudyResult:
    """Train a study's variants × seeds that its record lacks (`imc-osttp study`), then report: the table
    `results/<name>.csv` (in the spec's `output_dir`), its history and figure, and MLflow's runs.

    `workers`: parallel runs (default: the spec's); `executor`: `"local"` (a process pool) or `"ray"` (on
    `ray_address`, else a local Ray); `dry_run`: only say what would be trained (`summary.todo`). A run that
    fails is recorded FAILED in MLflow and counted in `summary.failed`; the others go on."""
    return _run("study", "train", spec, overrides, workers, executor, ray_address, dry_run, progress, True)


def run_sweep(spec: SpecSource, overrides: Overrides | None = None, *, workers: int | None = None,
              executor: Executor = "local", ray_address: str | None = None, dry_run: bool = False,
              progress: bool = True, report: bool = False) -> StudyResult:
    """Train a sweep's points × seeds that its record lacks (`imc-osttp sweep`), nested under one MLflow parent
    run; `report=True` also writes its tables and figures, as `imc_osttp.report` does. Options as `run_study`."""
    return _run("sweep", "train", spec, overrides, workers, executor, ray_address, dry_run, progress, report)


def run_deploy(spec: SpecSource, overrides: Overrides | None = None, *, workers: int | None = None,
               executor: Executor = "local", ray_address: str | None = None, dry_run: bool = False,
               progress: bool = True) -> StudyResult:
    """Train each seed, then evaluate the chip from 1 s to 1 year after its last write in every mode (frozen,
    drift-compensated, learning) (`imc-osttp deploy`), then report. Options as `run_study`."""
    return _run("deploy", "deploy", spec, overrides, workers, executor, ray_address, dry_run, progress, True)


def report(spec: SpecSource | None = None, overrides: Overrides | None = None, *, run_id: str | None = None,
           output_dir: str | Path | None = None) -> Report:
    """Write the tables and figures of a study, sweep or deploy from its record (`imc-osttp report`), or of a
    sweep from its MLflow parent run alone (`run_id`); a sweep's go to `output_dir` if given."""
    from .config import nest
    from .pipeline.report import report as write_report
    from .pipeline.report import report_parent
    from .pipeline.spec import as_spec

    if (spec is None) == (run_id is None):
        raise ConfigError("report: give one of a study, sweep or deploy file and the run id of a sweep's parent "
                          "run (--run-id)")
    if run_id is not None:
        return report_parent(run_id, output_dir or "results")
    resolved = as_spec(spec, nest(overrides))
    return write_report(resolved, resolved.jobs(), None if output_dir is None else str(output_dir))


def align(config: ConfigSource, overrides: Overrides | None = None, *, seeds: list[int] | None = None,
          after_epochs: int = 0, batch_size: int | None = None, dump_dir: str | Path | None = None) -> Alignment:
    """Every rule's update against the BPTT gradient on one batch (`imc-osttp align`): cosine and norm ratio
    per parameter, for each of `seeds` (default: the config's) and their mean ± std (`Alignment.table`).

    At initialisation, or after `after_epochs` epochs of the config's own rule; `dump_dir` receives the
    parameters, feedback matrices, batch, layers and every rule's update (of the last seed)."""
    from .alignment import align_seeds
    from .config import as_run_config
    from .data import load_task

    cfg = as_run_config(config, overrides)
    if after_epochs < 0:
        raise ConfigError(f"after_epochs: {after_epochs}: give 0 (at initialisation) or more")
    return align_seeds(cfg, load_task(cfg.data), seeds or [cfg.seed], None if dump_dir is None else Path(dump_dir),
                       after_epochs, batch_size)


def encode_audio(wav_dir: str | Path, out_dir: str | Path, *, cochlea: Cochlea | None = None,
                 progress: bool = True) -> dict[str, Path]:
    """Encode the FSDD recordings of `wav_dir` (`{digit}_{speaker}_{take}.wav`) as spike trains in SHD's
    HDF5 layout (`imc-osttp encode-audio`): `out_dir/fsdd_train.h5` and `fsdd_test.h5` (takes 0-4 are the
    test set), returned by split. Train on them with `data.task: fsdd` and `data.path: out_dir`."""
    from .audio import Cochlea, encode_directory

    return encode_directory(wav_dir, out_dir, cochlea or Cochlea(), progress)


@dataclass(frozen=True)
class StudyResult:
    """What `run_study`, `run_sweep` or `run_deploy` did, and the record it left.

    Attributes:
        spec: the validated spec that ran.
        summary: runs in the spec, already done before, finished now and failed; in a dry run, the runs
            left to train (`summary.todo`).
        runs: the record of the spec's current runs, one row per run (a deploy's: per mode and time), as
            in `<output_dir>/<name>.csv`.
        report: the table and figures; None in a dry run, for a sweep unless asked, or with no runs yet.
    """

    spec: Spec
    summary: Summary
    runs: pd.DataFrame
    report: Report | None

    @property
    def table(self) -> pd.DataFrame | None:
        """The report's table: mean ± std over seeds per variant, sweep point, or deploy mode and time."""
        return None if self.report is None else self.report.table


def _run(verb: str, job: JobKind, spec: SpecSource, overrides: Overrides | None, workers: int | None,
         executor: Executor, ray_address: str | None, dry_run: bool, progress: bool,
         with_report: bool) -> StudyResult:
    from .config import nest
    from .pipeline.executors import EXECUTORS
    from .pipeline.record import Record
    from .pipeline.report import report as write_report
    from .pipeline.run import run_spec
    from .pipeline.spec import as_spec

    if executor not in EXECUTORS:
        raise ConfigError(f"executor: '{executor}' is not one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers: {workers}: give at least 1")
    resolved = as_spec(spec, nest(overrides), job)
    summary = run_spec(resolved, verb, workers, executor, ray_address, progress=progress, dry_run=dry_run)
    jobs = resolved.jobs()
    runs, _ = Record(resolved).current(jobs)
    done = not dry_run and with_report and not runs.empty
    return StudyResult(resolved, summary, runs, write_report(resolved, jobs) if done else None)
