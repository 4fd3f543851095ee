"""The one pipeline for study, sweep and deploy: real kills of the driver (SIGTERM, kill -9) leave no process
and no duplicate; two invocations at once train each run once; a stale results version is retrained; the
committed results are found again; seeds never collide."""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from imc_osttp.pipeline.record import Record
from imc_osttp.pipeline.run import run_spec, uninterrupted
from imc_osttp.pipeline.spec import load_spec, parse_spec
from imc_osttp.seeds import generator, tile_seeds

REPO = Path(__file__).resolve().parents[1]
TEXT = {"config_hash": str, "results_version": str, "run_id": str, "trained_run_id": str}


def spec_file(tmp_path: Path, verb: str, name: str = "tiny", seeds: tuple[int, ...] = (0, 1), epochs: int = 6,
              workers: int = 2, length: int = 256) -> Path:
    """A quick spec of each kind: three digital points × seeds (study, sweep), or seeds of a small PCM chip
    deployed frozen and compensated (deploy). With the default length an epoch takes ~0.2 s (a digital point)
    or ~0.4 s (the chip) on one core: few epochs, so the driver logs little, and runs long enough to be
    caught in flight."""
    data = {"task": "synthetic", "synthetic_sequences": 64, "synthetic_length": length}
    base = {"data": data, "model": {"hidden": 64}, "train": {"epochs": epochs, "batch_size": 4}}
    spec: dict = {"name": name, "seeds": list(seeds), "workers": workers, "output_dir": str(tmp_path / "results")}
    lrs = [0.001, 0.002, 0.003]
    if verb == "study":
        spec.update(base=base, variants={f"lr{i}": {"optim.lr": lr} for i, lr in enumerate(lrs)})
    elif verb == "sweep":
        spec.update(base=base, axes=[{"kind": "grid", "key": "optim.lr", "values": lrs}])
    else:
        base = {**base, "model": {"hidden": 16}, "train": {"epochs": epochs // 2, "batch_size": 4},
                "backend": {"kind": "analog", "device_config": "pcm_4device", "knobs": {"drift_nu": 0.05}}}
        spec.update(base=base, times=[1.0, 3600.0], modes=["frozen", "frozen_gdc"])
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start(verb: str, path: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen([sys.executable, "-m", "imc_osttp.cli", verb, str(path)], cwd=path.parent,
                                env=env, stdout=out, stderr=out)


def driver_env(tmp_path: Path, marker: str) -> dict[str, str]:
    """The driver's environment: a store of its own, this checkout first, and a marker its descendants inherit."""
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "IMC_OSTTP_TEST": marker,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def marked(marker: str) -> set[int]:
    """Live processes whose environment holds `marker`: a driver's descendants inherit it (zombies show none)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                pids.add(int(entry.name))
        except OSError:  # gone, or not ours
            pass
    return pids


def wait_for(condition, timeout: float, step: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(step)
    return True


def table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=TEXT) if path.exists() else pd.DataFrame(columns=["config_hash", "seed"])


def job_runs(uri: str, name: str) -> list:
    """The MLflow runs of the spec's jobs (not a sweep's parent or a study's summary)."""
    mlf = mlflow.MlflowClient(uri)
    experiment = mlf.get_experiment_by_name(name)
    runs = mlf.search_runs([experiment.experiment_id]) if experiment else []
    return [r for r in runs if "config_hash" in r.data.tags]


def running(uri: str, name: str) -> list:
    return [r for r in job_runs(uri, name) if r.info.status == "RUNNING"]


def early(uri: str, results: Path, verb: str, epochs: int = 2) -> list:
    """RUNNING runs of jobs the record lacks that have logged `epochs` at most: certainly in flight (a job
    just recorded is RUNNING until its driver marks it, and a job near its end may end before a signal)."""
    rows, mlf = table(results), mlflow.MlflowClient(uri)
    recorded = set(rows["trained_run_id" if verb == "deploy" else "run_id"]) if len(rows) else set()
    return [r for r in running(uri, "tiny") if r.info.run_id not in recorded
            and len(mlf.get_metric_history(r.info.run_id, "train_loss")) <= epochs]


def check_record_and_mirror(tmp_path: Path, name: str, verb: str, jobs: int) -> None:
    """Every job recorded once; in MLflow each job has one FINISHED run, the one its rows name."""
    rows = table(tmp_path / "results" / f"{name}.csv")
    per_job = rows.groupby(["config_hash", "seed"]).size()
    assert len(per_job) == jobs and (per_job == (4 if verb == "deploy" else 1)).all(), per_job
    recorded = set(rows["trained_run_id" if verb == "deploy" else "run_id"])
    runs = job_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", name)
    trained = [r for r in runs if "deploy_mode" not in r.data.tags]
    finished = collections.Counter((r.data.tags["config_hash"], r.data.tags["seed"]) for r in trained
                                   if r.info.status == "FINISHED")
    assert len(finished) == jobs and set(finished.values()) == {1}, finished
    assert {r.info.run_id for r in trained if r.info.status == "FINISHED"} == recorded
    assert not [r for r in runs if r.info.status == "RUNNING"]
    if verb == "deploy":  # one FINISHED run per mode and job, each of a recorded training run
        modes = [r for r in runs if "deploy_mode" in r.data.tags and r.info.status == "FINISHED"]
        assert len(modes) == 2 * jobs and {r.data.tags["trained_run_id"] for r in modes} == recorded


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc (Linux)")
@pytest.mark.parametrize("verb", ["study", "sweep", "deploy"])
def test_killed_drivers_leave_nothing_running_and_a_rerun_duplicates_nothing(tmp_path, verb):
    """SIGTERM mid-run: exit 143, workers gone, unfinished runs KILLED; kill -9 mid-run: workers gone within
    10 s; the rerun trains the rest, every job recorded once and FINISHED once in MLflow."""
    path = spec_file(tmp_path, verb, seeds=(0, 1, 2, 3) if verb == "deploy" else (0, 1), epochs=10)
    jobs = 4 if verb == "deploy" else 6
    marker = uuid.uuid4().hex
    env, log = driver_env(tmp_path, marker), tmp_path / "driver.log"
    uri, results = env["MLFLOW_TRACKING_URI"], tmp_path / "results" / "tiny.csv"
    try:
        driver = start(verb, path, env, log)
        assert wait_for(lambda: (len(table(results)) and early(uri, results, verb)) or driver.poll() is not None, 240)
        assert driver.poll() is None, log.read_text()[-3000:]
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(60) == 128 + signal.SIGTERM, log.read_text()[-3000:]
        assert wait_for(lambda: not marked(marker), 10), f"alive 10 s after SIGTERM: {marked(marker)}"
        assert not running(uri, "tiny")
        assert "KILLED" in {r.info.status for r in job_runs(uri, "tiny")}
        assert "terminated (SIGTERM); finished runs are kept" in log.read_text()

        done = len(table(results).groupby(["config_hash", "seed"]))
        driver = start(verb, path, env, log)
        assert wait_for(lambda: running(uri, "tiny") or driver.poll() is not None, 240)
        assert driver.poll() is None, log.read_text()[-3000:]
        driver.kill()
        driver.wait()
        assert wait_for(lambda: not marked(marker), 10), f"alive 10 s after kill -9: {marked(marker)}"

        driver = start(verb, path, env, log)
        assert driver.wait(300) == 0, log.read_text()[-3000:]
        assert len(table(results).groupby(["config_hash", "seed"])) == jobs > done
        check_record_and_mirror(tmp_path, "tiny", verb, jobs)
    finally:
        for pid in marked(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_signal_waits_for_the_write_it_arrives_in():
    """SIGTERM inside a record-and-mirror write: the write completes, then the signal takes its own way out
    (here a handler that raises, as the CLI's does), and the handler is back in place."""
    written = []

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        with pytest.raises(KeyboardInterrupt), uninterrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # an unshielded handler raises here, between two bytecodes
            written.append("row")
        assert written == ["row"] and signal.getsignal(signal.SIGTERM) is terminate
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_recorded_run_left_killed_is_finished_by_the_next_driver(tmp_path, mlflow_uri):
    """A driver stopped between recording a job and marking its run FINISHED: the next one marks it."""
    spec = load_spec(spec_file(tmp_path, "study", seeds=(0,), epochs=1, workers=1, length=32), job="train")
    assert run_spec(spec, "study", progress=False).finished == 3
    mlflow.MlflowClient(mlflow_uri).set_terminated(job_runs(mlflow_uri, "tiny")[0].info.run_id, "KILLED")
    assert run_spec(spec, "study", progress=False).finished == 0
    check_record_and_mirror(tmp_path, "tiny", "study", 3)


def test_two_invocations_at_once_train_each_run_once(tmp_path):
    """On a fresh store: the same study twice and another study, all at once. The second of the pair waits
    for the first (one line naming its pid), then finds nothing left; the other study shares the new store.
    Then on the existing store, with a seed added: the new runs are trained once."""
    env = driver_env(tmp_path, uuid.uuid4().hex)
    study = spec_file(tmp_path, "study", seeds=(0,), epochs=2, workers=1, length=32)
    other = spec_file(tmp_path, "sweep", name="other", seeds=(0,), epochs=2, workers=1, length=32)
    for seeds, jobs in (((0,), 3), ((0, 1), 6)):
        spec = yaml.safe_load(study.read_text())
        study.write_text(yaml.safe_dump({**spec, "seeds": list(seeds)}))
        logs = [tmp_path / f"{len(seeds)}-{i}.log" for i in range(3)]
        drivers = [start(verb, path, env, out) for verb, path, out in
                   (("study", study, logs[0]), ("study", study, logs[1]), ("sweep", other, logs[2]))]
        assert [d.wait(300) for d in drivers] == [0, 0, 0], [out.read_text()[-2000:] for out in logs]
        waited = [i for i in (0, 1) if "is being run by process" in logs[i].read_text()]
        assert len(waited) == 1, [out.read_text()[-2000:] for out in logs]
        assert f"is being run by process {drivers[1 - waited[0]].pid};" in logs[waited[0]].read_text()
        check_record_and_mirror(tmp_path, "tiny", "study", jobs)
        check_record_and_mirror(tmp_path, "other", "sweep", 3)


def test_a_row_of_an_older_results_version_is_retrained(tmp_path, mlflow_uri, capsys):
    spec = load_spec(spec_file(tmp_path, "study", seeds=(0,), epochs=2, workers=1, length=32), job="train")
    assert run_spec(spec, "study", progress=False).finished == 3
    path = tmp_path / "results" / "tiny.csv"
    for written in (path, tmp_path / "results" / "tiny_history.csv"):  # as if written before a change of the code
        rows = table(written)
        rows.loc[rows["variant"] == "lr1", "results_version"] = "train0.digital1"
        rows.to_csv(written, index=False)
    summary = run_spec(spec, "study", progress=False)
    assert (summary.skipped, summary.finished) == (2, 1) and [j.labels["variant"] for j in summary.todo] == ["lr1"]
    assert "variant 'lr1' was trained by an older version of the code (results version train0.digital1, now " \
           "train1.digital1)" in capsys.readouterr().err
    stale, now = table(tmp_path / "results" / "tiny_stale.csv"), table(path)
    assert list(stale["results_version"]) == ["train0.digital1"] and len(now) == 3
    assert set(now["results_version"]) == {"train1.digital1"}
    history = table(tmp_path / "results" / "tiny_history.csv")
    assert history.groupby(["config_hash", "seed"]).size().eq(2).all() and len(history) == 6
    assert len(table(tmp_path / "results" / "tiny_stale_history.csv")) == 2


COMMITTED = [(f, job) for job, names in (
    ("train", ["jsb_rules", "jsb_deep", "jsb_analog", "jsb_deep_analog", "jsb_drift", "fsdd_rules", "fsdd_deep",
               "fsdd_analog", "fsdd_alif", "jsb_hil", "pcm_ablation", "pcm_step_noise_grid"]),
    ("deploy", ["jsb_deploy", "jsb_deploy_no_restart", "jsb_deploy_hermes"])) for f in names]


@pytest.mark.parametrize(("name", "job"), COMMITTED)
def test_committed_results_are_found_again(name, job):
    """A dry run of every committed study, sweep and deploy trains nothing: each committed row is found by its
    run key (a row of an older results version would be trained again)."""
    spec = load_spec(REPO / "studies" / f"{name}.yaml", job=job)
    summary = run_spec(spec, "", dry_run=True)
    assert summary.total > 0 and not summary.todo, sorted((j.title, j.seed) for j in summary.todo)


@pytest.mark.parametrize(("name", "job", "legacy"), [
    ("jsb_rules", "train", "study"), ("jsb_deploy_no_restart", "deploy", "cb486bd23b13bc0d"),
    ("pcm_ablation", "train", "sweep")])
def test_tables_written_before_results_versions_are_migrated_once(tmp_path, name, job, legacy):
    """The committed tables as they were written before (no results_version; a deploy file's hash; a sweep's
    record in MLflow, exported to `<name>_runs.csv`): the migration re-keys them, finds every run, and writes
    them once in the new layout."""
    spec = load_spec(REPO / "studies" / f"{name}.yaml", {"output_dir": str(tmp_path)}, job)
    jobs = spec.jobs()
    if legacy == "sweep":
        shutil.copy(REPO / "results" / f"{name}_runs.csv", tmp_path)
    else:
        rows = table(REPO / "results" / f"{name}.csv").drop(columns="results_version")
        if job == "deploy":
            rows["config_hash"] = legacy  # what the committed rows were keyed by before (git show 34adca9)
        rows.to_csv(tmp_path / f"{name}.csv", index=False)
        history = REPO / "results" / f"{name}_history.csv"
        if history.exists():
            table(history).drop(columns=["config_hash", "results_version"]).to_csv(tmp_path / history.name,
                                                                                   index=False)
    done, notes = Record(spec).prepare(jobs)
    assert len(done) == len(jobs) and any("re-keyed" in n for n in notes)
    migrated = table(tmp_path / f"{name}.csv")
    assert set(migrated["results_version"]) == {j.version for j in jobs}
    assert Record(spec).prepare(jobs) == (done, [])  # once
    if legacy == "study":
        history = table(tmp_path / f"{name}_history.csv")
        assert history["config_hash"].notna().all() and len(history) == 15 * 60


def test_seeds_keep_their_values_where_they_never_collided_and_never_collide_now():
    assert generator(3, "order").initial_seed() == 3003 and generator(0, "params").initial_seed() == 1
    assert tile_seeds(2, 5) == [21, 22, 23, 24, 25]  # the construction seeds of every committed analog run
    deep = {s: tile_seeds(s, 2 * 8 + 1) for s in range(-3, 100)}  # eight recurrent layers: 17 tiles
    values = [v for seeds in deep.values() for v in seeds]
    assert len(set(values)) == len(values) and 0 not in values
    assert deep[0][10] != deep[1][0] == 11  # tile 10 of seed 0 was tile 0 of seed 1


def test_a_deploy_file_needs_a_backend_with_a_clock_and_a_study_file_no_deploy_keys(tmp_path):
    with pytest.raises(Exception, match="has no chip clock"):
        parse_spec({"name": "d", "base": {"data": {"task": "synthetic"}}, "modes": ["frozen"]}, job="deploy").jobs()
    with pytest.raises(Exception, match="modes: only deploy files have it"):
        parse_spec({"name": "s", "variants": {"a": {}}, "modes": ["frozen"]}, job="train")
