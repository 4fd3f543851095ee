"""The package as another project gets it: a wheel of this checkout, installed (not editable) into a
fresh virtual environment outside the checkout, ships every device configuration and every study, the
device configuration tests pass there, against the installed files, and a shipped study runs by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# where scripts/setup.sh caches the aihwkit wheel it compiles
WHEELS = Path(os.environ.get("IMC_OSTTP_WHEEL_CACHE")
              or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imc-osttp" / "wheels")
# variables that would let the installed package see the checkout or the user's configurations
LEAKS = ("PYTHONPATH", "IMC_OSTTP_DEVICE_CONFIGS")


def _run(*args: str | Path, cwd: Path, **extra_env: str) -> str:
    """Run a command outside the checkout; its output in the failure message if it fails."""
    env = {**{k: v for k, v in os.environ.items() if k not in LEAKS}, **extra_env}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, args))}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _copy_checkout(dest: Path) -> Path:
    """The files a clone would have (tracked, or new and not ignored), so no build output lands in the checkout."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.mark.timeout(600)
def test_a_wheel_installed_in_a_fresh_environment_ships_every_device_config_and_study(tmp_path, jsb_path):
    aihwkit = sorted(WHEELS.glob("aihwkit-1.2.0-*.whl"))
    if not aihwkit:
        pytest.skip(f"no aihwkit wheel cached in {WHEELS} (bash scripts/setup.sh builds it)")
    dist, env, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    source = _copy_checkout(tmp_path / "source")
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, source, cwd=work)
    venv.create(env)  # no pip of its own: this environment's pip installs into it
    # --no-compile: byte-compiling torch and MLflow would take longer than installing them
    install = (sys.executable, "-m", "pip", "--python", env / "bin" / "python", "install", "-q", "--no-compile")
    _run(*install, "--no-deps", aihwkit[-1], cwd=work)  # it declares torchvision (README)
    # the torch build installed here (CPU), which pip takes from its cache
    _run(*install, f"torch=={torch.__version__}", *dist.glob("imc_osttp-*.whl"), "pytest", cwd=work)

    python = env / "bin" / "python"
    where = _run(python, "-c", "from imc_osttp import device_configs as d; print(d.SHIPPED, *d.available())",
                 cwd=work).split()
    assert Path(where[0]).is_relative_to(env)  # the installed files, not the checkout's
    assert where[1:] == sorted(p.stem for p in (REPO / "device_configs").glob("*.yaml"))
    # list, load, build a tile from, save and reload every shipped configuration, with the installed package
    shutil.copy(REPO / "tests" / "test_device_configs.py", work)
    _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_device_configs.py", cwd=work)

    # the shipped studies resolve by name there: `imc-osttp study jsb_quick`, shortened
    where = _run(python, "-c", "from imc_osttp import named; print(*named.shipped_studies(), *named.studies())",
                 cwd=work).split()
    assert Path(where[0]).is_relative_to(env)
    assert where[1:] == sorted(p.stem for p in (REPO / "studies").glob("*.yaml"))
    short = ["--set", "workers=1", "--set", "base.train.epochs=1", "--set", "base.data.max_sequences=2",
             "--set", "base.tracking.enabled=false"]
    data = str(jsb_path.parents[1])
    out = _run(env / "bin" / "imc-osttp", "study", "jsb_quick", *short, cwd=work, IMC_OSTTP_DATA=data)
    assert "osttp" in out and (work / "results" / "jsb_quick.csv").is_file()
