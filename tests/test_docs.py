"""The documentation: the site builds offline with warnings as errors, the Python guide's worked example
runs, its results tables are in step with the committed CSVs, and the README stays the front door (its two
commands, at most 250 lines, links that resolve)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
COMMANDS = ("bash scripts/setup.sh && IMC_OSTTP_DATA=../shared/data .venv/bin/imc-osttp study studies/jsb_quick.yaml",
            "bash scripts/setup.sh --test && .venv/bin/python -m pytest -q")


def test_the_site_builds_offline_with_warnings_as_errors(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is not installed: scripts/setup.sh --test installs the docs extra")
        pytest.skip("mkdocs missing: run `bash scripts/setup.sh --test` (the docs extra)")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner about MkDocs 2.0
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    pages = {p: p.read_text() for p in site.rglob("*.html")}
    # the generated tables and the benchmark outputs were included, none left as a directive
    first_row = next(line for line in (REPO / "docs/generated/jsb_rules.md").read_text().splitlines()
                     if line.startswith("| `"))
    cell = first_row.split("|")[4].strip()  # the test NLL of the first variant, as generated
    assert cell in pages[site / "results" / "jsb" / "index.html"]
    assert not any("--8&lt;--" in html or "--8<--" in html for html in pages.values())
    # the figures of results/ joined the site; nothing is fetched from a CDN when a page is read
    assert {p.name for p in (REPO / "results").glob("*.png")} <= {p.name for p in (site / "figures").iterdir()}
    assert not any("fonts.googleapis" in html for html in pages.values())
    # the API reference came from the docstrings, the public functions on a page of their own
    assert "register_rule" in pages[site / "api" / "registry" / "index.html"]
    public = pages[site / "api" / "public" / "index.html"]
    assert all(f"imc_osttp.api.{name}" in public for name in ("train", "run_study", "report", "StudyResult"))


@pytest.mark.timeout(300)
def test_the_python_guides_worked_example_runs(tmp_path, jsb_path):
    guide = (REPO / "docs" / "guides" / "python.md").read_text()
    (example,) = [block for block in re.findall(r"```python\n(.*?)```", guide, re.S) if "__main__" in block]
    (tmp_path / "example.py").write_text(example)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "IMC_OSTTP_DATA": str(jsb_path.parents[1]), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best epoch" in done.stdout and "test_nll_mean" in done.stdout
    runs = (tmp_path / "results" / "osttp_vs_ostl.csv").read_text().splitlines()
    assert len(runs) == 1 + 4


def test_the_results_tables_are_in_step_with_the_csvs():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "results_tables.py"), "--check"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_readme_is_the_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for command in COMMANDS:
        assert f"\n{command}\n" in text, command
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (REPO / target).exists(), target
