"""Command line: `imc-osttp train|study|sweep|deploy|report|align|encode-audio ...`.

Each command is a call of `imc_osttp.api`; this module parses the arguments and prints the outcome. Bad input
ends in one line on stderr (exit 2), never a traceback. SIGTERM (what a batch scheduler sends at its time
limit) is handled as Ctrl-C: finished runs are kept, unfinished ones marked KILLED (exit 143)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from . import api
from .config import parse_overrides
from .errors import UserError


def cmd_train(args: argparse.Namespace) -> int:
    from .tracking import tracking_uri

    result = api.train(args.config, parse_overrides(args.set))
    cfg, best = result.config, result.best()
    print(f"{cfg.name}: best epoch {result.history.index(best) + 1}/{len(result.history)}: "
          + ", ".join(f"{k}={v:.4f}" for k, v in best.items() if k.startswith(("valid", "test"))))
    if result.run_id:
        print(f"MLflow run {result.run_id} in {tracking_uri(cfg.tracking.uri)}")
    return 1 if result.diverged else 0


def cmd_align(args: argparse.Namespace) -> int:
    done = api.align(args.config, parse_overrides(args.set), seeds=args.seeds, after_epochs=args.after_epochs,
                     batch_size=args.batch, dump_dir=args.dump)
    if args.json:
        print(json.dumps(done.reports[0] if len(done.reports) == 1 else done.reports, indent=2))
        return 0
    if args.csv:
        path = Path(args.csv)
        done.table.to_csv(path, mode="a", header=not path.exists(), index=False)
    stage = f"after {args.after_epochs} epochs of {done.config.rule.name}" if args.after_epochs else "at initialisation"
    print(f"{done.config.name}, {stage}, {len(done.reports)} seed(s): mean ± std over seeds")
    print(f"{'rule':10s} {'param':6s} {'cosine':>16s} {'norm ratio':>18s}")
    for _, row in done.table.iterrows():
        print(f"{row['rule']:10s} {row['param']:6s} {row['cosine']:8.4f} ± {row['cosine_std']:.4f} "
              f"{row['norm_ratio']:10.4f} ± {row['norm_ratio_std']:.4f}")
    return 0


def cmd_encode_audio(args: argparse.Namespace) -> int:
    from .data.spikes import read_labels

    start = time.perf_counter()
    for split, path in api.encode_audio(args.wav_dir, args.out, progress=not args.quiet).items():
        print(f"{split}: {len(read_labels(path))} recordings -> {path}")
    print(f"encoded in {time.perf_counter() - start:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imc-osttp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run and log it to MLflow")
    p.add_argument("config", help="run config YAML, or a shipped one's name (jsb_osttp)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=1e-3")
    p.set_defaults(func=cmd_train)

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

    p = sub.add_parser(
        "encode-audio", help="encode FSDD recordings as spike trains in SHD's HDF5 layout",
        description="Write OUT/fsdd_train.h5 and OUT/fsdd_test.h5 (takes 0-4 are the test set) from "
                    "the {digit}_{speaker}_{take}.wav files of WAV_DIR; train on them with data.task=fsdd "
                    "and data.path=OUT.")
    p.add_argument("wav_dir", metavar="WAV_DIR", type=Path, help="the FSDD recordings directory")
    p.add_argument("out", metavar="OUT", type=Path, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_encode_audio)

    from .pipeline.cli import add_pipeline_parsers

    add_pipeline_parsers(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so both take the same way out."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"imc-osttp: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("imc-osttp: terminated (SIGTERM); finished runs are kept", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("imc-osttp: interrupted; finished runs are kept", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
