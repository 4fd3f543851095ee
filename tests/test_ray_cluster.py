"""The Ray executor against a real cluster: `ray start --head` with token authentication, no shared data.

Ray binds the machine's interface address, so everything Ray-related runs in
a fresh network namespace with only loopback up (no traffic leaves
127.0.0.1) and a fresh PID namespace, whose processes the kernel kills when
its first process ends: nothing outlives the test, even when it fails. Run
as a script, this file is that first process (`steps`); the test checks
what it reports and what it left in MLflow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "studies" / "sweep_smoke.yaml"
ADDRESS = "127.0.0.1:6379"
NAMESPACE = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]


# ------------------------------------------------------------------ inside the namespace


def ray_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    ray = Path(sys.executable).with_name("ray")
    return subprocess.run([str(ray), *args], env=env, capture_output=True, text=True, timeout=120)


def on_ray(verb: str, path: Path, env: dict[str, str], *overrides: str) -> subprocess.Popen:
    """`imc-osttp <verb> <path>` through the cluster, with `--set` overrides."""
    sets = [arg for override in overrides for arg in ("--set", override)]
    return subprocess.Popen([sys.executable, "-m", "imc_osttp.cli", verb, str(path), "--executor", "ray",
                             "--ray-address", ADDRESS, *sets], cwd=Path(env["RESULTS"]).parent, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def sweep(name: str, env: dict[str, str]) -> subprocess.Popen:
    """The smoke sweep, 5 epochs a run (each point trains ~2 s: long enough to kill a worker in it)."""
    return on_ray("sweep", SMOKE, env, f"name={name}", "base.train.epochs=5", f"output_dir={env['RESULTS']}")


def spec_files(work: Path, data: Path) -> dict[str, Path]:
    """A tiny study, a tiny deploy and a sweep with one dataset no one can read (all on the driver's data)."""
    jsb = {"task": "jsb", "max_sequences": 4}
    base = {"data": jsb, "model": {"hidden": 8}, "train": {"epochs": 2, "batch_size": 4}}
    specs = {
        "study": {"name": "ray_study", "seeds": [0], "base": base,
                  "variants": {"bptt": {"rule.name": "bptt"}, "osttp": {"rule.name": "osttp"}}},
        "deploy": {"name": "ray_deploy", "seeds": [0], "times": [1.0, 3600.0], "modes": ["frozen", "frozen_gdc"],
                   "base": {**base, "backend": {"kind": "analog", "device_config": "pcm_4device",
                                                "knobs": {"drift_nu": 0.05}}}},
        "sweep": {"name": "ray_data", "seeds": [0], "base": base, "axes": [{"kind": "variants", "name": "data",
                  "values": {"here": {"optim.lr": 0.001}, "missing": {"optim.lr": 0.002,
                                                                       "data.path": str(data / "missing.json")}}}]},
    }
    out = {}
    for verb, spec in specs.items():
        out[verb] = work / f"{spec['name']}.yaml"
        out[verb].write_text(json.dumps({**spec, "output_dir": str(work / "results")}))
    return out


def finish(proc: subprocess.Popen, start: float) -> dict:
    out, err = proc.communicate(timeout=300)
    return {"rc": proc.returncode, "out": out, "err": err, "seconds": round(time.monotonic() - start, 1)}


def training_tasks() -> list[int]:
    """Ray workers running a job (Ray titles a worker after the task it runs)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::run_job"):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def steps(work: Path, data_root: Path) -> dict:
    """Start a head (token auth on, no data variable), run the smoke sweep, kill a worker mid-sweep, rerun;
    then a study, a deploy and a sweep whose one dataset cannot be read, each through the cluster."""
    home, cache = work / "home", work / "empty_cache"
    cache.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "IMC_OSTTP_", "MLFLOW_"))}
    base.update(HOME=str(home), IMC_OSTTP_CACHE=str(cache))  # workers find no data on disk
    # only the driver can read the data and the MLflow store
    driver = {**base, "IMC_OSTTP_DATA": str(data_root), "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
              "RESULTS": str(work / "results")}
    report: dict = {"token": ray_cli("get-auth-token", "--generate", env=base).returncode}
    start = time.monotonic()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths below it have a length limit
    head = ray_cli("start", "--head", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                   f"--temp-dir={temp}", env=base)
    report["head"] = {"rc": head.returncode, "err": head.stderr[-2000:], "seconds": time.monotonic() - start}
    if head.returncode == 0:
        report["sweep"] = finish(sweep("ray_cluster", driver), time.monotonic())
        start = time.monotonic()
        report["wrong_token"] = finish(sweep("ray_cluster", {**driver, "RAY_AUTH_TOKEN": "not-the-token"}), start)
        start = time.monotonic()
        killed = sweep("ray_cluster_kill", driver)
        deadline = time.monotonic() + 120
        while not training_tasks() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        tasks = training_tasks()
        if tasks:
            os.kill(tasks[0], signal.SIGKILL)
        report["killed"] = {"pid": tasks[0] if tasks else None, **finish(killed, start)}
        report["rerun"] = finish(sweep("ray_cluster_kill", driver), time.monotonic())
        for verb, path in spec_files(work, data_root).items():
            report[path.stem] = finish(on_ray(verb, path, driver), time.monotonic())
    report["stop"] = ray_cli("stop", "--force", env=base).returncode
    shutil.rmtree(temp, ignore_errors=True)
    return report


if __name__ == "__main__":
    print(json.dumps(steps(Path(sys.argv[1]), Path(sys.argv[2]))))
    sys.exit(0)


# ------------------------------------------------------------------ the test

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402


def namespace_refusal() -> str | None:
    """Why the namespaces cannot be made here, or None."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    probe = subprocess.run([*NAMESPACE, "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare is not permitted here: {probe.stderr.strip()}"


def runs_of(uri: str, experiment: str) -> tuple[list, list]:
    mlf = mlflow.MlflowClient(uri)
    runs = mlf.search_runs([mlf.get_experiment_by_name(experiment).experiment_id])
    return ([r for r in runs if r.data.tags.get("kind") == "sweep"],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


@pytest.mark.timeout(600)
def test_sweep_on_a_ray_cluster_with_token_auth_and_no_shared_data(tmp_path, jsb_path, mlflow_uri):
    pytest.importorskip("ray", reason="ray is an optional extra: pip install 'imc-osttp[ray]'")
    if reason := namespace_refusal():
        pytest.skip(reason)
    script = f"ip link set lo up && exec {sys.executable} {Path(__file__)} {tmp_path} {jsb_path.parents[1]}"
    start = time.monotonic()
    done = subprocess.run([*NAMESPACE, "bash", "-c", script], capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-5000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"ray cluster steps: {time.monotonic() - start:.0f} s;",
          {k: v["seconds"] for k, v in report.items() if isinstance(v, dict)})

    assert report["token"] == 0 and report["head"]["rc"] == 0, report["head"]
    # the driver connected under the cluster's token (found in ~/.ray/auth_token, no variable), the workers
    # trained on data they could not have read themselves
    assert report["sweep"]["rc"] == 0, report["sweep"]["err"][-3000:]
    (parent,), children = runs_of(mlflow_uri, "ray_cluster")
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert {c.info.status for c in children} == {"FINISHED"}

    # a refused connection: one line naming the address and the cause, and the sweep's parent untouched
    refused = report["wrong_token"]
    assert refused["rc"] == 2 and refused["out"] == ""
    assert refused["err"].strip().splitlines() == [refused["err"].strip()], refused["err"]
    assert ADDRESS in refused["err"] and "InvalidAuthToken" in refused["err"]
    (again,), _ = runs_of(mlflow_uri, "ray_cluster")
    assert again.info.status == "FINISHED" and again.info.run_id == parent.info.run_id

    # a worker killed mid-sweep fails only its run; the rerun trains it and duplicates nothing
    killed = report["killed"]
    assert killed["pid"] is not None and killed["rc"] == 1, killed["err"][-3000:]
    assert "1 failed" in killed["out"]
    assert report["rerun"]["rc"] == 0 and "3 already done, 1 finished now" in report["rerun"]["out"]
    (parent,), children = runs_of(mlflow_uri, "ray_cluster_kill")
    finished = [(c.data.tags["point_id"], c.data.tags["seed"]) for c in children if c.info.status == "FINISHED"]
    assert parent.info.status == "FINISHED" and len(finished) == 4 and len(set(finished)) == 4
    assert [c.info.status for c in children if c.info.status != "FINISHED"] == ["FAILED"]

    # a study and a deploy run through the cluster as a sweep does; a dataset the driver cannot read fails
    # only its run
    results = tmp_path / "results"
    assert report["ray_study"]["rc"] == 0 and report["ray_deploy"]["rc"] == 0, (report["ray_study"]["err"][-3000:],
                                                                              report["ray_deploy"]["err"][-3000:])
    assert len(pd.read_csv(results / "ray_study.csv")) == 2 and len(pd.read_csv(results / "ray_deploy.csv")) == 4
    assert report["ray_data"]["rc"] == 1 and "1 finished now, 1 failed" in report["ray_data"]["out"]
    _, children = runs_of(mlflow_uri, "ray_data")
    (failed,) = [c for c in children if c.info.status == "FAILED"]
    assert "DataError: jsb-chorales-quarter.json: not found at " in failed.data.tags["error"]
    assert report["stop"] == 0
