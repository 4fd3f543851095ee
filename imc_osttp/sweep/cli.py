"""`imc-osttp sweep SWEEP.yaml` and `imc-osttp report SWEEP.yaml | --run-id PARENT`."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .executors import EXECUTORS


def _load(args: argparse.Namespace):
    from ..config import parse_overrides
    from .spec import load_sweep

    return load_sweep(args.sweep, parse_overrides(args.set) if args.set else None)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .run import run_sweep

    summary = run_sweep(_load(args), workers=args.workers, executor=args.executor, address=args.ray_address)
    print(f"{summary.total} runs: {summary.skipped} already done, {summary.finished} finished now, "
          f"{summary.failed} failed\nMLflow parent run {summary.parent_run_id} in {summary.tracking_uri}; "
          f"next: imc-osttp report {args.sweep}")
    return 1 if summary.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import find_run_parent, find_sweep_parent, report_sweep

    if (args.sweep is None) == (args.run_id is None):
        raise ConfigError("report: give a sweep file or --run-id PARENT, not both")
    if args.sweep is not None:
        spec = _load(args)
        mlf, parent = find_sweep_parent(spec)
        output_dir = args.output_dir or spec.output_dir
    else:
        mlf, parent = find_run_parent(args.run_id)
        output_dir = args.output_dir or "results"
    print(report_sweep(mlf, parent, output_dir))
    return 0


def add_sweep_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train a device non-ideality sweep as nested MLflow runs (resumable)")
    p.add_argument("sweep", help="sweep YAML, or a shipped sweep's name (sweep_smoke)")
    p.add_argument("--workers", type=int, default=None, help="parallel runs (default: the sweep's)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: a process pool; ray: Ray tasks (pip install 'imc-osttp[ray]')")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="an existing Ray cluster (default: start a local Ray with --workers CPUs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sweep field, e.g. base.train.epochs=2")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="a sweep's table (mean ± std over seeds) and figures, logged on its parent")
    p.add_argument("sweep", nargs="?", help="sweep YAML, or a shipped sweep's name")
    p.add_argument("--run-id", default=None, metavar="PARENT", help="the sweep's parent run instead of its file")
    p.add_argument("--output-dir", default=None, help="default: the sweep's output_dir, else results")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_report)
