#!/usr/bin/env bash
# Set up imc-osttp on a fresh machine: a virtual environment at .venv with
# torch==2.13.0 (CPU), aihwkit 1.2.0 compiled against it (cached as a wheel
# outside the repository, so a second setup takes seconds) and this package
# installed editable with its test dependencies and Ray (the optional sweep executor, so
# that its test runs too).
# --test: also the browser the MLflow UI test drives (Debian's chromium via apt,
# Playwright via pip) and the docs builder the docs test runs (mkdocs-material,
# mkdocstrings: the docs extra); the package itself never needs them.
set -euo pipefail
cd "$(dirname "$0")/.."

TEST=0
case "${1:-}" in
  "") ;;
  --test) TEST=1 ;;
  *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac

PY=${PYTHON:-python3}
VENV=.venv
WHEELS=${IMC_OSTTP_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imc-osttp/wheels}
TORCH=torch==2.13.0
AIHWKIT=aihwkit==1.2.0

step() { printf '\n== %s\n' "$*"; }

apt_install() {
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
need_openblas() { ! dpkg -s libopenblas-dev >/dev/null 2>&1; }
if command -v dpkg >/dev/null 2>&1 && need_openblas; then
  step "installing libopenblas-dev (needed to compile aihwkit)"
  apt_install libopenblas-dev
fi
if [ "$TEST" = 1 ] && command -v apt-get >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then
  step "installing chromium (for the MLflow UI test)"
  apt_install chromium
fi

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  "$PY" -m venv "$VENV"
fi
export PATH="$PWD/$VENV/bin:$PATH"   # aihwkit's CMake calls mypy's stubgen
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip

step "installing $TORCH (CPU)"
pip install -q "$TORCH"

if ! "$VENV/bin/python" -c "import aihwkit.simulator.rpu_base" >/dev/null 2>&1; then
  mkdir -p "$WHEELS"
  if ! ls "$WHEELS"/aihwkit-1.2.0-*.whl >/dev/null 2>&1; then
    step "building aihwkit 1.2.0 against $TORCH (about 5 minutes on 2 cores; cached in $WHEELS)"
    pip install -q scikit-build pybind11 ninja cmake mypy setuptools wheel
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
      pip wheel --no-build-isolation --no-deps "$AIHWKIT" -w "$WHEELS"
  fi
  step "installing aihwkit from $WHEELS"
  # --no-deps: aihwkit declares torchvision, which does not import beside torch 2.13.
  pip install -q --no-deps "$WHEELS"/aihwkit-1.2.0-*.whl
fi

EXTRAS=dev,ray
[ "$TEST" = 1 ] && EXTRAS=$EXTRAS,browser,docs
step "installing imc-osttp (editable) and its dependencies ($EXTRAS)"
pip install -q -e ".[$EXTRAS]"
step "compiling the fused time loops (numba, cached on disk; once)"
"$VENV/bin/python" -c "import torch; from imc_osttp import fused
for dt in (torch.float32, torch.float64): print(f'{dt}: {fused.warm_up(dt):.1f} s')"
"$VENV/bin/python" -c "import aihwkit.simulator.rpu_base, imc_osttp; print('imc-osttp ready:', imc_osttp.__version__)"
