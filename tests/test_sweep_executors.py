"""Where sweep runs train: pool workers die with their driver; Ray gets its data from the driver and a
refused cluster is one line. A real Ray cluster is tests/test_ray_cluster.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import pytest
import yaml

from imc_osttp.cli import main
from imc_osttp.sweep.run import run_sweep
from imc_osttp.sweep.spec import parse_sweep

SMOKE = Path(__file__).resolve().parents[1] / "studies" / "sweep_smoke.yaml"
TINY = {"data": {"task": "jsb", "max_sequences": 4}, "model": {"hidden": 16}, "train": {"epochs": 1, "batch_size": 2}}


def tiny_sweep(name: str, paths: list[str]) -> dict:
    """A digital sweep over data files, one seed."""
    return {"name": name, "base": TINY, "seeds": [0], "axes": [{"kind": "grid", "key": "data.path", "values": paths}]}


# ------------------------------------------------------------------ no orphans


def marked(marker: bytes) -> set[int]:
    """Live processes whose environment holds `marker`: a driver's descendants inherit it (zombies show none)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes():
                pids.add(int(entry.name))
        except OSError:  # gone, or not ours
            pass
    return pids


def training(pid: int) -> bool:
    """aihwkit's simulator is loaded: the worker got past its initializer and builds tiles."""
    try:
        return "rpu_base" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def wait_for(condition, timeout: float, step: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(step)
    return True


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc (Linux)")
def test_pool_workers_exit_when_the_driver_is_killed(tmp_path, jsb_path, mlflow_uri):
    marker = uuid.uuid4().hex
    log = tmp_path / "driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "imc_osttp.cli", "sweep", str(SMOKE), "--workers", "2",
                                   "--set", "name=orphans", "--set", f"base.data.path={jsb_path}"],
                                  env={**os.environ, "IMC_OSTTP_ORPHAN_TEST": marker}, stdout=out, stderr=out)

    def workers() -> set[int]:
        return {p for p in marked(marker.encode()) if p != driver.pid and training(p)}

    try:
        assert wait_for(lambda: len(workers()) == 2 or driver.poll() is not None, 180), "no workers started"
        assert driver.poll() is None, log.read_text()
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        killed = time.monotonic()
        assert wait_for(lambda: not marked(marker.encode()), 10), f"alive 10 s later: {marked(marker.encode())}"
        print(f"the sweep's processes were gone {time.monotonic() - killed:.1f} s after kill -9 of its driver")
    finally:
        driver.kill()
        for pid in marked(marker.encode()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------ Ray


def test_a_dataset_the_ray_driver_cannot_read_fails_only_its_run(tmp_path, jsb_path, mlflow_uri):
    pytest.importorskip("ray", reason="ray is an optional extra: pip install 'imc-osttp[ray]'")
    spec = parse_sweep(tiny_sweep("ray_data", [str(jsb_path), str(tmp_path / "missing.json")]))
    summary = run_sweep(spec, workers=1, executor="ray", progress=False)
    assert (summary.finished, summary.failed) == (1, 1)
    mlf = mlflow.MlflowClient(mlflow_uri)
    children = mlf.search_runs([mlf.get_experiment_by_name("ray_data").experiment_id],
                               "tags.`mlflow.parentRunId` != ''")
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(children) == 2 and len(failed) == 1
    assert "DataError: jsb-chorales-quarter.json: not found at " in failed[0].data.tags["error"]


def test_an_unreachable_ray_cluster_is_one_line_and_creates_no_runs(tmp_path, jsb_path, mlflow_uri, capfd):
    pytest.importorskip("ray", reason="ray is an optional extra: pip install 'imc-osttp[ray]'")
    path = tmp_path / "no_cluster.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep("no_cluster", [str(jsb_path)])))
    assert main(["sweep", str(path), "--executor", "ray", "--ray-address", "127.0.0.1:1"]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("imc-osttp: error: cannot connect to the Ray cluster at 127.0.0.1:1: ")
    assert "refused" in err and "\n" not in err
    assert mlflow.MlflowClient(mlflow_uri).get_experiment_by_name("no_cluster") is None
