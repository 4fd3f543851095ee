"""Training throughput and peak memory of our rules against peer libraries (JAX, braintrace, snntorch), one CPU thread.

The JSB network (88 → 150 feed-forward SNUs, full reset, trainable thresholds → 88 sigmoid outputs) at
each T of --lengths, and the SHD layer (700 → 450 recurrent soft-reset SNUs → 20 leaky integrators) at
--shd-T, batch 32 of random spikes. Every measurement is a fresh process (its peak RSS is its own): ours
`bench_rules.py --child` with this venv, theirs `peers_child.py` in the peers venv
(~/.cache/imc-osttp/peers-venv, created with pinned versions if missing; .venv is never touched). One
update = the sequence forward, the gradient (or the online rule's estimate) and one SGD step; the median
of --repeats updates after a first one. What differs between the implementations:

- ours: torch with numba-compiled time loops (kernels loaded from numba's disk cache before the memory
  baseline; their load time is the "load" figure). BPTT is the exact surrogate gradient, through the
  reset. OSTTP is online: eligibility traces (exact diagonal, or factorised with the reset paths
  detached) contracted with a fixed random projection of the target, not the backpropagated error.
- JAX BPTT: plain JAX, one jax.jit per update (lax.scan over the membrane recursion, the input and
  readout products batched over T, jax.grad, SGD); the same gradient as ours to float32 rounding.
- snntorch BPTT: snn.Leaky with reset to zero (the SNU's forward) in torch eager mode; snntorch detaches
  the reset, so its gradient lacks the reset path. JSB only.
- braintrace D-RTRL: per-parameter diagonal traces, exact for this feed-forward layer (its gradient is
  BPTT's to float32 rounding); online, step by step, one jitted `etrace_grad` call per window of 128
  steps carrying state and traces on, gradients summed, one SGD step per sequence. The readout is exact
  and instantaneous, outside the learner, and the hidden state is the shifted membrane s - b.
- braintrace pp_prop (ES-D-RTRL): the same with input/output-factorised traces (decay 0.6, the leak),
  the counterpart of our factorised traces, not the same approximation.
- peak MiB: growth of peak RSS over a baseline taken after imports, data and model construction; for
  the JAX-based peers it includes the XLA compilation of the first update.

Usage:

    .venv/bin/python benchmarks/bench_peers.py [--lengths 128 1024 8192] [--repeats 5] [--batch 32]
                                               [--shd-T 100] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH_RULES = HERE / "bench_rules.py"
PEERS_CHILD = HERE / "peers_child.py"
PEERS_VENV = Path.home() / ".cache" / "imc-osttp" / "peers-venv"
PEERS_PYTHON = PEERS_VENV / "bin" / "python"
# what the peers venv was built with; torch's CPU wheel comes the way scripts/setup.sh gets it (plain pip)
PEERS_PACKAGES = ["braintrace==0.2.6", "brainstate==0.5.4", "braintools==0.3.0", "brainunit==0.5.2",
                  "jax[cpu]==0.10.2", "jaxlib==0.10.2", "snntorch==1.0.0", "torch==2.13.0"]
# every measured process is pinned to one core as well: XLA's CPU runtime keeps a thread pool of its own
# that its flags do not always confine (measured: 1.9 CPU-seconds per second unpinned)
CORE = max(os.sched_getaffinity(0))
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "NUMBA_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Impl:
    """One column pair of a table: ours (`args` = RULE TRACES of bench_rules) or a peer (`args` = IMPL)."""

    key: str
    title: str
    ours: bool
    args: tuple[str, ...]


JSB_IMPLS = [
    Impl("ours_bptt", "ours BPTT", True, ("bptt", "exact")),
    Impl("snntorch_bptt", "snntorch BPTT", False, ("snntorch_bptt",)),
    Impl("jax_bptt", "JAX BPTT", False, ("jax_bptt",)),
    Impl("ours_osttp_exact", "ours OSTTP exact", True, ("osttp", "exact")),
    Impl("braintrace_drtrl", "braintrace D-RTRL", False, ("braintrace_drtrl",)),
    Impl("ours_osttp_factorised", "ours OSTTP factorised", True, ("osttp", "factorised")),
    Impl("braintrace_pp_prop", "braintrace pp_prop", False, ("braintrace_pp_prop",)),
]
JSB_RATIOS = [("ours BPTT / JAX BPTT", "ours_bptt", "jax_bptt"),
              ("OSTTP exact / D-RTRL", "ours_osttp_exact", "braintrace_drtrl"),
              ("factorised / pp_prop", "ours_osttp_factorised", "braintrace_pp_prop")]
SHD_IMPLS = [JSB_IMPLS[0], JSB_IMPLS[3], JSB_IMPLS[2]]
SHD_RATIOS = [("ours BPTT / JAX BPTT", "ours_bptt", "jax_bptt"),
              ("OSTTP exact / JAX BPTT", "ours_osttp_exact", "jax_bptt")]

Row = dict[str, dict | None]  # impl key -> the child's JSON, None where it failed


def ensure_peers_venv() -> None:
    """Create the peers venv with the pinned packages unless it is there."""
    if PEERS_PYTHON.exists():
        return
    print(f"creating {PEERS_VENV} ({' '.join(PEERS_PACKAGES)})", file=sys.stderr, flush=True)
    subprocess.run(["python3", "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run([str(PEERS_PYTHON), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(PEERS_PYTHON), "-m", "pip", "install", "-q", *PEERS_PACKAGES], check=True)


def command(impl: Impl, network: str, T: int, batch: int, repeats: int) -> list[str]:
    if impl.ours:
        return [sys.executable, str(BENCH_RULES), "--child", *impl.args, "1", str(T), "--batch", str(batch),
                "--threads", "1", "--repeats", str(repeats), "--network", network]
    return [str(PEERS_PYTHON), str(PEERS_CHILD), "--impl", *impl.args, "--network", network, "--T", str(T),
            "--batch", str(batch), "--repeats", str(repeats)]


def run_child(impl: Impl, network: str, T: int, batch: int, repeats: int, timeout: float) -> dict | None:
    """One measurement in a fresh process: its JSON line, or None (its stderr tail printed, or stopped
    after `timeout` seconds: snntorch's eager BPTT at T = 8192 runs for many minutes)."""
    print(f"{network} T={T}: {impl.title} ...", file=sys.stderr, flush=True)
    try:
        out = subprocess.run(command(impl, network, T, batch, repeats), capture_output=True, text=True,
                             env={**os.environ, **ONE_THREAD}, cwd=HERE.parent, timeout=timeout,
                             preexec_fn=lambda: os.sched_setaffinity(0, {CORE}))
    except subprocess.TimeoutExpired:
        print(f"{network} T={T}: {impl.title} stopped after {timeout:.0f} s", file=sys.stderr, flush=True)
        return None
    lines = out.stdout.strip().splitlines()
    if out.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    tail = "\n".join(out.stderr.strip().splitlines()[-15:])
    print(f"{network} T={T}: {impl.title} failed (exit {out.returncode}):\n{tail}", file=sys.stderr, flush=True)
    return None


def ratio(row: Row, num: str, den: str) -> str:
    a, b = row.get(num), row.get(den)
    return f"{a['sample_steps_per_s'] / b['sample_steps_per_s']:.2f}×" if a and b else "–"


def table(rows: dict[int, Row], impls: list[Impl], ratios: list[tuple[str, str, str]]) -> str:
    """Markdown: one row per T, sample-steps/s and peak MiB per implementation, then the throughput ratios."""
    head = ["T"] + [f"{i.title} {what}" for i in impls for what in ("steps/s", "MiB")] + [r[0] for r in ratios]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for T, row in rows.items():
        cells = [str(T)]
        for impl in impls:
            r = row.get(impl.key)
            cells += [f"{r['sample_steps_per_s']:,.0f}", f"{r['peak_mib']:.0f}"] if r else ["–", "–"]
        cells += [ratio(row, num, den) for _, num, den in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_times(rows: dict[int, Row], impls: list[Impl]) -> str:
    """One line: ours' kernel load and the peers' first update (compilation included), per T."""
    parts = []
    for impl in impls:
        field = "kernel_load_s" if impl.ours else "compile_s"
        values = [f"{row[impl.key][field]:.2f}" if row.get(impl.key) else "–" for row in rows.values()]
        parts.append(f"{impl.title} {'/'.join(values)}")
    kinds = "ours: numba kernel load; theirs: first update incl. tracing and compilation"
    return f"load/compile s at T = {'/'.join(map(str, rows))} ({kinds}): " + "; ".join(parts)


def measure_network(network: str, lengths: list[int], impls: list[Impl], batch: int, repeats: int,
                    timeout: float) -> dict[int, Row]:
    # short updates get more repeats (5 × 1024 / T): a median of 5 updates of 20 ms moves ±20 % here
    return {T: {impl.key: run_child(impl, network, T, batch, repeats * max(1, 1024 // T), timeout) for impl in impls}
            for T in lengths}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 1024, 8192])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--shd-T", type=int, default=100)
    ap.add_argument("--json", type=Path, help="write every child's JSON here")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per measurement before it is stopped")
    args = ap.parse_args()
    ensure_peers_venv()
    jsb = measure_network("jsb", args.lengths, JSB_IMPLS, args.batch, args.repeats, args.timeout)
    shd = measure_network("shd", [args.shd_T], SHD_IMPLS, args.batch, args.repeats, args.timeout)
    print(f"batch {args.batch}, 1 core, float32, CPU; median of {args.repeats} × max(1, 1024 / T) updates after a "
          "first one; "
          "MiB = growth of peak RSS over the pre-update baseline; ratios of sample-steps/s (>1: ours faster); "
          f"– = failed or stopped after {args.timeout:.0f} s (stderr says which)\n")
    print("JSB network (88 → 150 SNUs → 88)\n")
    print(table(jsb, JSB_IMPLS, JSB_RATIOS))
    print("\n" + load_times(jsb, JSB_IMPLS) + "\n")
    print("SHD layer (700 → 450 recurrent SNUs → 20 leaky outputs)\n")
    print(table(shd, SHD_IMPLS, SHD_RATIOS))
    print("\n" + load_times(shd, SHD_IMPLS))
    if args.json:
        raw = {"jsb": {str(T): row for T, row in jsb.items()}, "shd": {str(T): row for T, row in shd.items()}}
        args.json.write_text(json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
