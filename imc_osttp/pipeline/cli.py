"""`imc-osttp study|sweep|deploy FILE` (one pipeline, three kinds of file) and `imc-osttp report`."""

from __future__ import annotations

import argparse

from .. import api
from ..config import parse_overrides
from .executors import EXECUTORS

VERBS = {  # verb: (the api function, help)
    "study": (api.run_study, "run variants × seeds, write results/<name>.csv and a figure"),
    "sweep": (api.run_sweep, "train a device non-ideality sweep (nested MLflow runs); then `imc-osttp report`"),
    "deploy": (api.run_deploy, "train, then evaluate the chip from 1 s to 1 year after its last write (frozen, "
                               "drift-compensated, learning); write results/<name>.csv and a figure"),
}


def cmd_run(args: argparse.Namespace) -> int:
    run = VERBS[args.command][0]
    done = run(args.spec, parse_overrides(args.set), workers=args.workers, executor=args.executor,
               ray_address=args.ray_address, dry_run=args.dry_run)
    name, summary = done.spec.name, done.summary
    if args.dry_run:
        print(f"{name}: {summary.total} runs: {summary.skipped} done, {len(summary.todo)} to train"
              + "".join(f"\n  {j.title or j.kind}, seed {j.seed}" for j in summary.todo))
        return 0
    print(summary.line(name))
    if args.command == "sweep":
        parent = summary.parent_run_id
        print((f"MLflow parent run {parent} in {summary.tracking_uri}; " if parent else "")
              + f"next: imc-osttp report {args.spec}")
    elif done.report is not None:
        print(done.report.text)
    return 1 if summary.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    print(api.report(args.spec, parse_overrides(args.set), run_id=args.run_id, output_dir=args.output_dir).text)
    return 0


def add_pipeline_parsers(sub: argparse._SubParsersAction) -> None:
    for verb, (_, text) in VERBS.items():
        p = sub.add_parser(verb, help=text)
        p.add_argument("spec", metavar=f"{verb.upper()}.yaml",
                       help=f"{verb} file (studies/*.yaml), or a shipped one's name")
        p.add_argument("--workers", type=int, default=None, help="parallel runs (default: the file's)")
        p.add_argument("--executor", choices=EXECUTORS, default="local",
                       help="local: a process pool; ray: Ray tasks (pip install 'imc-osttp[ray]')")
        p.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="an existing Ray cluster (default: start a local Ray with --workers CPUs)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field of the file, e.g. base.train.epochs=2")
        p.add_argument("--dry-run", action="store_true", help="say what would be trained, change nothing")
        p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="a study's, sweep's or deploy's table (mean ± std over seeds) and figures")
    p.add_argument("spec", nargs="?", metavar="FILE",
                   help="study, sweep or deploy file, or a shipped one's name (jsb_quick)")
    p.add_argument("--run-id", default=None, metavar="PARENT", help="a sweep's parent run instead of its file")
    p.add_argument("--output-dir", default=None,
                   help="where a sweep's tables and figures go (default: the file's output_dir, else results)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_report)
