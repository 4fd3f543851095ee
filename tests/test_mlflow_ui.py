"""The MLflow UI as a researcher opens it: a real `mlflow server` and a real browser (Debian's chromium
driven by Playwright), both on 127.0.0.1. A digital-versus-analog study must open in the model-training
view with its per-epoch curves, both runs in each, as the first charts.

The screenshot goes to the test's tmp_path (printed). The docs' screenshot of a real study is
scripts/screenshot_mlflow.py, which serves and drives the UI with this module's helpers.
Needs `bash scripts/setup.sh --test`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest
import yaml

from imc_osttp.cli import main
from imc_osttp.tracking import chart_view

CHROMIUM = os.environ.get("IMC_OSTTP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]
QUIET = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job-runner processes
         "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}  # no traffic off the machine
EPOCHS = 2  # a single-step metric is drawn as a bar chart: curves need two epochs
CARD = '[data-testid="experiment-view-compare-runs-card"]'
DRAWN = f"""() => {{ const card = document.querySelector('{CARD}');
    return card && [...card.querySelectorAll('path.js-line')]
        .filter(p => (p.getAttribute('d') || '').includes('L')).length >= 2; }}"""
# the first chart: its legend, bar traces, colours of its drawn lines; and each run's colour in the table
FIRST_CHART = f"""() => {{
    const card = document.querySelector('{CARD}');
    const drawn = [...card.querySelectorAll('path.js-line')].filter(p => (p.getAttribute('d') || '').includes('L'));
    const runs = [...document.querySelectorAll('[data-testid="experiment-view-table-run-color"]')];
    return {{legend: [...card.querySelectorAll('span')].map(s => s.textContent.trim()),
             bars: card.querySelectorAll('.barlayer .trace').length,
             curves: [...new Set(drawn.map(p => getComputedStyle(p).stroke))],
             colors: Object.fromEntries(runs.map(l => [l.nextElementSibling.textContent.trim(),
                                                       getComputedStyle(l).backgroundColor]))}};
}}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Stop the server's process group (its own session): politely, then for sure, stragglers included."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with its store in `folder`, in its own session; its url. Stopped on exit."""
    port, log = free_port(), folder / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--artifacts-destination", str(folder / "artifacts")],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **QUIET})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        stop(proc)


def open_chart_view(page, url: str, experiment: str) -> None:
    """Open the experiment in the model-training chart view and wait until its first chart drew two lines."""
    page.goto(f"{url}/#/experiments/{experiment}?workflowType=machine_learning")
    page.wait_for_url(re.compile(rf"#/experiments/{experiment}/runs\b"), timeout=60_000)
    page.goto(url + chart_view(experiment))
    page.wait_for_function(DRAWN, timeout=120_000)
    close = page.locator('button[aria-label="Close"][data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.click()  # the assistant panel hides half the charts


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch) -> Iterator[str]:
    """A tracking server on 127.0.0.1 with its store in tmp_path; this process and its workers log to it."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM}: run `bash scripts/setup.sh --test` (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright missing: run `bash scripts/setup.sh --test`")
    for key, value in QUIET.items():
        monkeypatch.setenv(key, value)
    with serve(tmp_path) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        yield url


def run_study(tmp_path: Path, jsb_path: Path) -> str:
    study = {"name": "ui", "seeds": [0], "output_dir": str(tmp_path / "results"),
             "base": {"data": {"task": "jsb", "path": str(jsb_path), "max_sequences": 4},
                      "model": {"hidden": 8}, "train": {"epochs": EPOCHS, "batch_size": 4}},
             "variants": {"digital": {"backend.kind": "digital"},
                          "analog": {"backend.kind": "analog", "backend.device_config": "pcm_4device"}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["study", str(path)]) == 0
    return study["name"]


def check_store(url: str, name: str) -> str:
    """The experiment's id; checks that every metric of every run is a curve, in the UI's first section."""
    mlf = mlflow.MlflowClient(url)
    experiment = mlf.get_experiment_by_name(name)
    for run in mlf.search_runs([experiment.experiment_id]):
        assert all(len(mlf.get_metric_history(run.info.run_id, k)) == EPOCHS for k in run.data.metrics), run.data
        assert not any("/" in k for k in run.data.metrics), run.data.metrics  # a `prefix/` is a later section
    return experiment.experiment_id


def test_study_opens_on_its_curves_in_the_model_training_view(tmp_path, jsb_path, mlflow_server, capsys):
    from playwright.sync_api import sync_playwright

    name = run_study(tmp_path, jsb_path)
    experiment = check_store(mlflow_server, name)
    assert f"{mlflow_server}{chart_view(experiment)}" in capsys.readouterr().out
    shot = tmp_path / "mlflow_chart_view.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            open_chart_view(page, mlflow_server, experiment)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shot))
            with capsys.disabled():
                print(f"\nscreenshot of the chart view: {shot}")
            chart = page.evaluate(FIRST_CHART)
        finally:
            browser.close()
    assert chart["bars"] == 0, chart  # a curve, not a bar chart
    assert any(re.fullmatch(r"digital, seed 0 \(\w+\)", text) for text in chart["legend"]), chart
    assert set(chart["curves"]) == {chart["colors"]["digital, seed 0"], chart["colors"]["analog, seed 0"]}, chart
