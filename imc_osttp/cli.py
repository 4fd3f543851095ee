"""Command line: `imc-osttp train|study|align|encode-audio ...`.

Bad input ends in one line on stderr (exit 2), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import UserError


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_run_config
    from .runner import run
    from .tracking import tracking_uri

    cfg = load_run_config(args.config, args.set)
    result, run_id = run(cfg)
    best = result.best()
    print(f"{cfg.name}: best epoch {result.history.index(best) + 1}/{len(result.history)}: "
          + ", ".join(f"{k}={v:.4f}" for k, v in best.items() if k.startswith(("valid", "test"))))
    if run_id:
        print(f"MLflow run {run_id} in {tracking_uri(cfg.tracking.uri)}")
    return 1 if result.diverged else 0


def cmd_study(args: argparse.Namespace) -> int:
    from .config import parse_overrides
    from .report import report_study
    from .study import load_study, run_study

    study = load_study(args.study, parse_overrides(args.set) if args.set else None)
    runs = run_study(study, workers=args.workers)
    print(report_study(study, runs))
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from .align import align
    from .config import load_run_config
    from .data import load_task

    cfg = load_run_config(args.config, args.set)
    report = align(cfg, load_task(cfg.data), Path(args.dump) if args.dump else None)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'rule':10s} {'param':6s} {'cosine':>8s} {'norm ratio':>11s}")
    for rule, params in report.items():
        for name, vals in params.items():
            print(f"{rule:10s} {name:6s} {vals['cosine']:8.4f} {vals['norm_ratio']:11.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imc-osttp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run and log it to MLflow")
    p.add_argument("config", help="run config YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=1e-3")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("study", help="run variants × seeds, write results/<name>.csv and a figure")
    p.add_argument("study", help="study YAML")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: the study's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study field, e.g. base.train.epochs=2")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("align", help="every rule's update against the BPTT gradient on one batch")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print {rule: {param: {cosine, norm_ratio}}}")
    p.add_argument("--dump", metavar="DIR", help="write params, batch, meta and every rule's update")
    p.set_defaults(func=cmd_align)

    from .audio import add_encode_audio_parser

    add_encode_audio_parser(sub)
    from .sweep.cli import add_sweep_parsers

    add_sweep_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"imc-osttp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imc-osttp: interrupted; finished runs are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
