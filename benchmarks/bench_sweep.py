"""Wall time of the smoke sweep with 1 and with 2 workers, and their ratio (target: <= 0.6).

    .venv/bin/python benchmarks/bench_sweep.py [--data PATH] [--set base.data.max_sequences=40 ...]

Each timing uses a fresh MLflow store, created before the clock starts (a
new SQLite store costs seconds of migrations that a real sweep pays once).
workers=1 trains in the driver process; workers=2 pays the spawn of two
processes (imports of torch and aihwkit), which short runs do not amortise.
The load average is printed because other jobs on the machine skew both.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def time_sweep(workers: int, overrides: dict) -> float:
    from imc_osttp.config import merge
    from imc_osttp.pipeline.run import run_spec
    from imc_osttp.pipeline.spec import load_spec
    from imc_osttp.tracking import prepare_store

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        spec = load_spec(ROOT / "studies" / "sweep_smoke.yaml", merge(overrides, {"output_dir": tmp}), "train")
        prepare_store(None, spec.name)
        start = time.perf_counter()
        summary = run_spec(spec, "sweep", workers=workers, progress=False)
        seconds = time.perf_counter() - start
    if summary.finished != summary.total:
        sys.exit(f"workers={workers}: {summary.failed} of {summary.total} runs failed")
    return seconds


def main() -> None:
    from imc_osttp.config import merge, parse_overrides

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("IMC_OSTTP_SHARED_DATA", ROOT.parent / "shared" / "data"),
                        help="folder holding jsb/jsb-chorales-quarter.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a sweep field")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    overrides = merge({"base": {"data": {"path": str(Path(args.data) / "jsb" / "jsb-chorales-quarter.json")}}},
                      parse_overrides(args.set))
    load = os.getloadavg()
    one, two = time_sweep(1, overrides), time_sweep(2, overrides)
    print(f"smoke sweep ({', '.join(args.set) or 'as shipped'}), {os.cpu_count()} CPUs, "
          f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"1 worker: {one:.1f} s   2 workers: {two:.1f} s   ratio {two / one:.2f} (target <= 0.6)")


if __name__ == "__main__":
    main()
