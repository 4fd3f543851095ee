"""Command line: `imc-osttp train|study|deploy|align|encode-audio ...`.

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


def cmd_deploy(args: argparse.Namespace) -> int:
    from .config import parse_overrides
    from .deploy import load_deploy, run_deploy
    from .deploy_report import report_deploy

    deploy = load_deploy(args.deploy, parse_overrides(args.set) if args.set else None)
    rows = run_deploy(deploy, workers=args.workers)
    print(report_deploy(deploy, rows))
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    import pandas as pd

    from .align import align, summarise
    from .config import load_run_config
    from .data import load_task

    cfg = load_run_config(args.config, args.set)
    data = load_task(cfg.data)
    seeds = args.seeds or [cfg.seed]
    reports = [align(cfg.model_copy(update={"seed": seed}), data, Path(args.dump) if args.dump else None,
                     args.after_epochs, args.batch) for seed in seeds]
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
        return 0
    rows = summarise(reports)
    if args.csv:
        table = pd.DataFrame([{"config": cfg.name, "after_epochs": args.after_epochs, "seeds": len(seeds), **row}
                              for row in rows])
        path = Path(args.csv)
        table.to_csv(path, mode="a", header=not path.exists(), index=False)
    stage = f"after {args.after_epochs} epochs of {cfg.rule.name}" if args.after_epochs else "at initialisation"
    print(f"{cfg.name}, {stage}, {len(seeds)} seed(s): mean ± std over seeds")
    print(f"{'rule':10s} {'param':6s} {'cosine':>16s} {'norm ratio':>18s}")
    for row in rows:
        print(f"{row['rule']:10s} {row['param']:6s} {row['cosine']:8.4f} ± {row['cosine_std']:.4f} "
              f"{row['norm_ratio']:10.4f} ± {row['norm_ratio_std']:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imc-osttp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run and log it to MLflow")
    p.add_argument("config", help="run config YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=1e-3")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("study", help="run variants × seeds, write results/<name>.csv and a figure")
    p.add_argument("study", help="study YAML, or a shipped study's name (jsb_quick)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: the study's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study field, e.g. base.train.epochs=2")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("deploy", help="train, then evaluate the chip from 1 s to 1 year after its last write "
                       "(frozen, drift-compensated, learning); write results/<name>.csv and a figure")
    p.add_argument("deploy", help="deploy YAML, or a shipped one's name (jsb_deploy)")
    p.add_argument("--workers", type=int, default=None, help="seeds in parallel processes (default: the file's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. base.train.epochs=2 or adaptation.rate=4")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("align", help="every rule's update against the BPTT gradient on one batch")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print {rule: {param: {cosine, norm_ratio}}}")
    p.add_argument("--dump", metavar="DIR", help="write params, feedback, batch, meta and every rule's update")
    p.add_argument("--after-epochs", type=int, default=0, metavar="N",
                   help="first train the config's rule for N epochs (default: at initialisation)")
    p.add_argument("--batch", type=int, default=None, metavar="B", help="sequences in the diagnostic batch")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S", help="repeat for these seeds: mean ± std")
    p.add_argument("--csv", metavar="PATH", help="append the mean ± std rows to this CSV")
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
